"""Portrait renders of a cropped subject pasted back into the full-resolution source video.

``prepare`` cut one fixed square (``subject.json`` ``crop``) out of a larger source and scaled it to the
working size. ``--portrait`` output is then put back into the source frame it came from
(``synctalk.compose.paste_into_source``: scaled to the crop side, feathered seams). The source frames the
walk needs are decoded once and held JPEG-compressed (quality 95) in memory: a 1080p frame is ~6 MB raw
but ~0.3 MB as JPEG, and only pixels outside the pasted crop come from it.

Subject frame t is source frame t only when ``prepare`` did not resample the frame rate; otherwise (or
when the source video is gone) the render stays at the working size, with a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synctalk.compose.portrait import SourceCrop, paste_into_source
from synctalk.log import get_logger, progress

log = get_logger("render.fullres")

JPEG_QUALITY = 95


class FullResPaster:
    def __init__(self, crop: SourceCrop, frames: dict[int, bytes]) -> None:
        self.crop, self.frames = crop, frames

    @staticmethod
    def for_subject(manifest: dict, n_frames: int, ids: np.ndarray) -> "FullResPaster | None":
        """None when the subject is not cropped or its source cannot be mapped frame by frame."""
        import cv2

        from synctalk.io.video import iter_frames

        crop_info = manifest.get("crop")
        if not crop_info:
            return None
        source = manifest.get("source", {})
        path = Path(str(source.get("path", "")))
        same_rate = abs(float(source.get("fps", 0)) - float(manifest.get("fps", 25))) < 1e-3 and not source.get("vfr")
        if not path.is_file() or not same_rate or int(source.get("n_frames", 0)) < n_frames:
            log.warning("portrait output stays at the working size: the source video %s is %s", path,
                        "missing" if not path.is_file() else "resampled by prepare (frame rate differs)")
            return None
        crop = SourceCrop.from_dict(crop_info)
        wanted = set(int(i) for i in np.unique(ids))
        stop = max(wanted) + 1
        frames: dict[int, bytes] = {}
        for i, frame in enumerate(progress(iter_frames(path, 0, stop), desc="read source", total=stop, unit="frame")):
            if i in wanted:
                ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if ok:
                    frames[i] = data.tobytes()
        if len(frames) != len(wanted):
            log.warning("portrait output stays at the working size: %s has fewer frames than the subject", path)
            return None
        return FullResPaster(crop, frames)

    def __call__(self, frame_id: int, working_frame: np.ndarray) -> np.ndarray:
        import cv2

        source = cv2.imdecode(np.frombuffer(self.frames[int(frame_id)], np.uint8), cv2.IMREAD_COLOR)
        source = cv2.cvtColor(source, cv2.COLOR_BGR2RGB)
        out = paste_into_source(working_frame, source, self.crop)
        if out.shape[0] % 2 or out.shape[1] % 2:  # H.264 yuv420p needs even sizes
            out = out[: out.shape[0] // 2 * 2, : out.shape[1] // 2 * 2]
        return out
