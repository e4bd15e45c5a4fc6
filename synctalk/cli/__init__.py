"""The `synctalk` command: one entry point, one module per subcommand.

Each subcommand lives in ``synctalk/cli/<name>_cmd.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; heavy imports happen inside ``run`` so ``synctalk --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from synctalk import __version__
from synctalk.errors import SyncTalkError

# (name, module, one-line help). Order is the order a user runs them in.
COMMANDS: list[tuple[str, str, str]] = [
    ("prepare", "synctalk.cli.prepare_cmd", "turn a talking-head video into a training-ready subject directory"),
    ("train", "synctalk.cli.train_cmd", "train the head, lips and torso models of a prepared subject"),
    ("render", "synctalk.cli.render_cmd", "render a trained subject speaking new audio to an mp4"),
    ("evaluate", "synctalk.cli.evaluate_cmd", "measure a trained subject on its test split"),
    ("run", "synctalk.cli.run_cmd", "one command: prepare, train and render a video speaking new audio"),
    ("sync-score", "synctalk.cli.sync_score_cmd", "offline lip-sync score of any talking video"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synctalk",
        description="SyncTalk talking heads, offline: prepare a video of one person, train their "
        "head model, render them saying new audio.",
    )
    parser.add_argument("--version", action="version", version=f"synctalk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from synctalk.log import setup_logging

    setup_logging(args.verbose)
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except SyncTalkError as e:
        print(f"synctalk {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"synctalk {args.command}: interrupted", file=sys.stderr)
        return 130
