import random

import pytest

from picodet_nas.arch import PRESETS, Arch, load_arch_file, make_divisible, resolve_arch, save_arch
from picodet_nas.errors import ArchError

from helpers import random_arch

# picodet-architecture.md §1.5: mid widths of the released models
MID = {
    "picodet-s": (88, 48, 48, 96, 120, 96, 120, 96, 96, 96, 192, 192, 192),
    "picodet-m": (112, 64, 128, 160, 128, 192, 160, 160, 128, 160, 512, 320, 384),
    "picodet-l": (144, 80, 160, 200, 160, 240, 200, 200, 160, 200, 640, 400, 480),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_mid_widths(name):
    assert PRESETS[name].mid_channels == MID[name]


def test_stage_widths():
    assert PRESETS["picodet-s"].stage_out_channels == (96, 192, 384)
    assert PRESETS["picodet-m"].stage_out_channels == (128, 256, 512)
    assert PRESETS["picodet-l"].stage_out_channels == (160, 320, 640)


def test_make_divisible():
    assert make_divisible(84, 8) == 88  # 96 * 0.875: nearest multiple of 8
    assert make_divisible(100, 16) == 96
    assert make_divisible(3, 8) == 8  # never below the divisor
    assert make_divisible(10, 8) == 16  # rounding down to 8 would lose more than 10%
    assert make_divisible(128 * 0.75, 16) == 96


def test_yaml_round_trip(tmp_path):
    rng = random.Random(1)
    for _ in range(10):
        a = random_arch(rng)
        save_arch(a, tmp_path / "a.yaml", extra={"note": "x"})
        b, doc = load_arch_file(tmp_path / "a.yaml")
        assert a == b and a.key() == b.key() and doc["note"] == "x"


def test_arch_is_hashable_and_immutable():
    a = PRESETS["picodet-s"]
    assert {a: 1}[a.replace()] == 1
    with pytest.raises(Exception):
        a.scale = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("change, needle", [
    ({"channel_ratio": (0.5,) * 12}, "channel_ratio must have 13"),
    ({"channel_ratio": (1.5,) + (0.5,) * 12}, "channel_ratio[0] must be in (0, 1]"),
    ({"channel_ratio": (0.0,) + (0.5,) * 12}, "channel_ratio[0] must be in (0, 1]"),
    ({"kernel_size": (4,) * 13}, "kernel_size[0]"),
    ({"neck_channels": 50}, "neck_channels"),
    ({"input_size": 300}, "input_size"),
    ({"head_convs": -1}, "head_convs"),
])
def test_invalid_values(change, needle):
    with pytest.raises(ArchError, match=None) as e:
        PRESETS["picodet-s"].replace(**change)
    assert needle in str(e.value)


def test_unknown_key_and_missing_key():
    d = PRESETS["picodet-s"].to_dict()
    with pytest.raises(ArchError, match="unknown key 'widht'"):
        Arch.from_dict({**d, "widht": 1}, source="x.yaml")
    del d["scale"]
    with pytest.raises(ArchError, match="missing key 'scale'"):
        Arch.from_dict(d)


def test_resolve_arch():
    assert resolve_arch("picodet-m") == PRESETS["picodet-m"]
    assert resolve_arch("picodet-s", 416).input_size == 416
    with pytest.raises(ArchError, match="unknown architecture 'picodet-xl'"):
        resolve_arch("picodet-xl")
