"""The networks against the published PP-PicoDet table (picodet-architecture.md §6)."""

import random

import pytest
import torch

from picodet_nas.arch import PRESETS
from picodet_nas.models import build_model
from picodet_nas.registry import get_preset, list_presets
from picodet_nas.summary import count_params, summarize

from helpers import random_arch

# (preset, input) -> (params, FLOPs), README of the legacy models
PUBLISHED = {
    ("picodet-s", 320): (0.99e6, 0.73e9),
    ("picodet-s", 416): (0.99e6, 1.24e9),
    ("picodet-m", 416): (2.15e6, 2.50e9),
    ("picodet-l", 640): (3.30e6, 8.91e9),
}


@pytest.mark.parametrize("name, size", sorted(PUBLISHED))
def test_params_and_flops_match_published(name, size):
    params, flops = PUBLISHED[(name, size)]
    info = summarize(PRESETS[name].replace(input_size=size))
    assert abs(info["params"] / params - 1) <= 0.01
    assert abs(info["flops"] / flops - 1) <= 0.05
    assert info["input_size"] == size


def test_part_breakdown_matches_analytic_count():
    """Backbone / neck / head params of picodet-s, -m, -l (the spec's own count, §6.3)."""
    expected = {"picodet-s": (0.604, 0.250, 0.139), "picodet-m": (1.338, 0.435, 0.379),
                "picodet-l": (2.077, 0.672, 0.556)}
    for name, parts in expected.items():
        m = build_model(PRESETS[name])
        got = tuple(round(count_params(getattr(m, p)) / 1e6, 3) for p in ("backbone", "neck", "head"))
        assert got == parts


@pytest.mark.parametrize("size, grids, priors", [(320, (40, 20, 10, 5), 2125), (416, (52, 26, 13, 7), 3598)])
def test_output_shapes_and_priors(size, grids, priors):
    model = build_model(PRESETS["picodet-s"], num_classes=80).eval()
    with torch.no_grad():
        outs = model(torch.zeros(2, 3, size, size))
    assert [tuple(o.shape) for o in outs] == [(2, 80 + 32, g, g) for g in grids]
    cls, reg, pri = model.flatten(outs)
    assert cls.shape == (2, priors, 80) and reg.shape == (2, priors, 32) and pri.shape == (priors, 4)
    assert pri[0].tolist() == [4.0, 4.0, 8.0, 8.0]


def test_initialisation():
    model = build_model(PRESETS["picodet-s"])
    for out in model.head.outputs:
        assert torch.allclose(out.bias, torch.full_like(out.bias, -4.59512), atol=1e-4)
        assert out.weight.std().item() == pytest.approx(0.01, rel=0.2)
    conv = model.backbone.blocks[3].pw2.conv.weight  # Kaiming normal, fan_in
    assert conv.std().item() == pytest.approx((2.0 / conv[0].numel()) ** 0.5, rel=0.15)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_and_trains_a_step(name):
    """Every registered preset, at 128 px: its widths do not depend on the input size, so even
    the 640 px model needs no large input here."""
    torch.manual_seed(0)
    arch = get_preset(name)
    model = build_model(arch.replace(input_size=128), num_classes=3).train()
    outs = model(torch.rand(2, 3, 128, 128))
    assert [o.shape[-1] for o in outs] == [-(-128 // s) for s in (8, 16, 32, 64)]
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert count_params(model) == count_params(build_model(arch, num_classes=3))


def test_random_archs_forward_backward():
    rng = random.Random(0)
    for _ in range(5):
        arch = random_arch(rng, input_sizes=(64, 96, 128))
        model = build_model(arch, num_classes=3)
        outs = model(torch.rand(2, 3, arch.input_size, arch.input_size))
        sum(o.mean() for o in outs).backward()
        assert all(p.grad is not None for p in model.parameters())


def test_head_convs_zero_and_kernel_choices_change_params():
    base = PRESETS["picodet-s"]
    p0 = count_params(build_model(base.replace(head_convs=0)))
    p2 = count_params(build_model(base))
    assert p2 - p0 == 4 * 2 * (96 * 25 + 2 * 96 + 96 * 96 + 2 * 96)
    k5 = count_params(build_model(base.replace(kernel_size=(5,) * 13)))
    assert k5 > p2
