"""Library-level checks run as the ranks of one DDP run on the CPU (gloo), launched by
`engine_helpers.ranks`; the tests compare what each rank writes with one process:

    python ddp_checks.py sandwich|evaluate DATA OUT

sandwich: one supernet sandwich step (largest, smallest, one random subnet; the largest
          teaching the others) on this rank's half of a fixed global batch; writes the weights after it and the number of gradient
          all-reduces the step made.
evaluate: COCO numbers of a fixed detector on DATA's validation split, the ranks sharing the
          images; then what each rank raises when rank 0 fails inside `on_main`.
Each rank writes OUT/rank<R>.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from engine_helpers import TINY_ARCH, TINY_SPACE
from helpers import make_realistic
from picodet_nas.arch import Arch
from picodet_nas.data import CocoDetection, build_train_loader
from picodet_nas.engine import TrainConfig, Trainer
from picodet_nas.engine.distributed import DistInfo, init_distributed, on_main, shutdown_distributed
from picodet_nas.engine.evaluate import evaluate_coco
from picodet_nas.models import build_model
from picodet_nas.space import SearchSpace
from supernet.sampling import SubnetSampler
from supernet.supernet import Supernet
from supernet.train import SupernetPlan

GLOBAL_BATCH = 4
EVAL_SIZE = 64


def split(data: Path, name: str) -> CocoDetection:
    return CocoDetection(data / "annotations" / f"instances_{name}.json", data / "images")


def sandwich_trainer(data: Path, run_dir: Path, dist_info: DistInfo) -> Trainer:
    """A tiny supernet's trainer with every BN layer in eval mode, so that each image's gradient
    is the same in a batch of 2 as in a batch of 4 (training-mode BN would normalise each rank's
    half with its own statistics, which no single process reproduces)."""
    space = SearchSpace.from_dict(yaml.safe_load(TINY_SPACE))
    train_set = split(data, "train")
    torch.manual_seed(0)
    model = Supernet(space, train_set.num_classes)
    cfg = TrainConfig.for_arch(space.base, input_size=max(space.input_sizes), epochs=1,
                               batch_size=GLOBAL_BATCH // dist_info.world_size, lr=0.1, warmup_iters=0, workers=0,
                               device="cpu", distill=1.0)
    plan = SupernetPlan(SubnetSampler(space, "sandwich", seed=1, num_random=1))
    trainer = Trainer(model, plan, cfg, train_set, run_dir, dist_info, meta={})
    for m in trainer.model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return trainer


def global_batch(data: Path) -> tuple[torch.Tensor, list[dict]]:
    loader = build_train_loader(split(data, "train"), GLOBAL_BATCH, [96], workers=0, seed=0, uint8=True)
    return next(iter(loader))


def count_gradient_allreduces(trainer: Trainer) -> list[int]:
    """A counter of DDP's gradient all-reduces (rounds over its buckets) from now on."""
    rounds = [0]

    def hook(process_group, bucket):
        if bucket.index() == 0:
            rounds[0] += 1
        return default_hooks.allreduce_hook(process_group, bucket)

    trainer.net.register_comm_hook(None, hook)
    return rounds


def realistic_detector(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    arch = Arch.from_dict(yaml.safe_load(TINY_ARCH))
    return make_realistic(build_model(arch, num_classes), EVAL_SIZE, seed=0)


def main(check: str, data: Path, out: Path) -> None:
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    try:
        if check == "sandwich":
            trainer = sandwich_trainer(data, out / f"run{info.rank}", info)
            images, targets = global_batch(data)
            share = GLOBAL_BATCH // info.world_size
            mine = slice(info.rank * share, (info.rank + 1) * share)
            rounds = count_gradient_allreduces(trainer)
            trainer.train_step(images[mine], targets[mine])
            result = {"weights": trainer.model.state_dict(), "allreduces": rounds[0]}
        else:
            val = split(data, "val")
            result = {"coco": evaluate_coco(realistic_detector(val.num_classes), val, EVAL_SIZE, batch_size=2,
                                            dist_info=info)}
            try:
                on_main(info, lambda: 1 / 0)
            except Exception as e:  # noqa: BLE001 - what each rank gets is the result
                result["crash"] = f"{type(e).__name__}: {e}"
        torch.save(result, out / f"rank{info.rank}.pt")
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
