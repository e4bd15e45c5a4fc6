"""Logging and progress bars shared by every stage.

Stages log through ``logging.getLogger("synctalk....")``; the CLI configures a rich handler once.
``progress`` wraps tqdm so long loops show a bar on a terminal and stay quiet in CI logs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_configured = False


def setup_logging(verbose: bool = False) -> None:
    global _configured
    level = logging.DEBUG if verbose else logging.INFO
    if _configured:
        logging.getLogger("synctalk").setLevel(level)
        return
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        fmt = "%(message)s"
    except ImportError:  # pragma: no cover - rich is a dependency
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("synctalk")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    _configured = True


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("synctalk") else f"synctalk.{name}")


def _bars_enabled() -> bool:
    if os.environ.get("SYNCTALK_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def progress(it: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm bar on a terminal; silent (no per-item output) when stderr is not a TTY."""
    from tqdm.auto import tqdm

    return iter(tqdm(it, desc=desc, total=total, unit=unit, disable=not _bars_enabled(),
                     dynamic_ncols=True, leave=False))
