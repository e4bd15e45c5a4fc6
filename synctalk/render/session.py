"""A loaded subject + trained model, ready to render batches of frames in any compositing mode.

Modes (``RenderSession.render_batch``):
  head      head over the walked frame's ``torso.mp4`` (torso, inpainted neck, background plate)
  torso     head over the trained torso model over the background plate
  portrait  either of the above pasted into the walked source frame (synctalk.render.portrait)
Everything runs on the session's device; the frames a render needs are decoded once, by loader threads
that run ahead of the render (synctalk.render.banks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from synctalk import subject as S
from synctalk.errors import InputError
from synctalk.log import get_logger
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
        if self.model.pose_correction is not None:   # cameras refined with the field (pose_refine)
            n = self.model.n_frames
            self.c2w_nerf[:n] = self.c2w_nerf[:n] @ self.model.pose_correction.double().numpy()
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
        # synctalk.render.banks.FrameBank each, set by load_frames
        self.backgrounds = None
        self.sources = None
        self.faces = None
        self.labels = None   # its ``extra``: the head-box limit of each frame (head_box_margin)
        self.head_box_margin = head_box_margin

    @property
    def mode(self) -> str:
        return "+".join(["torso" if self.torso is not None else "head"] + (["portrait"] if self.portrait else []))

    # ------------------------------------------------------------------ frames
    def _video_frames(self, name: str, wanted: np.ndarray):
        """The frames of ``wanted`` (sorted ids) of subject video ``name``, resized to the model size."""
        from synctalk.io.video import iter_frames

        keep = np.zeros(int(wanted[-1]) + 1, dtype=bool)
        keep[wanted] = True
        for i, frame in enumerate(iter_frames(self.subject.path(name), 0, keep.size)):
            if keep[i]:
                yield _resize(frame, self.size, nearest=False)

    def _mask_frames(self, name: str, wanted: np.ndarray):
        from synctalk.prepare.maskcodec import MaskReader

        with MaskReader(self.subject.path(name)) as reader:
            for i in wanted:
                yield _resize(reader[int(i)], self.size, nearest=True)

    def _head_boxes(self, labels: np.ndarray) -> np.ndarray:
        """[N, H, W] label maps -> [N, 4] int64 parsed head (face + hair) boxes grown by the margin."""
        from synctalk.nerf.data import _clip_boxes, boxes_from_profiles

        head = S.head_mask(labels)
        boxes = boxes_from_profiles(head.any(axis=2), head.any(axis=1), self.head_box_margin)
        return _clip_boxes(boxes, *self.size)

    def load_frames(self, ids: np.ndarray, wait: bool = True) -> None:
        """Decode what rendering frames ``ids`` (walked subject frame ids) needs, once, on one loader
        thread per file (synctalk.render.banks). ``wait=False`` returns at once: ``render_batch`` then
        waits only for the frames of its batch, so decoding overlaps rendering."""
        from synctalk.render.banks import FrameBank, start_loader

        wanted = np.unique(np.asarray(ids, dtype=np.int64))
        if wanted.size == 0:
            raise InputError("no frames to render")
        if wanted[-1] >= self.subject.n_frames:
            raise InputError(f"frame {wanted[-1]} is outside the subject's {self.subject.n_frames} frames")
        h, w = self.size
        jobs: list[tuple[str, FrameBank, object]] = []
        if self.torso is None:
            jobs.append(("backgrounds", FrameBank(wanted, (h, w, 3), self.device, name=S.TORSO),
                         self._video_frames(S.TORSO, wanted)))
        if self.portrait or self.head_box_margin is not None:
            for name in (S.PARSING,) + ((S.PORTRAIT,) if self.portrait else ()):
                if not self.subject.path(name).is_file():
                    raise InputError(f"{self.subject.path(name)} is missing; re-run `synctalk prepare` on this subject")
            extra = self._head_boxes if self.head_box_margin is not None else None
            jobs.append(("labels", FrameBank(wanted, (h, w), self.device, extra=extra, name=S.PARSING),
                         self._mask_frames(S.PARSING, wanted)))
        if self.portrait:
            jobs.append(("sources", FrameBank(wanted, (h, w, 3), self.device, name=S.FRAMES),
                         self._video_frames(S.FRAMES, wanted)))
            jobs.append(("faces", FrameBank(wanted, (h, w), self.device, name=S.PORTRAIT),
                         self._mask_frames(S.PORTRAIT, wanted)))
        for attr, bank, frames in jobs:   # a loader's error reaches the render thread through its bank
            setattr(self, attr, bank)
            start_loader(bank, frames)
        if wait:
            self.wait_frames()

    def wait_frames(self) -> None:
        """Block until every bank is loaded (raises a loader's error)."""
        for bank in (self.backgrounds, self.labels, self.sources, self.faces):
            if bank is not None:
                bank.wait()

    # ------------------------------------------------------------------ render
    @torch.no_grad()
    def render_batch(self, frame_ids: torch.Tensor, c2w: torch.Tensor, expressions: torch.Tensor,
                     codes: torch.Tensor, host_ids: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """frame_ids [B] (walked frames: background, torso code, portrait source), c2w [B,4,4] NeRF scene,
        expressions [B,7], audio codes [B,32] -> {"frame": [B,H,W,3] float final, "head_alpha", "head"}.
        ``host_ids``: ``frame_ids`` on the host, so a bank still loading waits only for this batch."""
        if host_ids is None and frame_ids.numel():
            host_ids = frame_ids.cpu().numpy()
        if self.torso is not None:
            trgb, talpha = self.torso.render(frame_ids, c2w)
            background = self.torso.over_background(trgb, talpha)
        else:
            background = self.backgrounds.take(frame_ids, host_ids).float() / 255.0
        limit = self.labels.take_extra(frame_ids, host_ids) if self.head_box_margin is not None else None
        head = self.engine.render(c2w, codes, expressions, background, limit)
        out = {"head": head.rgb, "head_alpha": head.alpha, "frame": head.rgb}
        if self.portrait:
            source = self.sources.take(frame_ids, host_ids).float() / 255.0
            out["frame"], out["mask"] = paste_back(head.rgb, source, self.faces.take(frame_ids, host_ids),
                                                   self.labels.take(frame_ids, host_ids), head.alpha, self.feather_px)
        return out
