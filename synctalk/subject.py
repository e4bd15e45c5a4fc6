"""The subject directory: the contract between `prepare` and every later stage.

docs/subject-format.md describes each file; this module is the single place that knows the file
names and reads them, so training/rendering code never guesses paths. Everything here must work with
numpy 1.x and 2.x and without mediapipe/PyAV (the GPU machine has neither by default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synctalk import SUBJECT_FORMAT_VERSION
from synctalk.errors import InputError

MANIFEST = "subject.json"
FRAMES = "frames.mp4"          # N frames, HxW, 25 fps, H.264, no audio
AUDIO = "audio.wav"            # 16 kHz mono PCM16, same duration as the frames
LANDMARKS = "landmarks.npz"    # [N,478,3] pixels, 1/32-px int16 time deltas (load_landmarks); detected [N]
PARSING = "parsing.npz"        # label map per frame (LABEL_* ids), maskcodec format (synctalk.prepare.maskcodec)
PORTRAIT = "portrait_mask.npz"  # hard face region per frame (0/255), maskcodec; Subject.portrait_masks() feathers it
SEGMENTATION = "segmentation.npz"  # selfie person mask per frame (0/255), maskcodec format
TORSO_ALPHA = "torso_alpha.npz"  # torso alpha per frame (0/255): neck + torso + inpainted neck, maskcodec
BACKGROUND = "background.png"  # clean plate, HxW RGB
TORSO = "torso.mp4"            # N frames: head removed, neck inpainted, over the background plate
EXPRESSIONS = "expressions.npz"  # exp [N,7] float32 in [0,1]; names [7]
POSE = "pose.npz"              # c2w [N,4,4] float32 (NeRF/OpenGL convention), intrinsics, raw poses
FIGURES = "figures"            # contact_sheet.png, pose_track.png
STAGE_DIR = ".stages"          # per-stage completion records used for resuming

# Parsing label ids (uint8). FACE is skin/eyes/brows/nose/lips inside the face oval (no hair, no ears).
LABEL_BACKGROUND = 0
LABEL_FACE = 1
LABEL_HAIR = 2
LABEL_NECK = 3
LABEL_TORSO = 4
LABEL_NAMES = {0: "background", 1: "face", 2: "hair", 3: "neck", 4: "torso"}
HEAD_LABELS = (LABEL_FACE, LABEL_HAIR)  # what the NeRF head model renders


def head_mask(labels: np.ndarray) -> np.ndarray:
    """Label map(s) -> bool mask of the head (HEAD_LABELS: face + hair), same shape."""
    return np.isin(labels, HEAD_LABELS)


EXPRESSION_NAMES = (
    "brow_down_left",
    "brow_down_right",
    "brow_inner_up",
    "brow_outer_up_left",
    "brow_outer_up_right",
    "eye_blink_left",
    "eye_blink_right",
)


# Landmarks are stored as int16 differences between consecutive frames in 1/32-px steps: lossless
# for the 1/32-px rounding (far below mediapipe's ~0.3 px frame-to-frame jitter) and half the size
# of compressed float32, which matters for carrying a subject to the GPU machine.
LANDMARK_STEPS_PER_PX = 32


def encode_landmarks(lms: np.ndarray) -> np.ndarray:
    """[N,P,3] float pixels -> int16 [N,P,3]: first frame, then frame-to-frame differences."""
    q = np.round(np.asarray(lms, dtype=np.float64) * LANDMARK_STEPS_PER_PX).astype(np.int64)
    delta = q.copy()
    delta[1:] -= q[:-1]
    if np.abs(delta).max(initial=0) > np.iinfo(np.int16).max:
        raise ValueError("landmarks jump by more than 1000 px between frames; cannot store them")
    return delta.astype(np.int16)


def decode_landmarks(delta: np.ndarray) -> np.ndarray:
    return (np.cumsum(delta.astype(np.int64), axis=0) / LANDMARK_STEPS_PER_PX).astype(np.float32)


def load_landmarks(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(lms float32 [N,478,3] pixels, detected bool [N]) from a subject's landmarks.npz."""
    with np.load(path, allow_pickle=False) as z:
        lms = decode_landmarks(z["lms_delta"]) if "lms_delta" in z.files else z["lms"].astype(np.float32)
        return lms, z["detected"].astype(bool)


@dataclass(frozen=True)
class Split:
    """Temporal split: frames [0, n_train) train, [n_train, n_frames) test (last 1/11, as the original)."""

    n_frames: int
    n_train: int

    @staticmethod
    def temporal(n_frames: int, test_denominator: int = 11) -> "Split":
        n_train = (n_frames * (test_denominator - 1)) // test_denominator
        return Split(n_frames=n_frames, n_train=n_train)

    @property
    def train(self) -> range:
        return range(0, self.n_train)

    @property
    def test(self) -> range:
        return range(self.n_train, self.n_frames)

    def to_json(self) -> dict[str, Any]:
        return {"train": [0, self.n_train], "test": [self.n_train, self.n_frames]}


class Subject:
    """Read-only view of a prepared subject directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise InputError(f"{self.root} is not a prepared subject (no {MANIFEST}); run `synctalk prepare` first")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not valid JSON ({e}); re-run `synctalk prepare --force`") from None
        version = self.manifest.get("format_version")
        if version != SUBJECT_FORMAT_VERSION:
            raise InputError(
                f"{self.root} was prepared with subject format {version}, this synctalk reads "
                f"{SUBJECT_FORMAT_VERSION}; re-run `synctalk prepare --force` on the source video"
            )

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def n_frames(self) -> int:
        return int(self.manifest["frames"])

    @property
    def fps(self) -> float:
        return float(self.manifest["fps"])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the working frames."""
        return int(self.manifest["height"]), int(self.manifest["width"])

    @property
    def split(self) -> Split:
        s = self.manifest["split"]
        return Split(n_frames=int(s["test"][1]), n_train=int(s["train"][1]))

    def load(self, name: str) -> dict[str, np.ndarray]:
        from synctalk.io.atomic import load_npz

        path = self.root / name
        if not path.is_file():
            raise InputError(f"{path} is missing; re-run `synctalk prepare` on this subject")
        return load_npz(path)

    def pose(self) -> dict[str, np.ndarray]:
        return self.load(POSE)

    def expressions(self) -> np.ndarray:
        return self.load(EXPRESSIONS)["exp"]

    def portrait_masks(self, start: int = 0, stop: int | None = None):
        """Yield the soft portrait paste-back masks (uint8 0..255) of frames [start, stop)."""
        from synctalk.prepare.maskcodec import MaskReader
        from synctalk.prepare.parsing import feather_mask

        feather = int(self.manifest["stages"]["parsing"]["settings"]["portrait_feather_px"])
        with MaskReader(self.root / PORTRAIT) as masks:
            for t in range(start, self.n_frames if stop is None else stop):
                yield feather_mask(masks[t], feather)

    def landmarks(self) -> np.ndarray:
        path = self.root / LANDMARKS
        if not path.is_file():
            raise InputError(f"{path} is missing; re-run `synctalk prepare` on this subject")
        return load_landmarks(path)[0]
