"""`synctalk sync-score`: reserved; implemented by the audio issue."""

from __future__ import annotations

import argparse

from synctalk.errors import SyncTalkError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="a talking-head video")


def run(args: argparse.Namespace) -> int:
    raise SyncTalkError("'sync-score' is not implemented yet in this version of synctalk")
