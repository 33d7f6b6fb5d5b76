"""Search spaces: every shipped space loads, round-trips, and malformed spaces are clear errors."""

import random

import pytest
import yaml

from picodet_nas.arch import PRESETS
from picodet_nas.errors import SpaceError
from picodet_nas.registry import list_spaces
from picodet_nas.space import SPACES_DIR, SearchSpace, load_space

SHIPPED = list_spaces()


def test_shipped_spaces_present():
    assert {"esnet_s", "esnet_m", "esnet_l", "picodet_s_joint", "picodet_m_joint", "picodet_l_joint",
            "quickstart"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_space_round_trip_and_landmarks(name):
    space = load_space(name)
    rng = random.Random(0)
    for _ in range(20):
        arch = space.sample(rng)
        assert space.decode(space.encode(arch)) == arch and space.contains(arch)
    big, small = space.largest(), space.smallest()
    assert all(r >= s for r, s in zip(big.channel_ratio, small.channel_ratio))
    assert big.neck_channels >= small.neck_channels and big.input_size >= small.input_size
    assert len(list(space.uniform_archs())) == len(space.choices.get("channel_ratio", (None,)))


def test_paper_spaces_hold_the_presets():
    assert load_space("esnet_s").contains(PRESETS["picodet-s"])
    assert load_space("esnet_m").contains(PRESETS["picodet-m"])
    assert load_space("esnet_l").contains(PRESETS["picodet-l"].replace(input_size=416))
    assert not load_space("esnet_s").contains(PRESETS["picodet-m"])


def test_joint_space_has_every_dimension():
    space = load_space("picodet_s_joint")
    assert set(space.choices) == {"channel_ratio", "kernel_size", "neck_channels", "head_convs", "input_size"}
    assert len(space.genes) == 13 + 13 + 3
    assert space.input_sizes == (256, 288, 320, 352, 416)


def test_fingerprint_is_stable_and_content_based(tmp_path):
    doc = yaml.safe_load((SPACES_DIR / "esnet_s.yaml").read_text())
    a = SearchSpace.from_dict(doc)
    b = SearchSpace.from_dict({**doc, "name": "renamed", "description": "other words"})
    assert a.fingerprint == b.fingerprint == load_space("esnet_s").fingerprint
    doc["choices"]["channel_ratio"] = [0.5, 1.0]
    assert SearchSpace.from_dict(doc).fingerprint != a.fingerprint


def _space_file(tmp_path, mutate):
    doc = yaml.safe_load((SPACES_DIR / "quickstart.yaml").read_text())
    mutate(doc)
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["choices"].update(depth=[1, 2]), "unknown dimension 'depth'"),
    (lambda d: d["choices"].update(channel_ratio=[0.5, 1.5]), "choice 1.5 of channel_ratio is out of range"),
    (lambda d: d["choices"].update(input_size=[100]), "choice 100 of input_size is out of range"),
    (lambda d: d.pop("base"), "missing field 'base'"),
    (lambda d: d["base"].pop("scale"), "missing key 'scale'"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d["choices"].update(head_convs=[]), "choices.head_convs must be a non-empty list"),
])
def test_malformed_space(tmp_path, mutate, needle):
    path = _space_file(tmp_path, mutate)
    with pytest.raises(SpaceError) as e:
        load_space(path)
    assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_space_name():
    with pytest.raises(SpaceError, match=r"unknown search space 'esnet_xl' \(did you mean 'esnet_l'\?\)"):
        load_space("esnet_xl")


def test_check_fingerprint():
    space = load_space("quickstart")
    space.check_fingerprint(space.fingerprint, "x")
    with pytest.raises(SpaceError, match="belongs to another search space"):
        space.check_fingerprint(load_space("esnet_s").fingerprint, "supernet.pt")
