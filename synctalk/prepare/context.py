"""What every prepare stage receives: the subject directory, the config and earlier stages' facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synctalk.prepare.config import PrepareConfig


@dataclass
class StageContext:
    root: Path                 # the subject directory being written
    source: Path               # the user's input video
    config: "PrepareConfig"
    # Facts published by earlier stages (merged from their records), e.g. n_frames, height, width,
    # fps, crop, focal. A stage reads what it needs and returns its own facts as a dict.
    facts: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.root / name

    def fact(self, key: str) -> Any:
        if key not in self.facts:
            raise KeyError(f"stage fact {key!r} is missing; an earlier stage did not publish it")
        return self.facts[key]
