"""The weight-sharing supernet: sliceable layers, subnet equivalence with the static builder,
sampling, BN recalibration and gradient locality. Small inputs: it is the weights that matter."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from picodet_nas.errors import SpaceError
from picodet_nas.models import build_model
from picodet_nas.models.channels import stacked_prefixes
from picodet_nas.models.layers import ConvBN, DPModule, SqueezeExcite
from picodet_nas.registry import list_spaces
from picodet_nas.space import load_space
from picodet_nas.summary import count_params
from picodet_nas.bn_stats import recalibrate_bn
from supernet import Supernet, SubnetSampler
from supernet.dynamic import SLICEABLE, DynamicBatchNorm2d, DynamicConv2d, active_state_dict

SPACES = tuple(list_spaces())  # every registered space: a new space file is checked here without more code
NUM_CLASSES = 3
TOL = 1e-5


# ---- helpers -------------------------------------------------------------------------------
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random non-default weights and non-trivial BN running statistics (activations stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                bound = (3.0 / fan_in) ** 0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
    return model


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def builder_params(arch) -> int:
    """Parameter count of the network the static builder makes for `arch`."""
    return count_params(build_model(arch, NUM_CLASSES))


def bn_modules(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def images(seed: int, sizes=(3, 2, 3), side: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, side, side, generator=g) for b in sizes]


def plausible_bn_stats_(model: nn.Module, seed: int) -> nn.Module:
    """BN running statistics of the model's own activations (cumulative average over one
    train-mode batch, plain PyTorch), then perturbed: not the defaults, yet each BN output
    stays O(1), so every layer's weights show in the outputs (with arbitrary statistics the
    signal fades through the eval-mode BNs and the outputs are nearly constant)."""
    g = torch.Generator().manual_seed(seed)
    bns = bn_modules(model).values()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 64, 64, generator=g))
    with torch.no_grad():
        for bn in bns:
            bn.momentum = 0.1
            c = bn.num_features
            bn.running_var.clamp_(min=bn.running_var.median().item())  # no near-constant channel
            bn.running_mean.add_(torch.randn(c, generator=g) * 0.2 * bn.running_var.sqrt())
            bn.running_var.mul_(torch.rand(c, generator=g) * 0.8 + 0.7)
    return model.eval()


_SUPERNETS: dict[str, Supernet] = {}


def supernet_of(name: str) -> Supernet:
    """One randomised supernet per space (largest arch active), shared by the tests of this module."""
    if name not in _SUPERNETS:
        seed = SPACES.index(name)
        sn = randomize_(Supernet(load_space(name), NUM_CLASSES), seed)
        _SUPERNETS[name] = plausible_bn_stats_(sn, seed)
    return _SUPERNETS[name]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _SUPERNETS.clear()


# ---- sliceable layers ----------------------------------------------------------------------
def static_copy(static: nn.Module, sliceable: nn.Module) -> nn.Module:
    """`static` (a module of the active size) loaded with the active slices of `sliceable`:
    strict, so keys and shapes must match."""
    static.load_state_dict(active_state_dict(sliceable))
    return static


def test_sliceable_conv_runs_split_channels_and_kernel_centre():
    torch.manual_seed(0)
    conv = DynamicConv2d(16, 12, 5, bias=True)
    conv.set_active(in_channels=stacked_prefixes(3, 8), out_channels=5, kernel_size=3)
    x = torch.randn(2, 6, 9, 9)
    w = torch.cat([conv.weight[:5, 0:3], conv.weight[:5, 8:11]], dim=1)[:, :, 1:4, 1:4]
    ref = nn.functional.conv2d(x, w, conv.bias[:5], padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-6)
    static = static_copy(nn.Conv2d(6, 5, 3, padding=1), conv)
    assert torch.allclose(static(x), ref, atol=1e-6)
    assert static.weight.data_ptr() != conv.weight.data_ptr()
    with pytest.raises(ValueError):
        DynamicConv2d(16, 12, 3, groups=4)


def test_sliceable_depthwise_convbn():
    torch.manual_seed(0)
    op = randomize_(ConvBN(8, 8, 5, 2, groups=8, act=False, layers=SLICEABLE), seed=1).eval()
    op.set_active(6, kernel_size=3)
    x = torch.randn(2, 6, 11, 11)
    static = static_copy(ConvBN(6, 6, 3, 2, groups=6, act=False), op).eval()
    assert torch.allclose(op(x), static(x), atol=1e-6)
    with pytest.raises(ValueError):
        op.set_active(6, kernel_size=7)


def test_sliceable_bn_trains_on_active_channels_only():
    torch.manual_seed(0)
    bn = DynamicBatchNorm2d(10)
    bn.set_active(4)
    ref = nn.BatchNorm2d(4)
    x = torch.randn(5, 4, 3, 3) * 2 + 1
    assert torch.allclose(bn(x), ref(x), atol=1e-6)
    assert torch.allclose(bn.running_mean[:4], ref.running_mean) and torch.allclose(bn.running_var[:4], ref.running_var)
    assert torch.all(bn.running_mean[4:] == 0) and torch.all(bn.running_var[4:] == 1)
    static = static_copy(nn.BatchNorm2d(4), bn)
    assert torch.equal(static.running_mean, bn.running_mean[:4]) and static.num_batches_tracked == 1


def test_sliceable_se_and_dp_module():
    torch.manual_seed(0)
    se = randomize_(SqueezeExcite(16, layers=SLICEABLE), seed=2)
    se.set_active(stacked_prefixes(4, 8))
    x = torch.randn(2, 8, 5, 5)
    static = static_copy(SqueezeExcite(8), se)  # reduce 8 -> 2 channels
    assert torch.allclose(se(x), static(x), atol=1e-6)
    dp = randomize_(DPModule(16, 5, 2, layers=SLICEABLE), seed=3).eval()
    dp.set_active(8)
    assert torch.allclose(dp(x), static_copy(DPModule(8, 5, 2), dp).eval()(x), atol=1e-6)


# ---- subnet equivalence --------------------------------------------------------------------
def archs_of(space, n: int, seed: int):
    """`n` archs: the largest, the smallest, then random ones (every dimension varies)."""
    rng = random.Random(seed)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n - 2)]


@pytest.mark.parametrize("name", SPACES)
def test_subnet_equals_extracted_static_network(name):
    """20 archs per space: supernet (arch active, eval) == extract(arch), with random weights and
    BN statistics and again after recalibrating both with the same images."""
    sn = supernet_of(name)
    space = sn.space
    calib = images(seed=7, sizes=(2, 2), side=64)
    for i, arch in enumerate(archs_of(space, 20, seed=SPACES.index(name))):
        side = arch.input_size if name == "quickstart" else 64
        x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(i))
        sn.eval()
        with torch.no_grad():
            out = sn(x, arch)
            static = sn.extract(arch)
            assert not static.training
            assert max_diff(out, static(x)) <= TOL, (name, arch.key())
        assert count_params(static) == builder_params(arch)
        assert static.arch == arch
        if i == 2:  # the check is sensitive: one block's width alone moves the outputs far more than TOL
            ratios = (0.5 if arch.channel_ratio[0] != 0.5 else 1.0,) + arch.channel_ratio[1:]
            with torch.no_grad():
                assert max_diff(out, sn(x, arch.replace(channel_ratio=ratios))) > 100 * TOL

        if i % 4 == 0:  # recalibrate subnet and extracted network alike: same statistics, same outputs
            sn.set_active(arch)
            recalibrate_bn(sn, calib)
            recalibrate_bn(static, calib)
            sub_bns = bn_modules(sn)
            for key, bn in bn_modules(static).items():
                c = bn.num_features
                assert torch.allclose(sub_bns[key].running_mean[:c], bn.running_mean, atol=1e-5, rtol=1e-5), key
                assert torch.allclose(sub_bns[key].running_var[:c], bn.running_var, atol=1e-5, rtol=1e-4), key
            with torch.no_grad():
                out = sn(x)
                assert max_diff(out, static(x)) <= TOL
                if i == 0:  # extraction carries the recalibrated statistics
                    assert max_diff(out, sn.extract(arch)(x)) <= TOL


@pytest.mark.parametrize("name", SPACES)
def test_largest_arch_is_the_full_supernet(name):
    sn = supernet_of(name).eval()
    largest = sn.space.largest()
    static = build_model(largest, NUM_CLASSES).eval()
    static.load_state_dict(sn.state_dict())  # strict: same keys, same shapes, nothing sliced
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_diff(sn(x, largest), static(x)) <= TOL


@pytest.mark.parametrize("name", SPACES)
def test_every_space_trains_a_step_on_its_subnets(name):
    """A fresh supernet of each space: forward and backward through its largest, smallest and
    a random subnet at 64 px; every weight the largest uses gets a finite gradient."""
    space = load_space(name)
    torch.manual_seed(0)
    sn = Supernet(space, NUM_CLASSES).train()
    x = torch.rand(2, 3, 64, 64)
    for arch in (space.largest(), space.smallest(), space.sample(random.Random(0))):
        sn.zero_grad(set_to_none=True)
        outs = sn(x, arch)
        assert [o.shape[-1] for o in outs] == [-(-64 // s) for s in sn.strides]
        sum(o.square().mean() for o in outs).backward()
        grads = [p.grad for p in sn.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        if arch == space.largest():
            assert len(grads) == len(list(sn.parameters()))


def test_every_quickstart_input_size():
    sn = supernet_of("quickstart").eval()
    space = sn.space
    rng = random.Random(5)
    for size in space.input_sizes:
        arch = space.sample(rng).replace(input_size=size)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            out = sn(x, arch)
            assert max_diff(out, sn.extract(arch)(x)) <= TOL
        assert [o.shape[-1] for o in out] == [-(-size // s) for s in sn.strides]
        cls, reg, priors = sn.flatten(out)
        assert cls.shape[-1] == NUM_CLASSES and reg.shape[-1] == 4 * (sn.reg_max + 1)
        assert priors.shape[0] == cls.shape[1]


def test_moving_the_supernet_keeps_the_active_slices():
    """`.to(...)` rebuilds the cached index tensors of the split channel sets with the weights."""
    sn = copy.deepcopy(supernet_of("quickstart")).eval()
    arch = sn.space.smallest()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = sn(x, arch)
        sn.to(torch.float64)
        out64 = sn(x.double())
    assert sn.arch == arch and all(o.dtype == torch.float64 for o in out64)
    assert max_diff(out, [o.float() for o in out64]) <= 1e-4


def test_arch_outside_the_space_is_rejected():
    sn = supernet_of("quickstart")
    arch = sn.space.largest()
    with pytest.raises(SpaceError):
        sn.set_active(arch.replace(neck_channels=128))
    with pytest.raises(SpaceError):
        sn.load_checkpoint_state(sn.state_dict(), {"space": {"fingerprint": "0" * 16}}, "x.pt")
    sn.load_checkpoint_state(sn.state_dict(), sn.checkpoint_meta(), "x.pt")


# ---- sampling ------------------------------------------------------------------------------
def test_sampling_is_a_function_of_seed_and_step():
    space = load_space("picodet_s_joint")
    for strategy in ("uniform", "sandwich"):
        a, b = SubnetSampler(space, strategy, seed=3), SubnetSampler(space, strategy, seed=3)
        assert [a.archs_for_step(s) for s in range(10)] == [b.archs_for_step(s) for s in range(10)]
        assert a.archs_for_step(5) == a.archs_for_step(5)
        assert len({tuple(a.archs_for_step(s)) for s in range(10)}) == 10
        assert a.archs_for_step(1) != SubnetSampler(space, strategy, seed=4).archs_for_step(1)
    uniform = SubnetSampler(space, "uniform", seed=0).archs_for_step(0)
    assert len(uniform) == 1 and space.contains(uniform[0])
    sandwich = SubnetSampler(space, "sandwich", seed=0, num_random=3).archs_for_step(0)
    assert len(sandwich) == 5
    assert sandwich[0] == space.largest() and sandwich[1] == space.smallest()
    assert all(space.contains(arch) for arch in sandwich)
    with pytest.raises(ValueError):
        SubnetSampler(space, "greedy")


def test_alternating_spreads_the_sandwich_over_steps():
    """One subnet per step; a cycle of 2 + num_random steps: largest, smallest, random ones."""
    space = load_space("picodet_s_joint")
    alt = SubnetSampler(space, "alternating", seed=1, num_random=2)
    steps = [alt.archs_for_step(s) for s in range(12)]
    assert all(len(archs) == 1 for archs in steps)
    for s, (arch,) in enumerate(steps):
        phase = s % 4
        if phase == 0:
            assert arch == space.largest()
        elif phase == 1:
            assert arch == space.smallest()
        else:
            assert space.contains(arch)
    randoms = [steps[s][0] for s in range(12) if s % 4 >= 2]
    assert len(set(randoms)) == len(randoms)
    assert steps == [SubnetSampler(space, "alternating", seed=1, num_random=2).archs_for_step(s) for s in range(12)]
    only_ends = SubnetSampler(space, "alternating", num_random=0)
    assert [only_ends.archs_for_step(s)[0] for s in range(4)] == [space.largest(), space.smallest()] * 2


def test_correlated_keeps_uniform_marginals_and_moves_genes_together():
    """Every gene's choices are drawn equally often whatever the correlation (chi-square on 3000
    fixed-seed draws); genes agree with each other more as the correlation grows; correlation 1
    puts every gene at the step's level, so each step's subnet is one of the level networks."""
    from scipy.stats import chisquare
    space = load_space("quickstart")
    genes = space.genes

    def draws(rho: float, n: int) -> list[tuple]:
        sampler = SubnetSampler(space, "correlated", seed=5, correlation=rho)
        out = [space.encode(sampler.archs_for_step(s)[0]) for s in range(n)]
        assert all(len(sampler.archs_for_step(s)) == 1 for s in range(3))
        return out

    def agreement(genomes: list[tuple]) -> float:
        """How often two 3-choice genes of one subnet take the same index (1/3 when independent)."""
        three = [i for i, g in enumerate(genes) if len(g.choices) == 3]
        same = [genes[i].choices.index(gen[i]) == genes[j].choices.index(gen[j])
                for gen in genomes for i, j in zip(three, three[1:])]
        return sum(same) / len(same)

    for rho in (0.0, 0.5, 0.8):
        genomes = draws(rho, 3000)
        for i, gene in enumerate(genes):
            counts = [sum(g[i] == c for g in genomes) for c in gene.choices]
            assert chisquare(counts).pvalue > 1e-4, (rho, gene.name, counts)
        expected = 1 / 3 + rho ** 2 * 2 / 3  # same level with prob rho^2, else independent
        assert abs(agreement(genomes) - expected) < 0.03, rho
    levels = {tuple(space.encode(a)) for a in (space.smallest(), space.largest())}
    full = draws(1.0, 200)
    assert levels <= set(full) and len(set(full)) <= 4  # q in [0,1/3), [1/3,1/2), [1/2,2/3), [2/3,1)
    a, b = SubnetSampler(space, "correlated", seed=2), SubnetSampler(space, "correlated", seed=2)
    assert [a.archs_for_step(s) for s in range(10)] == [b.archs_for_step(s) for s in range(10)]
    with pytest.raises(ValueError):
        SubnetSampler(space, "correlated", correlation=1.5)


def test_correlation_is_refused_for_other_strategies(tmp_path):
    from picodet_nas.errors import UserError
    from supernet.train import _supernet_options
    assert _supernet_options({"strategy": "correlated", "correlation": 0.8})["correlation"] == 0.8
    assert _supernet_options({"strategy": "uniform"})["correlation"] == 0.5
    with pytest.raises(UserError, match="--correlation is for --strategy correlated"):
        _supernet_options({"strategy": "uniform", "correlation": 0.8})
    with pytest.raises(UserError, match=r"--correlation must be a number in \[0, 1\]"):
        _supernet_options({"strategy": "correlated", "correlation": 2})


def test_cli_offers_every_sampling_strategy():
    """The command line lists its --strategy choices literally (it must not import `supernet` at
    module level); they must be the sampler's, no more and no fewer."""
    from picodet_nas.cli.main import build_parser
    from supernet.sampling import STRATEGIES
    parser = build_parser()
    for rule in STRATEGIES:
        assert parser.parse_args(["train-supernet", "--strategy", rule]).strategy == rule
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["train-supernet", "--strategy", "greedy"])
    assert refused.value.code == 2


# ---- BN recalibration ----------------------------------------------------------------------
def exact_bn_stats(model: nn.Module, batches: list[torch.Tensor], mode: str = "eval"
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """By hand, every BN's input statistics per channel. mode="eval": one training-mode pass over
    all images as a single batch (each BN then normalises with exactly the statistics of its whole
    input, as eval mode will with the recalibrated ones), population variance. mode="train": each
    batch in training mode, inputs pooled over the batches, unbiased variance."""
    model = copy.deepcopy(model).train()
    seen: dict[str, list[torch.Tensor]] = {}
    for name, bn in bn_modules(model).items():
        bn.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, []).append(args[0].double()))
    with torch.no_grad():
        for batch in ([torch.cat(batches)] if mode == "eval" else batches):
            model(batch)
    stats = {}
    for name, xs in seen.items():
        flat = torch.cat([x.transpose(0, 1).reshape(x.shape[1], -1) for x in xs], dim=1)
        stats[name] = (flat.mean(1), flat.var(1, unbiased=mode == "train"))
    return stats


def check_exact_stats(model, expected, before):
    for name, bn in bn_modules(model).items():
        if name not in expected:  # not part of the subnet: untouched
            assert torch.equal(bn.running_mean, before[name][0]) and torch.equal(bn.running_var, before[name][1])
            continue
        mean, var = expected[name]
        c = mean.numel()
        assert torch.allclose(bn.running_mean[:c].double(), mean, atol=1e-5, rtol=1e-5), name
        assert torch.allclose(bn.running_var[:c].double(), var, atol=1e-5, rtol=1e-4), name
        assert torch.equal(bn.running_mean[c:], before[name][0][c:]), name  # inactive channels untouched
        assert torch.equal(bn.running_var[c:], before[name][1][c:]), name


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_recalibration_sets_exact_statistics(mode):
    sn = copy.deepcopy(supernet_of("quickstart")).eval()
    arch = sn.space.smallest().replace(head_convs=1, kernel_size=(5,) * 13)
    sn.set_active(arch)
    batches = images(seed=11, sizes=(3, 2, 3))  # 8 images, uneven batches
    used = [batches[0], batches[1], batches[2][:2]]  # num_images=7 cuts the last batch
    expected = exact_bn_stats(sn, used, mode)
    assert len(expected) < len(bn_modules(sn))  # the subnet leaves BNs out (head depth 1 of 2)
    before = {k: (bn.running_mean.clone(), bn.running_var.clone()) for k, bn in bn_modules(sn).items()}
    tracked = {k: bn.num_batches_tracked.clone() for k, bn in bn_modules(sn).items()}
    assert recalibrate_bn(sn, batches, num_images=7, mode=mode) == 7
    check_exact_stats(sn, expected, before)
    assert not any(m.training for m in sn.modules())
    assert all(bn.momentum == 0.1 and torch.equal(bn.num_batches_tracked, tracked[k])
               for k, bn in bn_modules(sn).items())

    static = randomize_(sn.extract(arch), seed=9)  # fresh statistics: recalibration must overwrite them
    expected = exact_bn_stats(static, used, mode)
    before = {k: (bn.running_mean.clone(), bn.running_var.clone()) for k, bn in bn_modules(static).items()}
    assert recalibrate_bn(static, batches, num_images=7, mode=mode) == 7
    check_exact_stats(static, expected, before)


def test_eval_recalibration_does_not_depend_on_batching():
    """One pass over all images, the BN-by-BN passes over batches of 1, 3 or 4: the same statistics;
    and eval mode on the calibration images then reproduces a training-mode pass over all of them."""
    static = randomize_(supernet_of("quickstart").extract(supernet_of("quickstart").space.largest()), seed=3)
    x = torch.cat(images(seed=5, sizes=(8,)))
    results = []
    for split, max_pixels in ((8, None), (1, 1), (3, 1), (4, 1)):
        model = copy.deepcopy(static)
        kwargs = {} if max_pixels is None else {"max_pass_pixels": max_pixels}
        assert recalibrate_bn(model, list(x.split(split)), **kwargs) == 8
        results.append(model)
    ref = bn_modules(results[0])
    for model in results[1:]:
        for key, bn in bn_modules(model).items():
            assert torch.allclose(bn.running_mean, ref[key].running_mean, atol=1e-5, rtol=1e-5), key
            assert torch.allclose(bn.running_var, ref[key].running_var, atol=1e-5, rtol=1e-4), key
    with torch.no_grad():
        evaluated = results[0].eval()(x)
        trained = copy.deepcopy(static).train()(x)
    assert max_diff(evaluated, trained) <= 1e-3


def test_recalibration_rejects_bad_input():
    sn = supernet_of("quickstart")
    arch = sn.space.smallest()
    sn.set_active(arch)
    assert recalibrate_bn(sn, images(seed=1, sizes=(2,), side=64)) == 2
    with pytest.raises(TypeError):
        recalibrate_bn(sn, [torch.zeros(2, 3, 64, 64, dtype=torch.uint8)])
    with pytest.raises(ValueError):
        recalibrate_bn(sn, [])


# ---- training: gradients stay on the active slices -----------------------------------------
def test_gradients_only_on_active_slices():
    sn = copy.deepcopy(supernet_of("quickstart")).train()
    rng = random.Random(2)
    arch = sn.space.sample(rng).replace(head_convs=1, neck_channels=32, channel_ratio=(0.5, 1.0) * 6 + (0.75,))
    static = sn.extract(arch)
    assert static.training

    # Which entry of each supernet parameter every static parameter entry comes from: extract a
    # copy of the supernet whose parameters hold their own flat indices.
    indexed = copy.deepcopy(sn)
    with torch.no_grad():
        for p in indexed.parameters():
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).view_as(p))
        indexed.set_active(arch)
        origin = {k: v.long() for k, v in indexed.active_state_dict().items()}

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i)) for i, o in
               enumerate(static(x))]
    for model in (sn, static):
        sum((o * w).sum() for o, w in zip(model(x, arch) if model is sn else model(x), weights)).backward()

    static_params = dict(static.named_parameters())
    for key, p in sn.named_parameters():
        if key not in static_params:  # a tower repeat beyond the subnet's depth
            assert p.grad is None, key
            continue
        flat = p.grad.flatten()
        idx = origin[key].flatten()
        assert torch.allclose(flat[idx], static_params[key].grad.flatten(), atol=1e-5, rtol=1e-4), key
        inactive = torch.ones_like(flat, dtype=torch.bool)
        inactive[idx] = False
        assert torch.all(flat[inactive] == 0), key


def test_one_training_step_in_the_supernet_equals_the_extracted_network():
    """The real loss (SimOTA, VFL + GIoU + DFL) on a batch with boxes, in training mode (batch
    statistics): a subnet run inside the supernet and its extracted static network give the same
    loss, the same gradient on every shared weight and the same updated BN running statistics."""
    from picodet_nas.losses import PicoDetLoss
    from picodet_nas.models.detector import flatten_outputs

    sn = copy.deepcopy(supernet_of("quickstart")).train()
    arch = sn.space.sample(random.Random(5)).replace(head_convs=1, neck_channels=32)
    size = arch.input_size
    static = sn.extract(arch).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, size, size, generator=g)
    boxes = [torch.tensor([[10.0, 12.0, 70.0, 90.0], [100.0, 40.0, 150.0, 120.0]]),
             torch.tensor([[30.0, 30.0, 60.0, 64.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    loss_fn = PicoDetLoss(NUM_CLASSES)
    losses = {}
    for name, model in (("supernet", sn), ("static", static)):
        outs = model(x, arch) if model is sn else model(x)
        loss, parts = loss_fn(*flatten_outputs(outs, NUM_CLASSES), boxes, labels)
        loss.backward()
        losses[name] = (loss.item(), parts["num_pos"])
    assert losses["supernet"][1] == losses["static"][1] > 0
    assert losses["supernet"][0] == pytest.approx(losses["static"][0], rel=1e-5, abs=1e-6)

    sn.set_active(arch)
    sliced_grads = _active_grads(sn)
    static_params = dict(static.named_parameters())
    assert set(sliced_grads) == set(static_params)
    for key, grad in sliced_grads.items():
        assert torch.allclose(grad, static_params[key].grad, atol=1e-5, rtol=1e-4), key
    active = sn.active_state_dict()
    for key, value in static.state_dict().items():
        if "running_" in key:
            assert torch.allclose(active[key], value, atol=1e-5, rtol=1e-4), key


def _active_grads(sn: Supernet) -> dict[str, torch.Tensor]:
    """The gradients of the active subnet, sliced as `active_state_dict` slices the weights: extract
    a copy of the supernet whose parameters hold their gradients."""
    holder = copy.deepcopy(sn)
    with torch.no_grad():
        for (name, p), (_, q) in zip(holder.named_parameters(), sn.named_parameters()):
            p.copy_(q.grad if q.grad is not None else torch.zeros_like(q))
    state = holder.active_state_dict()
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


# ---- per-depth head parts -----------------------------------------------------------------
@pytest.mark.parametrize("per_depth", ["outputs", "all"])
def test_per_depth_head_extract_embed_and_reload(per_depth):
    """With `per_depth`, each head depth runs parts of its own: a subnet's extracted network
    equals the supernet's run of it, its head weights come from its depth's parts, a subnet's
    weights embedded into the supernet come back out exactly and leave the other depth's parts
    alone, and a saved state dict rebuilds the same tree (`Supernet.for_state`)."""
    from supernet.inherit import embed_weights

    space = load_space("quickstart")
    sn = plausible_bn_stats_(randomize_(Supernet(space, NUM_CLASSES, per_depth=per_depth), 7), 7)
    assert Supernet.for_state(space, NUM_CLASSES, sn.state_dict()).per_depth == per_depth
    assert Supernet.for_state(space, NUM_CLASSES, supernet_of("quickstart").state_dict()).per_depth == "none"
    fresh = Supernet(space, NUM_CLASSES, per_depth=per_depth).state_dict()  # depth 1's parts: copies
    copied = {k: f"head.{k.split('.')[1][len('shallow_'):]}.{k.split('.', 3)[3]}" for k in fresh
              if k.startswith("head.shallow_") and k.split(".")[2] == "1"}
    assert len(copied) == (4 * 2 + 4 * 2 * 6 if per_depth == "all" else 4 * 2)  # 4 levels: conv/bias, ConvBN x 2
    assert all(torch.equal(fresh[k], fresh[source]) for k, source in copied.items())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    shallow, deep = space.smallest().replace(neck_channels=48), space.largest().replace(neck_channels=48)
    with torch.no_grad():
        heads = {}
        for arch in (shallow, deep):
            extracted = sn.extract(arch).eval()
            assert max_diff(sn(x, arch), extracted(x)) < TOL
            heads[arch.head_convs] = {k: v for k, v in extracted.state_dict().items() if k.startswith("head.")}
    assert torch.equal(heads[1]["head.outputs.0.weight"], sn.head.shallow_outputs[1][0].weight[:, :48])
    assert torch.equal(heads[2]["head.outputs.0.weight"], sn.head.outputs[0].weight[:, :48])
    tower = sn.head.shallow_towers[1][0][1].conv.weight if per_depth == "all" else sn.head.towers[0][1].conv.weight
    assert torch.equal(heads[1]["head.towers.0.1.conv.weight"], tower[:48, :48])
    state = randomize_(build_model(shallow, NUM_CLASSES), 11).state_dict()
    embed_weights(sn, shallow, state)
    back = sn.extract(shallow).state_dict()
    assert all(torch.equal(back[k], v) for k, v in state.items() if v.is_floating_point())
    after = {k: v for k, v in sn.extract(deep).state_dict().items() if k.startswith("head.")}
    assert torch.equal(after["head.outputs.0.weight"], heads[2]["head.outputs.0.weight"])  # the full depth's own
    if per_depth == "all":
        assert all(torch.equal(after[k], heads[2][k]) for k in heads[2])
    reloaded = Supernet.for_state(space, NUM_CLASSES, sn.state_dict())
    reloaded.load_state_dict(sn.state_dict())
    assert torch.equal(reloaded.extract(shallow).state_dict()["head.outputs.1.bias"], state["head.outputs.1.bias"])
