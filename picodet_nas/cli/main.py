"""`nas`: the command line. Thin: it parses flags and calls the library.

Every command lives in its own module exposing `register(subparsers)`; its handler is
imported lazily so that `nas --help` stays fast. Bad input (a `UserError`) becomes one
line on stderr and exit code 2. `--print-config`, where a command has it (`config.add_config_flags`),
prints the command's resolved configuration instead of running it.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError

COMMANDS = ("quickstart", "make-dataset", "train-supernet", "evolve", "retrain", "eval", "predict", "summary", "export",
            "profile-device", "import-paddle")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas",
        description="Hardware-aware one-shot NAS for PP-PicoDet detectors.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib

    for name in COMMANDS:
        importlib.import_module(f".cmd_{name.replace('-', '_')}", __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # onnxruntime writes a telemetry queue otherwise
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "print_config", False):
            sys.stdout.write(args.config_text(args))
            return 0
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"nas {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
