"""Stage `landmarks`: mediapipe face mesh (478 points, tracking) + selfie person mask per frame.

One decode pass over frames.mp4. Per frame:
  * FaceMesh in tracking mode with one face (cheap: the detector only runs when tracking is lost);
  * the short-range face detector (~2 ms) to notice frames with several faces, on every
    ``detect_every``-th frame and on every frame while several faces are in view. Only on those frames
    a static multi-face mesh runs and the largest face wins, so a bystander never steals the track;
  * SelfieSegmentation -> person mask 0/255.

Every frame keeps its own row (the original dropped face-less frames and silently shifted every later
pose by one). Short gaps are interpolated linearly; long or frequent gaps stop the run with the frame
ranges, because a head model trained on guessed landmarks is worse than a clear error.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from synctalk import subject as S
from synctalk.errors import InputError, StageError
from synctalk.io.atomic import save_npz
from synctalk.io.video import iter_frames
from synctalk.log import get_logger, progress
from synctalk.prepare.context import StageContext
from synctalk.prepare.maskcodec import MaskWriter
from synctalk.prepare.mesh_topology import N_POINTS

log = get_logger("prepare.landmarks")

# Landmarks are stored by synctalk.subject.encode_landmarks: 1/32-px int16 frame-to-frame deltas
# (2.7 MiB for the 71-s anchor instead of 8.8 MiB as float32).


@dataclass(frozen=True)
class LandmarkConfig:
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    max_gap_frames: int = 12          # longest run of face-less frames that is interpolated
    max_missing_fraction: float = 0.05  # refuse the video above this fraction of face-less frames
    max_faces: int = 4                # faces meshed on frames where the detector sees more than one
    person_threshold: float = 0.5     # selfie segmentation probability above which a pixel is "person"
    detect_every: int = 5             # look for extra faces every k-th frame (every frame while there are some)


def _mesh_to_pixels(face_landmarks: Any, width: int, height: int) -> np.ndarray:
    """mediapipe normalised landmarks -> [478,3] float32 pixels (z scaled by width, as mediapipe's x)."""
    pts = np.array([(p.x, p.y, p.z) for p in face_landmarks.landmark], dtype=np.float32)
    if pts.shape[0] != N_POINTS:
        raise StageError(f"face mesh returned {pts.shape[0]} points, expected {N_POINTS} (refine_landmarks)")
    pts[:, 0] *= width
    pts[:, 1] *= height
    pts[:, 2] *= width
    return pts


def _face_area(pts: np.ndarray) -> float:
    span = pts[:, :2].max(axis=0) - pts[:, :2].min(axis=0)
    return float(span[0] * span[1])


def missing_runs(detected: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive [first, last] frame ranges where ``detected`` is False."""
    missing = np.concatenate([[False], ~np.asarray(detected, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(missing.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[0::2], edges[1::2])]


def _describe_runs(runs: list[tuple[int, int]], limit: int = 5) -> str:
    parts = [f"{a}-{b} ({b - a + 1} frames)" if b > a else f"{a} (1 frame)" for a, b in runs[:limit]]
    more = f" and {len(runs) - limit} more gaps" if len(runs) > limit else ""
    return ", ".join(parts) + more


def fill_gaps(lms: np.ndarray, detected: np.ndarray, max_gap_frames: int,
              max_missing_fraction: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Interpolate face-less frames in place of nothing: returns (filled copy, interpolated runs).

    Inside a gap each coordinate moves linearly between the neighbouring detected frames; a gap at the
    start or end holds the nearest detected frame. Raises InputError when the gaps are too long or too
    many to trust, naming the frame ranges so the user can cut them out.
    """
    detected = np.asarray(detected, dtype=bool)
    n = len(detected)
    runs = missing_runs(detected)
    if not detected.any():
        raise InputError(f"no face found in any of the {n} frames; the video must show one face throughout")
    n_missing = int(n - detected.sum())
    too_long = [r for r in runs if r[1] - r[0] + 1 > max_gap_frames]
    if too_long:
        raise InputError(
            f"no face in frames {_describe_runs(too_long)}; gaps longer than {max_gap_frames} frames cannot be "
            "interpolated - trim them from the video or raise landmarks.max_gap_frames")
    if n_missing > max_missing_fraction * n:
        raise InputError(
            f"no face in {n_missing} of {n} frames ({100 * n_missing / n:.1f}% > "
            f"{100 * max_missing_fraction:.1f}%): frames {_describe_runs(runs)}; use footage where the face "
            "is visible throughout")
    filled = lms.copy()
    if runs:
        good = np.flatnonzero(detected)
        flat = filled.reshape(n, -1)
        bad = np.flatnonzero(~detected)
        for k in range(flat.shape[1]):
            # np.interp holds the end values outside the detected range, which is what we want.
            flat[bad, k] = np.interp(bad, good, flat[good, k])
    return filled, runs


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Mute C++ stderr (TFLite/absl start-up chatter) while the graphs start; Python errors still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _FaceTracker:
    """The mediapipe graphs for one video, created once (each holds tracking state)."""

    def __init__(self, cfg: LandmarkConfig, height: int, width: int):
        try:
            import mediapipe as mp
        except ImportError as e:  # the GPU machine has no mediapipe; prepare runs on the CPU machine
            raise StageError(f"the landmarks stage needs mediapipe 0.10.21 ({e}); see scripts/setup.sh") from None
        with _native_stderr_silenced():
            self._start(mp.solutions, cfg)
            # The first frame through each graph prints the rest of the chatter; a blank frame finds
            # no face, so it leaves the tracker's state untouched.
            blank = np.zeros((height, width, 3), dtype=np.uint8)
            for graph in (self.mesh, self.multi_mesh, self.detector, self.selfie):
                graph.process(blank)
        # The meshes print one more warning on their first real face; stay muted until then.
        self._first_face_pending = {id(self.mesh), id(self.multi_mesh)}

    def _mesh(self, graph: Any, rgb: np.ndarray) -> list:
        if id(graph) not in self._first_face_pending:
            return graph.process(rgb).multi_face_landmarks or []
        with _native_stderr_silenced():
            faces = graph.process(rgb).multi_face_landmarks or []
        if faces:
            self._first_face_pending.discard(id(graph))
        return faces

    def _start(self, sol: Any, cfg: LandmarkConfig) -> None:
        self.mesh = sol.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=cfg.min_detection_confidence,
            min_tracking_confidence=cfg.min_tracking_confidence)
        self.multi_mesh = sol.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=cfg.max_faces, refine_landmarks=True,
            min_detection_confidence=cfg.min_detection_confidence)
        self.detector = sol.face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=cfg.min_detection_confidence)
        self.selfie = sol.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def close(self) -> None:
        for graph in (self.mesh, self.multi_mesh, self.detector, self.selfie):
            graph.close()

    def face(self, rgb: np.ndarray, look_for_others: bool) -> tuple[np.ndarray | None, int]:
        """(landmarks [478,3] of the largest face or None, number of faces seen in this frame).

        Without ``look_for_others`` only the tracked face is meshed and the count is 0 or 1."""
        h, w = rgb.shape[:2]
        tracked = self._mesh(self.mesh, rgb)
        detections = (self.detector.process(rgb).detections or []) if look_for_others else []
        n_faces = max(len(detections), 1 if tracked else 0)
        if len(detections) > 1:
            # The tracker follows whichever face it found first; mesh every face and keep the largest.
            faces = self._mesh(self.multi_mesh, rgb)
            n_faces = max(n_faces, len(faces))
            if faces:
                meshes = [_mesh_to_pixels(f, w, h) for f in faces]
                return max(meshes, key=_face_area), n_faces
        if tracked:
            return _mesh_to_pixels(tracked[0], w, h), n_faces
        return None, n_faces

    def person(self, rgb: np.ndarray, threshold: float) -> np.ndarray:
        prob = self.selfie.process(rgb).segmentation_mask
        return np.where(prob > threshold, np.uint8(255), np.uint8(0))


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: LandmarkConfig = ctx.config.landmarks
    n = int(ctx.fact("n_frames"))
    width, height = int(ctx.fact("width")), int(ctx.fact("height"))
    lms = np.zeros((n, N_POINTS, 3), dtype=np.float32)
    detected = np.zeros(n, dtype=bool)
    multi_face_frames = 0
    seg = MaskWriter(ctx.path(S.SEGMENTATION), height, width)
    tracker = _FaceTracker(cfg, height, width)
    # Selfie segmentation (+ mask compression) runs in a second thread beside the face mesh: both are
    # mediapipe graphs that release the GIL, so the pass uses two cores (measured 1.76x on 200 frames).
    seg_queue: queue.Queue = queue.Queue(maxsize=8)
    seg_error: list[BaseException] = []

    def segment_worker() -> None:
        while (rgb := seg_queue.get()) is not None:
            if not seg_error:
                try:
                    seg.add(tracker.person(rgb, cfg.person_threshold))
                except BaseException as e:  # reported on the main thread
                    seg_error.append(e)

    worker = threading.Thread(target=segment_worker, name="selfie-segmentation", daemon=True)
    worker.start()
    n_read = 0
    last_multi = False
    try:
        frames = iter_frames(ctx.path(S.FRAMES))
        for t, rgb in enumerate(progress(frames, "landmarks", total=n, unit="frame")):
            if t >= n:
                raise StageError(f"{S.FRAMES} has more frames than the {n} the decode stage reported")
            if rgb.shape[:2] != (height, width):
                raise StageError(f"{S.FRAMES} frame {t} is {rgb.shape[1]}x{rgb.shape[0]}, expected {width}x{height}")
            rgb = np.ascontiguousarray(rgb)
            rgb.flags.writeable = False  # lets mediapipe wrap the buffer instead of copying it
            look = t % max(cfg.detect_every, 1) == 0 or last_multi
            pts, n_faces = tracker.face(rgb, look)
            last_multi = n_faces > 1
            if pts is not None:
                lms[t] = pts
                detected[t] = True
            multi_face_frames += n_faces > 1
            seg_queue.put(rgb)
            if seg_error:
                raise seg_error[0]
            n_read = t + 1
    finally:
        seg_queue.put(None)
        worker.join()
        tracker.close()
    if seg_error:
        raise seg_error[0]
    if n_read != n:
        raise StageError(f"{S.FRAMES} has {n_read} frames, the decode stage reported {n}; re-run with --force")
    if multi_face_frames:
        log.warning("at least %d of %d frames show more than one face; the largest face was used", multi_face_frames, n)

    filled, runs = fill_gaps(lms, detected, cfg.max_gap_frames, cfg.max_missing_fraction)
    if runs:
        log.warning("no face in %d frames (%s); interpolated", int(n - detected.sum()), _describe_runs(runs))
    seg.close()
    save_npz(ctx.path(S.LANDMARKS), lms_delta=S.encode_landmarks(filled), detected=detected)
    return {"landmarks": {"detected": int(detected.sum()),
                          "interpolated_frames": [[a, b] for a, b in runs],
                          "multi_face_frames": int(multi_face_frames),
                          "av_offset": _footage_av_offset(ctx, filled)}}


def _footage_av_offset(ctx: StageContext, lms: np.ndarray) -> dict:
    """Is the footage itself in sync? The NeRF learns whatever offset its training video has and puts
    it into every render, so a visibly late or early track is worth a warning here (not a fix: a
    speaker whose lips lead their voice also measures a small offset)."""
    from synctalk.audio.av_sync import footage_offset
    from synctalk.audio.load import load_driving_audio

    if not ctx.path(S.AUDIO).is_file():
        return {"unavailable": f"no {S.AUDIO}"}
    try:
        wav = load_driving_audio(ctx.path(S.AUDIO), allow_silent=True)
    except InputError as e:
        return {"unavailable": str(e)}
    found = footage_offset(lms, wav)
    k = found.get("frames")
    if k is not None and abs(k) > 2:
        log.warning("the video's audio looks %d frames (%d ms) %s against the lips (r %.2f): the model will learn "
                    "that offset and every render will have it; if the video is out of sync, fix its audio and "
                    "re-run prepare (`synctalk sync-score VIDEO` measures it)", abs(k), 40 * abs(k),
                    "late" if k > 0 else "early", found["r"])
    return found
