"""A loaded subject + trained model, ready to render batches of frames in any compositing mode.

Modes (``RenderSession.render_batch``):
  head      head over the walked frame's ``torso.mp4`` (torso, inpainted neck, background plate)
  torso     head over the trained torso model over the background plate
  portrait  either of the above pasted into the walked source frame (synctalk.render.portrait)
Everything runs on the session's device; frames a render needs are decoded once, up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synctalk import subject as S
from synctalk.errors import InputError
from synctalk.log import get_logger, progress
from synctalk.nerf.trainer import resolve_device
from synctalk.render.engine import HeadRenderer
from synctalk.render.model import HeadModel, default_workspace, load_head_model
from synctalk.render.portrait import paste_back

log = get_logger("render.session")

DEFAULT_FEATHER_PX = 9
# Rays are marched only inside the walked frame's parsed head (face + hair) box grown by this share of
# its size (training used 0.15 for its in-box rays): room for a jaw that opens wider than in the source
# frame. None = the exact reference (every ray that meets an occupied cell).
HEAD_BOX_MARGIN = 0.25
# Samples per ray at render time. Training (and render_views.render_frame) caps at 16 occupied lattice
# points per ray. With audio from another frame the lip surface moves, and on the anchor baseline the
# 16 samples ran out in occupied space in front of it: blocky transparent holes above the upper lip
# (738 pixels with alpha < 0.9 in the lip band of frame 0 driven by frame 252's audio; 0 with 32 or 64
# samples, and 0 with 16 for the frame's own audio). 32 removes them; None = the training cap.
RENDER_MAX_SAMPLES = 32


@dataclass
class FrameBank:
    """uint8 frames of selected ids, on the device: ``rows[id]`` is the row in ``data``."""

    data: torch.Tensor
    rows: torch.Tensor   # [max_id + 1] long, -1 where not loaded

    def take(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.rows[ids]
        if bool((rows < 0).any()):
            raise RuntimeError("a frame was requested that was not loaded")
        return self.data.index_select(0, rows)


def _resize(frame: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    import cv2

    if frame.shape[:2] == size:
        return frame
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(frame, (size[1], size[0]), interpolation=interp)


class RenderSession:
    def __init__(self, subject_root: str | Path, workspace: str | Path | None = None, device: str = "auto",
                 torso: bool = False, portrait: bool = False, amp: bool = True,
                 head_box_margin: float | None = HEAD_BOX_MARGIN,
                 max_samples: int | None = RENDER_MAX_SAMPLES) -> None:
        self.subject = S.Subject(subject_root)
        self.device = resolve_device(device)
        self.workspace = Path(workspace) if workspace is not None else default_workspace(subject_root)
        self.model: HeadModel = load_head_model(self.workspace, self.device)
        sub_h, sub_w = self.subject.size
        h, w = self.model.size
        if sub_h % h or sub_w % w or sub_h // h != sub_w // w:
            raise InputError(f"the model was trained at {w}x{h}, which does not divide the subject's {sub_w}x{sub_h}; "
                             "was it trained on another subject?")
        self.downscale = sub_h // h
        self.size = (h, w)
        if self.model.n_frames > self.subject.n_frames:
            raise InputError(f"the model was trained on {self.model.n_frames} frames but the subject has "
                             f"{self.subject.n_frames}; was it trained on another subject?")
        pose = self.subject.pose()
        self.c2w_world = pose["c2w"].astype(np.float64)
        intrinsics = pose["intrinsics"].astype(np.float64).reshape(4) / self.downscale
        scene = self.model.scene
        self.c2w_nerf = self.c2w_world.copy()
        self.c2w_nerf[:, :3, 3] = scene.scale * (self.c2w_world[:, :3, 3] - np.asarray(scene.offset))
        self.c2w_nerf = self.c2w_nerf.astype(np.float32)
        self.expressions = self.subject.expressions().astype(np.float32)
        self.n_track = min(self.subject.split.n_train, self.model.n_frames)
        self.engine = HeadRenderer(self.model, torch.tensor(intrinsics), self.device, amp=amp, max_samples=max_samples)
        self.torso = None
        if torso:
            from synctalk.torso import load_torso

            self.torso = load_torso(self.workspace, self.device)
            if (self.torso.height, self.torso.width) != self.size:
                raise InputError(f"the torso model renders {self.torso.width}x{self.torso.height} but the head "
                                 f"model {w}x{h}; retrain the torso for this head")
        self.portrait = portrait
        settings = self.subject.manifest.get("stages", {}).get("parsing", {}).get("settings", {})
        self.feather_px = max(1, int(round(int(settings.get("portrait_feather_px", DEFAULT_FEATHER_PX))
                                            / self.downscale)))
        self.backgrounds: FrameBank | None = None
        self.sources: FrameBank | None = None
        self.faces: FrameBank | None = None
        self.labels: FrameBank | None = None
        self.head_box_margin = head_box_margin
        self.limit_boxes: torch.Tensor | None = None   # [max_id + 1, 4] long, rows of loaded ids

    @property
    def mode(self) -> str:
        return "+".join(["torso" if self.torso is not None else "head"] + (["portrait"] if self.portrait else []))

    # ------------------------------------------------------------------ frames
    def _video_bank(self, name: str, ids: np.ndarray) -> FrameBank:
        from synctalk.io.video import iter_frames

        wanted = np.unique(ids)
        stop = int(wanted.max()) + 1
        keep = np.zeros(stop, dtype=bool)
        keep[wanted] = True
        frames = []
        for i, frame in enumerate(progress(iter_frames(self.subject.path(name), 0, stop), desc=f"read {name}",
                                           total=stop, unit="frame")):
            if keep[i]:
                frames.append(_resize(frame, self.size, nearest=False))
        if len(frames) != len(wanted):
            raise InputError(f"{self.subject.path(name)} has fewer frames than the subject says; re-run `synctalk prepare`")
        return self._bank(frames, wanted, stop)

    def _mask_bank(self, name: str, ids: np.ndarray) -> FrameBank:
        from synctalk.prepare.maskcodec import MaskReader

        wanted = np.unique(ids)
        path = self.subject.path(name)
        if not path.is_file():
            raise InputError(f"{path} is missing; re-run `synctalk prepare` on this subject")
        with MaskReader(path) as reader:
            frames = [_resize(reader[int(i)], self.size, nearest=True) for i in wanted]
        return self._bank(frames, wanted, int(wanted.max()) + 1)

    def _bank(self, frames: list[np.ndarray], wanted: np.ndarray, stop: int) -> FrameBank:
        rows = torch.full((stop,), -1, dtype=torch.long)
        rows[torch.from_numpy(wanted)] = torch.arange(len(wanted))
        data = torch.from_numpy(np.stack(frames)).to(self.device)
        return FrameBank(data, rows.to(self.device))

    def load_frames(self, ids: np.ndarray) -> None:
        """Decode what rendering frames ``ids`` (walked subject frame ids) needs, once."""
        from concurrent.futures import ThreadPoolExecutor

        ids = np.asarray(ids, dtype=np.int64)
        jobs = {}
        # The banks are independent and their decoders (PyAV / OpenCV / zlib) release the GIL: one
        # thread each (the torso video alone took ~2.5 s of a 60-s render's start-up on the GPU machine).
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="synctalk-bank") as pool:
            if self.torso is None:
                jobs["backgrounds"] = pool.submit(self._video_bank, S.TORSO, ids)
            if self.portrait or self.head_box_margin is not None:
                jobs["labels"] = pool.submit(self._mask_bank, S.PARSING, ids)
            if self.portrait:
                jobs["sources"] = pool.submit(self._video_bank, S.FRAMES, ids)
                jobs["faces"] = pool.submit(self._mask_bank, S.PORTRAIT, ids)
            for name, job in jobs.items():
                setattr(self, name, job.result())
        if self.head_box_margin is not None:
            self.limit_boxes = self._limit_boxes(self.labels)

    def _limit_boxes(self, labels: FrameBank) -> torch.Tensor:
        from synctalk.nerf.data import _clip_boxes, boxes_from_profiles

        # Row / column profiles on the device: only [N, H] + [N, W] flags come back to the host.
        head = (labels.data == S.LABEL_FACE) | (labels.data == S.LABEL_HAIR)
        rows, cols = head.any(dim=2).cpu().numpy(), head.any(dim=1).cpu().numpy()
        boxes = _clip_boxes(boxes_from_profiles(rows, cols, self.head_box_margin), *self.size)
        per_row = torch.from_numpy(boxes).to(self.device)
        return per_row[labels.rows.clamp_min(0)]

    # ------------------------------------------------------------------ render
    @torch.no_grad()
    def render_batch(self, frame_ids: torch.Tensor, c2w: torch.Tensor, expressions: torch.Tensor,
                     codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """frame_ids [B] (walked frames: background, torso code, portrait source), c2w [B,4,4] NeRF scene,
        expressions [B,7], audio codes [B,32] -> {"frame": [B,H,W,3] float final, "head_alpha", "head"}."""
        if self.torso is not None:
            trgb, talpha = self.torso.render(frame_ids, c2w)
            background = self.torso.over_background(trgb, talpha)
        else:
            background = self.backgrounds.take(frame_ids).float() / 255.0
        limit = self.limit_boxes[frame_ids] if self.limit_boxes is not None else None
        head = self.engine.render(c2w, codes, expressions, background, limit)
        out = {"head": head.rgb, "head_alpha": head.alpha, "frame": head.rgb}
        if self.portrait:
            source = self.sources.take(frame_ids).float() / 255.0
            out["frame"], out["mask"] = paste_back(head.rgb, source, self.faces.take(frame_ids),
                                                   self.labels.take(frame_ids), head.alpha, self.feather_px)
        return out
