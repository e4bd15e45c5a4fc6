"""`synctalk train`: reserved; implemented by its own issue (see docs/roadmap.md)."""

from __future__ import annotations

import argparse

from synctalk.errors import SyncTalkError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("subject", help="prepared subject directory")


def run(args: argparse.Namespace) -> int:
    raise SyncTalkError("'train' is not implemented yet in this version of synctalk")
