"""The registry of presets and search spaces: listing, lookup with did-you-mean errors,
registration. The sweeps over every entry live beside the code they check: building and a
training step (test_models, test_supernet), ONNX export (test_export), supernet against
extracted subnet (test_supernet), space round trips (test_space)."""

from __future__ import annotations

import pytest

from picodet_nas import arch as arch_module
from picodet_nas import space as space_module
from picodet_nas.arch import resolve_arch
from picodet_nas.errors import ArchError, SpaceError
from picodet_nas.registry import (PRESETS, Entry, entries, get_preset, get_space, list_presets, list_spaces,
                                  register_preset, register_space)
from picodet_nas.space import SPACES_DIR, SearchSpace


def test_listing_holds_every_preset_and_shipped_space():
    assert list_presets() == ["picodet-l", "picodet-m", "picodet-s"] == sorted(PRESETS)
    assert list_spaces() == sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    assert list_spaces("*_joint") == ["picodet_l_joint", "picodet_m_joint", "picodet_s_joint"]
    assert list_presets("picodet-[sm]") == ["picodet-m", "picodet-s"]
    everything = entries()
    assert [e.kind for e in everything] == ["preset"] * 3 + ["space"] * len(list_spaces())
    assert entries("space") == [Entry("space", n) for n in list_spaces()]
    assert str(Entry("preset", "picodet-s")) == "preset:picodet-s"
    assert Entry("preset", "picodet-s").load() == PRESETS["picodet-s"]
    assert isinstance(Entry("space", "quickstart").load(), SearchSpace)
    with pytest.raises(ValueError):
        entries("model")


@pytest.mark.parametrize("call, error, needle", [
    (lambda: get_preset("picodet-xs"), ArchError, "unknown preset 'picodet-xs' (did you mean 'picodet-s'?)"),
    (lambda: resolve_arch("picodet_m"), ArchError, "unknown architecture 'picodet_m' (did you mean 'picodet-m'?)"),
    (lambda: get_space("esnet_xs"), SpaceError, "unknown search space 'esnet_xs' (did you mean 'esnet_s'?)"),
    (lambda: get_space("quikstart"), SpaceError, "(did you mean 'quickstart'?)"),
    (lambda: get_preset("yolo"), ArchError, "unknown preset 'yolo' (known: picodet-l, picodet-m, picodet-s)"),
])
def test_unknown_names_name_the_closest_entry(call, error, needle):
    with pytest.raises(error) as e:
        call()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_registering_adds_an_entry_once(tmp_path, monkeypatch):
    monkeypatch.setattr(arch_module, "PRESETS", dict(PRESETS))
    monkeypatch.setattr(space_module, "_REGISTERED", {})
    tiny = arch_module.PRESETS["picodet-s"].replace(input_size=128)
    register_preset("picodet-s-128", tiny)
    assert get_preset("picodet-s-128") == tiny == resolve_arch("picodet-s-128")
    assert Entry("preset", "picodet-s-128") in entries()
    with pytest.raises(ArchError, match="already registered"):
        register_preset("picodet-s-128", tiny)
    with pytest.raises(TypeError):
        register_preset("other", {"scale": 1.0})

    path = tmp_path / "mine.yaml"
    path.write_text((SPACES_DIR / "quickstart.yaml").read_text().replace("name: quickstart", "name: mine"))
    register_space("mine", path)
    assert "mine" in list_spaces() and get_space("mine").name == "mine"
    with pytest.raises(SpaceError, match="already registered"):
        register_space("esnet_s", path)
