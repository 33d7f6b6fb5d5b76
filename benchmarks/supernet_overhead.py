"""Supernet overhead: the cost of training a subnet inside the weight-sharing supernet
compared with training the same subnet as a static network.

For the smallest, a middle (the median choice of every gene) and the largest subnet of each
space, one process times training steps of

* the supernet with that subnet active (`set_active` included: the subnets alternate, so
  every supernet step reconfigures the dynamic layers, as with a subnet sampled per step), and
* the static network `supernet.extract(arch)` (same weights, `build_model`'s network),

on the same batch, interleaved (supernet, static, next subnet, ...), and reports the median
step times and their ratio. A step is zero_grad + forward + loss + backward + SGD step
(momentum 0.9, weight decay 4e-5), the optimiser of the supernet covering all its (largest)
weights. Two losses: the real `PicoDetLoss` (SimOTA assignment, VFL, GIoU, DFL) against
synthetic boxes, which makes the full training step; and a cheap stand-in (mean of squared
outputs), whose ratio isolates the model's own overhead (the loss costs the same for both).

Memory: each (subnet, variant) runs again in a fresh subprocess that builds only its own
network (the supernet, or `build_model(arch)`) and its optimiser, resets the kernel's peak-RSS
mark (`/proc/self/clear_refs`), runs a few full steps and reads `VmHWM`. The figure is the
peak resident memory of that process during training steps minus its resident memory before
the network was built: weights, gradients, optimiser state, activations and allocator
caches of the step; Python and PyTorch themselves excluded.

    python benchmarks/supernet_overhead.py --spaces quickstart --batch 2 --out runs/bench/supernet_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from picodet_nas.arch import Arch
from picodet_nas.losses import PicoDetLoss
from picodet_nas.models import build_model, flatten_outputs
from picodet_nas.space import SearchSpace, load_space
from picodet_nas.summary import count_params
from picodet_nas.utils.io import atomic_write_json
from supernet import Supernet

SUBNETS = ("smallest", "middle", "largest")
LOSSES = ("picodet", "standin")
BOXES_PER_IMAGE = 4


def subnet(space: SearchSpace, which: str) -> Arch:
    if which == "smallest":
        return space.smallest()
    if which == "largest":
        return space.largest()
    return space.decode([g.choices[len(g.choices) // 2] for g in space.genes])


def make_batch(arch: Arch, batch: int, num_classes: int, seed: int):
    """Normalised random images at the subnet's input size, with random boxes and labels."""
    g = torch.Generator().manual_seed(seed)
    s = arch.input_size
    images = torch.randn(batch, 3, s, s, generator=g)
    boxes, labels = [], []
    for _ in range(batch):
        xy = torch.rand(BOXES_PER_IMAGE, 2, generator=g) * s * 0.7
        wh = (torch.rand(BOXES_PER_IMAGE, 2, generator=g) * 0.25 + 0.05) * s
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=s)], dim=1))
        labels.append(torch.randint(0, num_classes, (BOXES_PER_IMAGE,), generator=g))
    return images, boxes, labels


def make_step(model, arch: Arch, loss_kind: str, num_classes: int, batch):
    """One training step of `model` on `batch` (the supernet runs `arch`)."""
    images, boxes, labels = batch
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=4e-5)
    criterion = PicoDetLoss(num_classes)
    is_supernet = isinstance(model, Supernet)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        outs = model(images, arch) if is_supernet else model(images)
        if loss_kind == "picodet":
            loss, _ = criterion(*flatten_outputs(outs, num_classes), boxes, labels)
        else:
            loss = sum(o.square().mean() for o in outs)
        loss.backward()
        optimizer.step()

    return step


def timed(step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _to(x, device: torch.device):
    return [t.to(device) for t in x] if isinstance(x, list) else x.to(device)


def time_space(space: SearchSpace, args) -> list[dict]:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    sn = Supernet(space, args.num_classes).train()
    archs = {which: subnet(space, which) for which in SUBNETS}
    batches = {which: tuple(_to(x, device) for x in make_batch(a, args.batch, args.num_classes, args.seed))
               for which, a in archs.items()}
    statics = {which: sn.extract(a).train().to(device) for which, a in archs.items()}
    sn.to(device)
    steps = {
        (which, variant, loss): make_step(sn if variant == "supernet" else statics[which], archs[which], loss,
                                          args.num_classes, batches[which])
        for which in SUBNETS for variant in ("supernet", "static") for loss in LOSSES
    }
    times: dict[tuple, list[float]] = {key: [] for key in steps}
    for rep in range(args.warmup + args.repeats):
        for which in SUBNETS:
            for loss in LOSSES:
                for variant in ("supernet", "static"):
                    t = timed(steps[(which, variant, loss)], device)
                    if rep >= args.warmup:
                        times[(which, variant, loss)].append(t)
    rows = []
    for which, arch in archs.items():
        med = {(v, l): statistics.median(times[(which, v, l)]) for v in ("supernet", "static") for l in LOSSES}
        rows.append({
            "space": space.name,
            "subnet": which,
            "arch": arch.to_dict(),
            "input_size": arch.input_size,
            "params": count_params(statics[which]),
            "supernet_params": count_params(sn),
            "step_ms_supernet": 1e3 * med[("supernet", "picodet")],
            "step_ms_static": 1e3 * med[("static", "picodet")],
            "ratio": med[("supernet", "picodet")] / med[("static", "picodet")],
            "model_step_ms_supernet": 1e3 * med[("supernet", "standin")],
            "model_step_ms_static": 1e3 * med[("static", "standin")],
            "ratio_model": med[("supernet", "standin")] / med[("static", "standin")],
        })
    return rows


# ---- memory: one subprocess per (subnet, variant) -------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(args) -> None:
    """Runs in the subprocess: prints {"peak_mb": ...} for one (space, subnet, variant)."""
    torch.set_num_threads(args.threads)
    space = load_space(args.spaces[0])
    arch = subnet(space, args.child_subnet)
    base_kb = _status_kb("VmRSS")
    model = Supernet(space, args.num_classes) if args.child_variant == "supernet" else build_model(arch, args.num_classes)
    step = make_step(model.train(), arch, "picodet", args.num_classes,
                     make_batch(arch, args.batch, args.num_classes, args.seed))
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS (construction excluded)
    for _ in range(args.memory_steps):
        step()
    print(json.dumps({"peak_mb": (_status_kb("VmHWM") - base_kb) / 1024}))


def measure_memory(space_spec: str, which: str, variant: str, args) -> float:
    cmd = [sys.executable, __file__, "--spaces", space_spec, "--batch", str(args.batch), "--threads", str(args.threads),
           "--num-classes", str(args.num_classes), "--seed", str(args.seed), "--memory-steps", str(args.memory_steps),
           "--child-subnet", which, "--child-variant", variant]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


# ---- report --------------------------------------------------------------------------------
def print_table(rows: list[dict]) -> None:
    head = (f"{'space':<16}{'subnet':<9}{'input':>6}{'params':>10}{'sn ms':>9}{'static ms':>10}{'ratio':>7}"
            f"{'model ratio':>12}{'sn MB':>8}{'static MB':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        mem = (f"{r['peak_mb_supernet']:>8.0f}{r['peak_mb_static']:>10.0f}" if "peak_mb_supernet" in r else "")
        print(f"{r['space']:<16}{r['subnet']:<9}{r['input_size']:>6}{r['params']:>10,}{r['step_ms_supernet']:>9.1f}"
              f"{r['step_ms_static']:>10.1f}{r['ratio']:>7.3f}{r['ratio_model']:>12.3f}{mem}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spaces", nargs="+", default=["quickstart", "picodet_s_joint"],
                   help="search spaces (names or YAML paths); default: quickstart picodet_s_joint")
    p.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per (subnet, variant, loss) (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--num-classes", type=int, default=80, help="detector classes (default 80)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and synthetic data (default 0)")
    p.add_argument("--memory-steps", type=int, default=3, help="steps per memory subprocess (default 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--device", default="cpu", help="where the steps run: cpu or cuda (memory is measured on the CPU "
                   "only; use --no-memory on a GPU)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--child-subnet", choices=SUBNETS, help=argparse.SUPPRESS)
    p.add_argument("--child-variant", choices=("supernet", "static"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_subnet:
        memory_child(args)
        return 0
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.spaces:
        space = load_space(name)
        space_rows = time_space(space, args)
        if not args.no_memory:
            for r in space_rows:
                r["peak_mb_supernet"] = measure_memory(name, r["subnet"], "supernet", args)
                r["peak_mb_static"] = measure_memory(name, r["subnet"], "static", args)
        rows += space_rows
    print_table(rows)
    result = {
        "benchmark": "supernet_overhead",
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
            "device": args.device,
            "batch": args.batch,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "num_classes": args.num_classes,
            "step": "zero_grad + forward + loss + backward + SGD(momentum 0.9, wd 4e-5) step; median of interleaved repeats",
            "ratio": "supernet step / static step with PicoDetLoss (SimOTA + VFL + GIoU + DFL, synthetic boxes)",
            "ratio_model": "the same with a stand-in loss (mean of squared outputs): the model's own overhead",
            "memory": None if args.no_memory else
            "peak RSS during training steps minus RSS before building the network, one subprocess per "
            "(subnet, variant), construction excluded (/proc/self/clear_refs), PicoDetLoss",
        },
        "target_ratio": 1.3,
        "goal_ratio": 1.1,
        "max_ratio": max(r["ratio"] for r in rows),
        "max_ratio_model": max(r["ratio_model"] for r in rows),
        "results": rows,
    }
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
