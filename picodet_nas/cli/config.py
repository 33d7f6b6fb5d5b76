"""Experiment files: one YAML shape that every command reads with `-c FILE`.

    seed: 0                 # shared keys, at the top: each command reads those it has a flag for
    space: quickstart       #   (seed: all; space: train-supernet, profile-device, quickstart;
    data: data/shapes       #    data: train-supernet, evolve, retrain; threads: quickstart)
    dataset:  {...}         # nas make-dataset (and the data nas quickstart generates)
    supernet: {...}         # nas train-supernet
    profile:  {...}         # nas profile-device
    budget:   {...}         # nas quickstart's latency budget (fraction, ms)
    evolve:   {...}         # nas evolve
    retrain:  {...}         # nas retrain

The keys of a section are the long flags of its command (`batch_size` or `batch-size` for
`--batch-size`), and a value is converted and checked by the flag's own parser (its type and
choices), so that a file and a command line cannot mean different things. Every reader checks
the whole file, other commands' sections included: an unknown key or a value of the wrong type
is one line naming the file, the section and the key (with the closest known key), exit code 2.
Flags given on the command line override the file; `null`, or a key left out, is the command's
default. A file without any section is the reading command's section (plus shared keys).

`--print-config` writes the resolved configuration (file, flags, defaults) in this shape; `-c`
reads it back to the same configuration.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError, did_you_mean
from ..utils.io import read_yaml

SECTIONS = ("dataset", "supernet", "profile", "budget", "evolve", "retrain")
SHARED = ("seed", "space", "data", "threads")
NOT_IN_FILES = frozenset({"help", "config", "print_config", "resume"})
HEADER = ("# The resolved configuration (config file, flags, defaults); `-c FILE` reads it back.\n"
          "# null: the command's default (for training options: the published recipe of the model).\n")
_SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


@dataclass(frozen=True)
class CommandSpec:
    """What one command reads from an experiment file: its section, the shared keys it has
    flags for, and for every option it takes from a file the flag (argparse action) that
    parses it and the default."""

    command: str
    section: str | None
    shared: tuple[str, ...]
    keys: Mapping[str, str]  # dest -> its key in the section (or at the top, when shared)
    defaults: Mapping[str, Any]
    actions: Mapping[str, argparse.Action]
    required: tuple[str, ...]

    def place(self, dest: str) -> str:
        """Where `dest` sits in a file: `data`, `retrain: epochs`."""
        return dest if dest in self.shared else f"{self.section}: {self.keys[dest]}"


def config_help(command: str, section: str | None, shared: tuple[str, ...]) -> str:
    reads = f"its {section}: section" if section else "every section"
    return (f"an experiment file (YAML): shared top-level keys and one section per command (see the README, "
            f"Configuration); nas {command} reads {reads} and the shared keys {', '.join(shared)}. A file "
            f"without sections is read as the {section or 'command'}'s section. Flags given on the command line "
            f"override it; an unknown key or a value of the wrong type is an error")


def add_config_flags(p: argparse.ArgumentParser, section: str | None, *, shared: tuple[str, ...] = (),
                     exclude: tuple[str, ...] = (), rename: Mapping[str, str] | None = None,
                     required: tuple[str, ...] = (), help: str | None = None) -> CommandSpec:
    """Give a command `-c/--config FILE` and `--print-config`; call it after every other flag.

    The options become readable from the file's `section` (`shared` ones from its top level;
    `exclude`d ones, and `resume`, stay flags only). Their argparse defaults move into the
    spec and become None, so that a flag given on the command line can be told from one left
    out; `required` options (and argparse-required ones) are checked after the file is merged.
    """
    command = p.prog.split()[-1]
    p.add_argument("-c", "--config", metavar="FILE", help=help or config_help(command, section, shared))
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration (the file, the flags given and the defaults) in the "
                        "experiment-file shape that -c reads back, and exit without running anything")
    keys, defaults, actions, needed = {}, {}, {}, list(required)
    for a in p._actions:
        if a.dest in NOT_IN_FILES or a.dest in exclude or a.dest == argparse.SUPPRESS:
            continue
        default = a.default
        if isinstance(default, str) and a.type is not None:
            default = a.type(default)  # as argparse converts a string default
        keys[a.dest] = (rename or {}).get(a.dest, a.dest)
        defaults[a.dest], actions[a.dest] = default, a
        a.default = None
        if a.required:
            a.required = False
            needed.append(a.dest)
    spec = CommandSpec(command, section, tuple(shared), keys, defaults, actions, tuple(needed))
    p.set_defaults(config_spec=spec, config_text=command_config_text)
    return spec


# ---- what every command's file may hold --------------------------------------------------
@dataclass(frozen=True)
class Catalog:
    shared: Mapping[str, argparse.Action]
    sections: Mapping[str, Mapping[str, argparse.Action]]  # section -> key -> action
    defaults: Mapping[str, Mapping[str, Any]]  # section -> key -> the owning command's default
    specs: Mapping[str, CommandSpec]  # command -> what it reads


@functools.lru_cache(maxsize=None)
def catalog() -> Catalog:
    """The keys of every section and the shared keys, from the commands' own parsers."""
    from .main import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    shared: dict[str, argparse.Action] = {}
    sections: dict[str, dict[str, argparse.Action]] = {}
    defaults: dict[str, dict[str, Any]] = {}
    specs: dict[str, CommandSpec] = {}
    for sub in subparsers.choices.values():
        spec = sub._defaults.get("config_spec")
        if spec is None:
            continue
        specs[spec.command] = spec
        for dest in spec.shared:
            shared.setdefault(dest, spec.actions[dest])
        if spec.section is not None:
            own = [d for d in spec.defaults if d not in spec.shared]
            sections[spec.section] = {spec.keys[d]: spec.actions[d] for d in own}
            defaults[spec.section] = {spec.keys[d]: spec.defaults[d] for d in own}
    return Catalog({k: shared[k] for k in SHARED if k in shared},
                   {s: sections.get(s, {}) for s in SECTIONS}, {s: defaults.get(s, {}) for s in SECTIONS}, specs)


# ---- reading and checking a file -----------------------------------------------------------
def _name(key: Any) -> str:
    return str(key).replace("-", "_")


def read_experiment(path: str | Path, reader: CommandSpec | None = None) -> dict[str, Any]:
    """The checked and converted document of an experiment file: shared keys and sections, key
    names with `_`. With `reader`, a file without any section is read as the reader's section."""
    path = Path(path)
    doc = read_yaml(path)
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping: shared keys ({', '.join(SHARED)}) and sections "
                        f"({', '.join(SECTIONS)})")
    cat = catalog()
    if reader is not None and reader.section and not _has_sections(doc, cat.sections[reader.section]):
        return _read_flat(path, doc, reader, cat)
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = _name(key)
        if name in cat.shared:
            out[name] = convert(value, cat.shared[name], f"{path}: {name}")
        elif name in SECTIONS:
            out[name] = _read_section(path, name, value, cat)
        else:
            raise UserError(f"{path}: unknown key {key!r}{did_you_mean(name, [*cat.shared, *SECTIONS])}")
    return out


def _has_sections(doc: Mapping[str, Any], own: Mapping[str, Any]) -> bool:
    """Whether a file has sections; `supernet: CKPT` in a flat file of `nas retrain` is its
    --supernet, not a section."""
    return any(_name(k) in SECTIONS and (_name(k) not in own or isinstance(v, dict)) for k, v in doc.items())


def _read_section(path: Path, section: str, value: Any, cat: Catalog) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: {section} must be a mapping of option: value, got {value!r}")
    keys = cat.sections[section]
    out = {}
    for option, v in value.items():
        name = _name(option)
        if name not in keys:
            if name in cat.shared:
                raise UserError(f"{path}: {section}: {name} is a shared key: write it at the top of the file, "
                                f"outside {section}:")
            raise UserError(f"{path}: {section}: unknown key {option!r}{did_you_mean(name, keys)}")
        out[name] = convert(v, keys[name], f"{path}: {section}: {name}")
    return out


def _read_flat(path: Path, doc: dict, reader: CommandSpec, cat: Catalog) -> dict[str, Any]:
    """A file of `option: value` for the reader's section: its shared keys first, then its own
    options (profile-device's `threads` is its own), then other commands' shared keys."""
    own = cat.sections[reader.section]
    out: dict[str, Any] = {}
    section: dict[str, Any] = {}
    for key, value in doc.items():
        name = _name(key)
        where = f"{path}: {name}"
        if name in reader.shared:
            out[name] = convert(value, cat.shared[name], where)
        elif name in own:
            section[name] = convert(value, own[name], where)
        elif name in cat.shared:
            out[name] = convert(value, cat.shared[name], where)
        else:
            raise UserError(f"{path}: unknown key {key!r}{did_you_mean(name, [*reader.shared, *own, *SECTIONS])}")
    out[reader.section] = section
    return out


def _what(action: argparse.Action) -> str:
    if isinstance(action, _SWITCHES):
        return "true or false"
    return {int: "an integer", float: "a number", None: "a string"}.get(action.type, "a valid value")


def convert(value: Any, action: argparse.Action, where: str) -> Any:
    """A file's value as its flag would have parsed it (`where` names it in errors); None stays
    None (the default). A list is a flag's several values, or the comma list of a flag that
    takes one (its metavar reads `X[,X...]`)."""
    if value is None:
        return None
    if isinstance(action, _SWITCHES):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        if not items and action.nargs == "+":
            raise UserError(f"{where} must be one value or a non-empty list")
        return [_scalar(v, action, where) for v in items]
    if isinstance(value, list) and "[," in str(action.metavar or ""):
        value = ",".join(str(v) for v in value)
    return _scalar(value, action, where)


def _scalar(value: Any, action: argparse.Action, where: str) -> Any:
    kind = action.type
    if isinstance(value, (list, dict, bool)):
        raise UserError(f"{where} must be {_what(action)}, got {value!r}")
    try:
        if kind is None:
            out = str(value)
        elif kind is int:
            if isinstance(value, float):
                raise ValueError
            out = int(value)
        elif kind is float:
            out = float(value)
        else:
            out = kind(str(value))
    except argparse.ArgumentTypeError as e:
        message = str(e)
        raise UserError(f"{where}{' ' if message.startswith('must') else ': '}{message}") from None
    except (TypeError, ValueError):
        raise UserError(f"{where} must be {_what(action)}, got {value!r}") from None
    if action.choices is not None and out not in action.choices:
        raise UserError(f"{where}: {out!r} is not one of {', '.join(map(str, action.choices))}")
    return out


# ---- a command's options: file, flags, defaults --------------------------------------------
def resolve(args: argparse.Namespace, *, check_required: bool = True) -> dict[str, Any]:
    """Every option of the command (by argparse dest): the flag when given, else the file's
    value (`-c`), else the default."""
    spec: CommandSpec = args.config_spec
    doc = read_experiment(args.config, spec) if args.config else {}
    section = doc.get(spec.section) or {}
    values: dict[str, Any] = {}
    for dest, default in spec.defaults.items():
        value = getattr(args, dest, None)
        if value is None:
            value = (doc if dest in spec.shared else section).get(spec.keys[dest])
        values[dest] = default if value is None else value
    if check_required:
        for dest in spec.required:
            if values.get(dest) is None:
                action = spec.actions[dest]
                flag = action.option_strings[-1] if action.option_strings else (action.metavar or dest).upper()
                raise UserError(f"{flag} is required (on the command line, or as `{spec.place(dest)}` in the -c "
                                "config file)")
    return values


def document(spec: CommandSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` in the experiment-file shape: the command's shared keys, then its section."""
    doc: dict[str, Any] = {d: values[d] for d in SHARED if d in spec.shared}
    if spec.section is not None:
        doc[spec.section] = {spec.keys[d]: values[d] for d in spec.defaults if d not in spec.shared}
    return doc


def dump(doc: Mapping[str, Any]) -> str:
    """An experiment document as YAML (tuples as lists), with a header saying what it is."""
    import yaml

    def plain(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return HEADER + yaml.safe_dump(plain(doc), sort_keys=False)


def command_config_text(args: argparse.Namespace) -> str:
    """`--print-config` of a command: what it would run with, as an experiment file."""
    return dump(document(args.config_spec, resolve(args, check_required=False)))
