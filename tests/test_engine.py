"""The training engine's parts, checked against hand-computed numbers: LR schedule, recipe
defaults, weight-decay groups, cycle-EMA, multi-scale passes, run directories, config files,
RNG checkpointing."""

import math
import random

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from picodet_nas.arch import PRESETS
from picodet_nas.engine import CycleEMA, LRSchedule, NetworkPass, StaticPlan, TrainConfig, build_optimizer, split_decay
from picodet_nas.engine.config import multiscale_sizes
from picodet_nas.engine.plan import pass_size, resize_batch
from picodet_nas.engine.state import capture_rng, restore_rng
from picodet_nas.errors import CheckpointError, UserError
from picodet_nas.models import build_model
from picodet_nas.space import SearchSpace
from picodet_nas.utils.rundir import check_resumed_settings, prepare_run_dir, read_run_config, write_run_config
from supernet import SubnetSampler, Supernet
from supernet.train import SupernetPlan

from engine_helpers import TINY_SPACE


# ---- learning rate ------------------------------------------------------------------------
def test_lr_warmup_and_cosine_by_hand():
    s = LRSchedule(peak_lr=0.4, iters_per_epoch=100, cosine_epochs=3, warmup_iters=300, warmup_start=0.1)
    assert s(0) == pytest.approx(0.04)  # 0.1 x peak
    assert s(150) == pytest.approx(0.4 * (0.1 * 0.5 + 0.5))  # 0.22: half-way up the warm-up line
    assert s(299) == pytest.approx(0.4 * (0.1 * (1 - 299 / 300) + 299 / 300))
    # After warm-up: the cosine at the global iteration over the 300-iteration horizon
    s2 = LRSchedule(peak_lr=0.4, iters_per_epoch=100, cosine_epochs=6, warmup_iters=300)
    assert s2(300) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 300 / 600)))  # 0.2
    assert s2(300) == pytest.approx(0.2)
    assert s2(450) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert s2(600) == pytest.approx(0.0, abs=1e-12)
    assert s2(10_000) == pytest.approx(0.0, abs=1e-12)  # clamped at the horizon, never rising again


def test_lr_without_warmup_is_pure_cosine():
    s = LRSchedule(peak_lr=1.0, iters_per_epoch=10, cosine_epochs=2, warmup_iters=0)
    assert [round(s(i), 6) for i in (0, 10, 20)] == [1.0, 0.5, 0.0]


# ---- recipe defaults ----------------------------------------------------------------------
def test_published_recipe_defaults():
    s = TrainConfig.for_arch(PRESETS["picodet-s"])
    assert (s.epochs, s.cosine_epochs, s.batch_size, s.input_size) == (300, 300, 128, 320)
    assert s.train_sizes == (256, 288, 320, 352, 384)
    assert (s.momentum, s.weight_decay, s.warmup_iters, s.warmup_start) == (0.9, 4e-5, 300, 0.1)
    assert (s.ema, s.ema_decay, s.ema_warmup, s.ema_cycle_epochs, s.eval_interval) == (True, 0.9998, 10, 40, 10)
    assert s.peak_lr(world_size=4) == pytest.approx(0.4)  # 4 x 128 = 512
    assert s.peak_lr(world_size=1) == pytest.approx(0.1)  # linear scaling
    m = TrainConfig.for_arch(PRESETS["picodet-m"])
    assert (m.batch_size, m.input_size, m.train_sizes) == (80, 416, (352, 384, 416, 448, 480))
    big = TrainConfig.for_arch(PRESETS["picodet-l"])
    assert (big.epochs, big.cosine_epochs, big.batch_size) == (250, 300, 32)
    assert big.peak_lr(world_size=8) == pytest.approx(0.3)  # 8 x 32 = 256
    assert multiscale_sizes(640) == (576, 608, 640, 672, 704)


def test_overrides_and_cosine_horizon_follow_epochs():
    c = TrainConfig.for_arch(PRESETS["picodet-s"], epochs=12, batch_size=16, input_size=416, lr=None)
    assert (c.epochs, c.cosine_epochs, c.batch_size) == (12, 12, 16)
    assert c.train_sizes == (352, 384, 416, 448, 480)
    assert c.peak_lr(2) == pytest.approx(0.4 * 32 / 512)
    assert TrainConfig.for_arch(PRESETS["picodet-s"], lr=0.05).peak_lr(8) == 0.05
    with pytest.raises(UserError, match="batch-size must be a positive integer"):
        TrainConfig.for_arch(PRESETS["picodet-s"], batch_size=0)
    with pytest.raises(UserError, match="device must be one of"):
        TrainConfig.for_arch(PRESETS["picodet-s"], device="tpu")
    with pytest.raises(UserError, match=r"bn-freeze-epochs must be 0 or less than --epochs \(3;"):
        TrainConfig.for_arch(PRESETS["picodet-s"], epochs=3, bn_freeze_epochs=3)
    with pytest.raises(UserError, match="bn-freeze-epochs must be an integer >= 0"):
        TrainConfig.for_arch(PRESETS["picodet-s"], bn_freeze_epochs=-1)
    with pytest.raises(UserError, match="grad-clip must be a number >= 0"):
        TrainConfig.for_arch(PRESETS["picodet-s"], grad_clip=-1.0)
    with pytest.raises(UserError, match="workers must be an integer >= 0"):
        TrainConfig.for_arch(PRESETS["picodet-s"], workers=-1)


def test_data_workers_none_on_cpu_unless_given(monkeypatch):
    """On a CPU, worker processes would take cores from the training threads; on a GPU they feed it."""
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    auto = TrainConfig.for_arch(PRESETS["picodet-s"])
    assert auto.workers is None
    assert auto.data_workers(torch.device("cpu")) == 0 and auto.data_workers("cpu") == 0
    assert auto.data_workers(torch.device("cuda", 1)) == 4 and auto.data_workers("cuda") == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert auto.data_workers("cuda") == 2
    given = TrainConfig.for_arch(PRESETS["picodet-s"], workers=3)
    assert given.data_workers("cpu") == 3 and given.data_workers("cuda") == 3
    assert TrainConfig.from_dict(auto.to_dict()).workers is None  # a checkpoint's config keeps "auto"


# ---- weight decay -------------------------------------------------------------------------
def _bn_param_names(model: nn.Module, part: str) -> set[str]:
    return {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
            and name.startswith(part + ".") for p in ("weight", "bias")}


@pytest.mark.parametrize("which", ["static", "supernet"])
def test_weight_decay_exempts_backbone_and_head_bn_only(which):
    if which == "static":
        model = build_model(PRESETS["picodet-s"], num_classes=80)
    else:
        model = Supernet(SearchSpace.from_dict(yaml.safe_load(TINY_SPACE)), num_classes=3)
    decay, no_decay = split_decay(model)
    assert set(no_decay) == _bn_param_names(model, "backbone") | _bn_param_names(model, "head")
    assert _bn_param_names(model, "neck") <= set(decay)  # CSP-PAN BN is decayed
    assert "head.outputs.0.bias" in decay  # the head output bias is decayed
    assert "backbone.blocks.1.se.reduce.bias" in decay  # SE biases are decayed
    assert "backbone.stem.conv.conv.weight" in decay and "backbone.stem.conv.bn.weight" in no_decay
    assert "head.towers.0.0.bn.weight" in no_decay and "neck.trans.0.bn.weight" in decay
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=4e-5)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 4e-5 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["momentum"] == 0.9 and not groups["decay"]["nesterov"]


# ---- cycle-EMA ----------------------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 1)
        self.bn = nn.BatchNorm1d(1)


def test_cycle_ema_matches_hand_computation():
    model = _Tiny()
    ema = CycleEMA(model, decay=0.9998, warmup=10, cycle_epochs=2)
    assert all(torch.count_nonzero(v) == 0 for v in ema.shadow.values())  # zero init, BN buffers too
    assert "bn.running_mean" in ema.shadow and "bn.num_batches_tracked" not in ema.shadow
    values = [1.0, 3.0, -2.0]
    shadow, decays = 0.0, []
    for t, value in enumerate(values):
        with torch.no_grad():
            model.fc.weight.fill_(value)
            model.bn.running_mean.fill_(10 * value)
        model.bn.num_batches_tracked.fill_(t + 5)
        ema.update(model)
        d = min(0.9998, (1 + t) / (10 + t))  # 0.1, 2/11, 3/12
        shadow = d * shadow + (1 - d) * value
        decays.append(d)
    assert decays == pytest.approx([0.1, 2 / 11, 0.25])
    expected = shadow / (1 - decays[-1] ** 3)
    weights = ema.end_epoch(model)
    assert weights["fc.weight"].item() == pytest.approx(expected, rel=1e-6)
    assert weights["bn.running_mean"].item() == pytest.approx(10 * expected, rel=1e-6)
    assert weights["bn.num_batches_tracked"].item() == 7  # integers come from the model
    assert ema.epoch == 1 and ema.step == 3
    # Second epoch of a 2-epoch cycle: the weights still come from the average, then it resets.
    ema.update(model)
    weights = ema.end_epoch(model)
    assert weights["fc.weight"].item() != 0
    assert ema.step == 0 and ema.epoch == 0 and torch.count_nonzero(ema.shadow["fc.weight"]) == 0
    # An average without updates hands back the model's own weights and counts no epoch.
    assert ema.end_epoch(model)["fc.weight"].item() == pytest.approx(-2.0) and ema.epoch == 0


def test_cycle_ema_state_roundtrip():
    model = _Tiny()
    a = CycleEMA(model)
    for _ in range(3):
        a.update(model)
    b = CycleEMA(model)
    b.load_state_dict(a.state_dict())
    assert (b.step, b.last_decay, b.epoch) == (a.step, a.last_decay, a.epoch)
    assert all(torch.equal(b.shadow[k], a.shadow[k]) for k in a.shadow)


# ---- step plans and multi-scale passes ---------------------------------------------------
def test_static_plan_and_batch_resize():
    plan = StaticPlan(320)
    assert plan.networks(7) == [NetworkPass(None, 320)] and not plan.find_unused_parameters
    assert pass_size(256, 320, 320) == 256  # the batch as drawn
    assert pass_size(256, 320, 224) == 160  # a smaller network keeps the draw's offset (-64)
    images = torch.rand(2, 3, 64, 64)
    boxes = [torch.tensor([[0.0, 8.0, 32.0, 64.0]]), torch.zeros(0, 4)]
    small, small_boxes = resize_batch(images, boxes, 32)
    assert small.shape == (2, 3, 32, 32)
    assert torch.equal(small_boxes[0], torch.tensor([[0.0, 4.0, 16.0, 32.0]])) and small_boxes[1].shape == (0, 4)
    same, same_boxes = resize_batch(images, boxes, 64)
    assert same is images and same_boxes[0] is boxes[0]


def test_supernet_plan_runs_the_sampler_subnets_at_their_sizes():
    space = SearchSpace.from_dict(yaml.safe_load(TINY_SPACE))
    plan = SupernetPlan(SubnetSampler(space, "sandwich", seed=3, num_random=1))
    assert plan.base_input_size == 96 and plan.find_unused_parameters
    passes = plan.networks(5)
    assert [p.arch for p in passes][:2] == [space.largest(), space.smallest()] and len(passes) == 3
    assert all(p.input_size == p.arch.input_size for p in passes)
    assert plan.networks(5) == passes  # a pure function of the step


# ---- run directories ----------------------------------------------------------------------
def test_run_dir_rules(tmp_path):
    root = tmp_path / "runs"
    first = prepare_run_dir("retrain", name="a", root=root)
    assert first.path == root / "retrain" / "a" and first.resume_from is None and first.path.is_dir()
    (first.path / "metrics.csv").write_text("x")
    with pytest.raises(UserError, match="already exists and is not empty"):
        prepare_run_dir("retrain", name="a", root=root)
    with pytest.raises(UserError, match="nothing to resume"):
        prepare_run_dir("retrain", name="a", root=root, resume=True)
    (first.path / "last.pt").write_bytes(b"x")
    with pytest.raises(UserError, match="add --resume to continue it"):
        prepare_run_dir("retrain", name="a", root=root)
    assert prepare_run_dir("retrain", name="a", root=root, resume=True).resume_from == first.path / "last.pt"
    assert prepare_run_dir("retrain", root=root, resume=True).path == first.path  # the latest run
    assert prepare_run_dir("retrain", root=root, resume=str(first.path / "last.pt")).path == first.path
    with pytest.raises(UserError, match="run directory not found"):
        prepare_run_dir("retrain", root=root, resume=str(tmp_path / "nope"))
    out = prepare_run_dir("retrain", out=tmp_path / "elsewhere", root=root)
    assert out.path == tmp_path / "elsewhere"
    # A default name taken in the same second gets a number, never the same directory.
    one = prepare_run_dir("eval", default_name="exp", root=root)
    (one.path / "f").write_text("x")
    assert prepare_run_dir("eval", default_name="exp", root=root).path == root / "eval" / "exp-2"



def test_a_commands_marker_file_decides_what_resumes_and_a_failed_new_run_leaves_nothing(tmp_path):
    root = tmp_path / "runs"
    run = prepare_run_dir("evolve", name="s", root=root, marker="config.yaml")
    assert run.created and run.resume_from is None
    write_run_config(run.path, {"seed": 0})
    with pytest.raises(UserError, match=r"it holds a config.yaml: add --resume to continue it"):
        prepare_run_dir("evolve", name="s", root=root, marker="config.yaml")
    resumed = prepare_run_dir("evolve", root=root, resume=True, marker="config.yaml")  # the latest search
    assert resumed.resume_from == run.path / "config.yaml" and read_run_config(resumed.path) == {"seed": 0}
    (run.path / "config.yaml").write_text("seed: [0\n")
    with pytest.raises(UserError, match="not valid YAML"):
        read_run_config(run.path)
    fresh = prepare_run_dir("evolve", name="t", root=root, marker="config.yaml")
    (fresh.path / "data").mkdir()
    fresh.discard()  # created by this run: removed
    assert not fresh.path.exists()
    given = tmp_path / "given"
    given.mkdir()
    kept = prepare_run_dir("evolve", out=given, root=root, marker="config.yaml")
    (given / "f").write_text("x")
    kept.discard()  # the user's folder: emptied, kept
    assert given.is_dir() and not any(given.iterdir())
    write_run_config(run.path, {})
    (run.path / "done").write_text("x")
    with pytest.raises(UserError, match="the run is complete"):
        prepare_run_dir("evolve", out=run.path, resume=True, marker="config.yaml", finished_marker="done")


def test_resume_checks_name_every_differing_setting():
    check_resumed_settings({"seed": 0, "lr": 0.1}, {"seed": 0, "lr": None, "new": 1}, "last.pt")  # None: not given
    with pytest.raises(UserError, match=r"^--seed 1 and --strategy nsga2 differ from the resumed run's 0 and ga "
                                        r"\(r/config.yaml\); resume with the same settings"):
        check_resumed_settings({"seed": 0, "strategy": "ga", "workers": 2}, {"seed": 1, "strategy": "nsga2", "workers": 4},
                               "r/config.yaml", keys=["seed", "strategy"])
    with pytest.raises(UserError, match=r"^the study b differs from the resumed run's a"):
        check_resumed_settings({"study_name": "a"}, {"study_name": "b"}, "c.yaml", keys=["study_name"],
                               labels={"study_name": "the study"})


# ---- config files -------------------------------------------------------------------------
# ---- RNG states in checkpoints ------------------------------------------------------------
def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save({"rng": state}, tmp_path / "s.pt")
    restore_rng(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ---- one engine step = loss, backward over every pass, one SGD step, one EMA update ------------
class _TwoSizes:
    """A plan with two passes of the static model per step: the batch as drawn, and at half size."""

    base_input_size = 64
    find_unused_parameters = False

    def networks(self, step):
        return [NetworkPass(None, 64), NetworkPass(None, 32)]


@pytest.mark.parametrize("plan", ["static", "two passes"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_train_step_equals_a_hand_written_step(tmp_path, plan, channels_last):
    import copy

    from engine_helpers import TINY_ARCH, shapes
    from picodet_nas.arch import load_arch_file
    from picodet_nas.data import CocoDetection
    from picodet_nas.engine import Trainer
    from picodet_nas.engine.distributed import DistInfo
    from picodet_nas.losses import PicoDetLoss
    from picodet_nas.models import flatten_outputs

    data = shapes(tmp_path / "d", train=4, val=1, size=64)
    dataset = CocoDetection(data / "annotations" / "instances_train.json", data / "images")
    (tmp_path / "a.yaml").write_text(TINY_ARCH)
    arch, _ = load_arch_file(tmp_path / "a.yaml")
    torch.manual_seed(0)
    model = build_model(arch, dataset.num_classes)
    reference = copy.deepcopy(model)
    cfg = TrainConfig.for_arch(arch, epochs=1, batch_size=2, lr=0.1, warmup_iters=0, workers=0, device="cpu",
                               channels_last=channels_last)
    trainer = Trainer(model, StaticPlan(64) if plan == "static" else _TwoSizes(), cfg, dataset, tmp_path,
                      DistInfo(0, 1, 0, torch.device("cpu")), meta={})
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=g)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    trainer.train_step(images, targets)

    # The same memory layout as the trainer's (NHWC kernels sum in another order than NCHW ones).
    layout = torch.channels_last if channels_last else torch.contiguous_format
    reference.to(memory_format=layout)
    decay, no_decay = split_decay(reference)
    params = dict(reference.named_parameters())
    opt = torch.optim.SGD([{"params": [params[n] for n in decay], "weight_decay": 4e-5},
                           {"params": [params[n] for n in no_decay], "weight_decay": 0.0}], lr=0.1, momentum=0.9)
    loss_fn = PicoDetLoss(dataset.num_classes)
    sizes = [64] if plan == "static" else [64, 32]
    for size in sizes:
        x, boxes = resize_batch(images, [t["boxes"] for t in targets], size)
        x = x.contiguous(memory_format=layout)
        loss, _ = loss_fn(*flatten_outputs(reference(x), dataset.num_classes), boxes, [t["labels"] for t in targets])
        loss.backward()
    opt.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-7), name
    assert trainer.ema.step == 1 and trainer.progress.step == 1
    first = next(iter(trainer.ema.shadow))
    assert torch.allclose(trainer.ema.shadow[first], 0.9 * model.state_dict()[first])  # d_0 = 0.1


def _tiny_trainer(tmp_path, calibrate=None, **overrides):
    from engine_helpers import TINY_ARCH, shapes
    from picodet_nas.arch import load_arch_file
    from picodet_nas.data import CocoDetection
    from picodet_nas.engine import Trainer
    from picodet_nas.engine.distributed import DistInfo

    data = shapes(tmp_path / "d", train=4, val=1, size=64)
    dataset = CocoDetection(data / "annotations" / "instances_train.json", data / "images")
    (tmp_path / "a.yaml").write_text(TINY_ARCH)
    arch, _ = load_arch_file(tmp_path / "a.yaml")
    torch.manual_seed(0)
    cfg = TrainConfig.for_arch(arch, **{"batch_size": 2, "lr": 0.1, "warmup_iters": 0, "workers": 0,
                                        "device": "cpu", "input_size": 64, **overrides})
    return Trainer(build_model(arch, dataset.num_classes), StaticPlan(64), cfg, dataset, tmp_path / "run",
                   DistInfo(0, 1, 0, torch.device("cpu")), meta={}, calibrate=calibrate)


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def test_bn_freeze_keeps_the_running_statistics_of_the_last_epochs(tmp_path):
    trainer = _tiny_trainer(tmp_path, epochs=3, bn_freeze_epochs=2)
    frozen_at = {}
    original = trainer._train_epoch

    def spy(epoch):
        frozen_at[epoch] = (_bn_buffers(trainer.model), trainer.ema.step,
                            all(not m.training for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d)),
                            trainer.model.backbone.training)
        return original(epoch)

    trainer._train_epoch = spy
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    after_first = frozen_at[1][0]
    steps = trainer.iters_per_epoch
    assert frozen_at[0][2] is False and frozen_at[1][2] is True and frozen_at[2][2] is True
    assert frozen_at[1][3] is True  # the rest of the network still trains
    assert any(not torch.equal(a, frozen_at[0][0][k]) for k, a in after_first.items())  # epoch 1 updated them
    final = _bn_buffers(trainer.model)
    assert all(torch.equal(final[k], v) for k, v in after_first.items())  # epochs 2-3 did not
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    # The EMA restarted when the freeze began: it holds the last two epochs' steps only.
    assert frozen_at[1][1] == 0 and trainer.ema.step == 2 * steps


def test_evaluated_weights_get_recalibrated_statistics_except_in_frozen_epochs(tmp_path):
    """Each due evaluation recomputes the BN statistics of the epoch's weights (they replace the
    averaged ones in what is saved); in BN-frozen epochs the frozen statistics are kept, since the
    weights were trained against them."""
    calls = []

    def calibrate(model):
        calls.append(model)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(0.25)

    trainer = _tiny_trainer(tmp_path, calibrate=calibrate, epochs=3, bn_freeze_epochs=1, eval_interval=1)
    result = trainer.fit()
    assert len(calls) == 2  # epochs 1 and 2; epoch 3 is frozen
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert not any(torch.all(v == 0.25) for k, v in result.weights.items() if k.endswith("running_mean"))
    assert all(torch.equal(last["ema"][k], v) for k, v in result.weights.items())

    calls.clear()
    trainer = _tiny_trainer(tmp_path / "b", calibrate=calibrate, epochs=2, eval_interval=1)
    result = trainer.fit()
    assert len(calls) == 2
    assert all(torch.all(v == 0.25) for k, v in result.weights.items() if k.endswith("running_mean"))


def test_grad_clip_bounds_the_first_update(tmp_path):
    trainer = _tiny_trainer(tmp_path, epochs=1, grad_clip=1e-3, weight_decay=0.0)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([0])}]
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step(images, targets)
    # SGD's first step moves the weights by lr x gradient, here the clipped one: norm 1e-3.
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(trainer.model.parameters(), before)))
    assert moved.item() == pytest.approx(0.1 * 1e-3, rel=1e-3)


def test_training_prints_its_expected_duration_and_warns_on_a_long_cpu_run(tmp_path, monkeypatch):
    """After its first 10 steps a session logs the training time left; on a CPU, past CPU_WARN_S,
    one warning line names the flags of a practical CPU run, and the training goes on."""
    import logging

    import picodet_nas.engine.pace as pace

    monkeypatch.setattr(pace, "CPU_WARN_S", 0.0)
    trainer = _tiny_trainer(tmp_path, epochs=6)  # 2 steps per epoch: the estimate comes in epoch 5
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    level = trainer.log.level
    trainer.log.addHandler(handler)
    trainer.log.setLevel(logging.INFO)
    try:
        result = trainer.fit()
    finally:
        trainer.log.removeHandler(handler)
        trainer.log.setLevel(level)
    estimates = [r.getMessage() for r in records if r.getMessage().startswith("expected training time")]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(estimates) == 1 and "for the 2 steps left" in estimates[0]
    assert len(warnings) == 1 and "--epochs 20 --batch-size 8" in warnings[0] and "going on" in warnings[0]
    assert trainer.progress.epoch == 6 and result is not None


# ---- --sync-bn and --deterministic ---------------------------------------------------------
def test_sync_bn_conversion_keeps_the_state_and_refuses_dynamic_bn():
    from picodet_nas.engine.distributed import convert_sync_bn

    model = build_model(PRESETS["picodet-s"], 6)
    keys = list(model.state_dict())
    converted = convert_sync_bn(model)
    bns = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(type(m) is nn.SyncBatchNorm for m in bns)
    assert list(converted.state_dict()) == keys  # checkpoints and the EMA keep their keys
    space = SearchSpace.from_dict(yaml.safe_load(TINY_SPACE))
    with pytest.raises(UserError, match="DynamicBatchNorm2d"):
        convert_sync_bn(Supernet(space, 6))


def test_sync_bn_needs_cuda_and_resume_may_turn_deterministic_on_but_not_sync_bn():
    from pathlib import Path

    from picodet_nas.engine.session import resumed_config

    cfg = TrainConfig.for_arch(PRESETS["picodet-s"], sync_bn=True)
    cfg.check_device("cuda")
    with pytest.raises(UserError, match="--sync-bn needs CUDA GPUs"):
        cfg.check_device(torch.device("cpu"))
    with pytest.raises(UserError, match="sync-bn must be true or false"):
        TrainConfig(sync_bn="yes")
    ckpt = {"config": TrainConfig().to_dict()}
    assert resumed_config(ckpt, {"deterministic": True}, Path("last.pt")).deterministic
    with pytest.raises(UserError, match="--sync-bn True differs from the resumed run's False"):
        resumed_config(ckpt, {"sync_bn": True}, Path("last.pt"))


@pytest.fixture
def restore_determinism(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    saved = torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(saved[0])
    cudnn.deterministic, cudnn.benchmark = saved[1:]


def test_deterministic_asks_torch_cudnn_and_cublas_and_training_runs(tmp_path, restore_determinism):
    """Every operation of training and BN recalibration has a deterministic kernel (on the CPU;
    on a GPU the same flag makes one without raise)."""
    import os

    from picodet_nas.bn_stats import recalibrate_bn

    def calibrate(model):
        recalibrate_bn(model, [torch.randn(2, 3, 64, 64)], 2)

    trainer = _tiny_trainer(tmp_path, calibrate=calibrate, epochs=1, deterministic=True)
    cudnn = torch.backends.cudnn
    assert torch.are_deterministic_algorithms_enabled() and cudnn.deterministic and not cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert trainer.fit().epochs == 1


def test_resume_from_a_checkpoint_that_is_not_a_training_one_is_a_one_line_error(tmp_path):
    """A training state loads back; one lacking the optimizer and the rest (a deployed
    checkpoint: weights and meta only) is a CheckpointError naming what it lacks."""
    trainer = _tiny_trainer(tmp_path, epochs=1)
    full = {**trainer.state(trainer.model.state_dict()), "model": trainer.model.state_dict()}
    trainer.load_state(full, "last.pt")
    assert trainer.progress.epoch == full["epoch"]
    deployed = {"model": full["model"], "ema": full["ema"], "meta": {}}
    with pytest.raises(CheckpointError, match=r"^x\.pt: not a training checkpoint \(it lacks optimizer, scaler, rng"):
        trainer.load_state(deployed, "x.pt")
