"""Stage `figures`: pictures a person looks at to judge a prepared subject.

* ``figures/contact_sheet.png``: a few frames spread over the video, each with the face landmarks,
  the parsing labels as a colour overlay and the head pose as 3D axes drawn through the camera.
* ``figures/pose_track.png``: head rotation and translation over time, before (per-frame fit) and
  after (bundle adjustment) stabilisation, so jitter is visible at a glance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synctalk import subject as S
from synctalk.io.atomic import atomic_path
from synctalk.io.video import iter_frames
from synctalk.prepare.context import StageContext
from synctalk.prepare.maskcodec import MaskReader

# Overlay colours (RGB) per label; background is left uncoloured.
LABEL_COLOURS = {
    S.LABEL_FACE: (255, 60, 60),
    S.LABEL_HAIR: (255, 200, 0),
    S.LABEL_NECK: (60, 220, 60),
    S.LABEL_TORSO: (60, 120, 255),
}
SHEET_FRAMES = 6
THUMB = 320


def run(ctx: StageContext) -> dict[str, Any]:
    n = int(ctx.fact("n_frames"))
    picks = np.linspace(0, n - 1, SHEET_FRAMES).round().astype(int)
    lms = S.load_landmarks(ctx.path(S.LANDMARKS))[0]
    with np.load(ctx.path(S.POSE), allow_pickle=False) as z:
        pose = {k: z[k] for k in z.files}
    tiles = []
    with MaskReader(ctx.path(S.PARSING)) as labels:
        wanted = set(picks.tolist())
        for i, frame in enumerate(iter_frames(ctx.path(S.FRAMES), stop=int(picks[-1]) + 1)):
            if i in wanted:
                tiles.append(annotate_frame(frame, labels[i], lms[i], pose["c2w"][i], pose["intrinsics"], i))
    out = ctx.path(S.FIGURES)
    out.mkdir(exist_ok=True)
    _save_png(out / "contact_sheet.png", _grid(tiles, cols=3))
    plot_pose_track(pose, out / "pose_track.png", fps=float(ctx.fact("fps")))
    return {"figures": {"contact_sheet_frames": picks.tolist()}}


def annotate_frame(frame: np.ndarray, labels: np.ndarray, lms: np.ndarray, c2w: np.ndarray,
                   intrinsics: np.ndarray, index: int) -> np.ndarray:
    import cv2

    img = frame.astype(np.float32)
    overlay = img.copy()
    for label, colour in LABEL_COLOURS.items():
        overlay[labels == label] = colour
    img = (0.6 * img + 0.4 * overlay).astype(np.uint8)
    img = np.ascontiguousarray(img)
    for x, y in lms[:, :2]:
        cv2.circle(img, (int(round(float(x))), int(round(float(y)))), 1, (255, 255, 255), -1, cv2.LINE_AA)
    _draw_axes(img, c2w, intrinsics)
    cv2.putText(img, f"frame {index}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    h, w = img.shape[:2]
    return cv2.resize(img, (THUMB, round(THUMB * h / w)), interpolation=cv2.INTER_AREA)


def _draw_axes(img: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray, length: float = 0.2) -> None:
    """Head-frame x/y/z axes (red/green/blue) projected through the camera."""
    import cv2

    from synctalk.prepare.headpose.convention import project

    pts = np.array([[0, 0, 0], [length, 0, 0], [0, length, 0], [0, 0, length]], dtype=np.float64)
    uv = np.asarray(project(pts, np.asarray(c2w, np.float64), np.asarray(intrinsics, np.float64)))
    origin = tuple(int(v) for v in np.round(uv[0]))
    for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 128, 255)]):
        tip = tuple(int(v) for v in np.round(uv[k + 1]))
        cv2.arrowedLine(img, origin, tip, colour, 2, cv2.LINE_AA, tipLength=0.15)


def _grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return sheet


def _save_png(path, rgb: np.ndarray) -> None:
    import cv2

    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")


def rotation_to_euler_deg(R: np.ndarray) -> np.ndarray:
    """Yaw/pitch/roll-like angles (degrees) of rotations [N,3,3], for plotting only."""
    sy = np.sqrt(R[:, 0, 0] ** 2 + R[:, 1, 0] ** 2)
    x = np.arctan2(R[:, 2, 1], R[:, 2, 2])
    y = np.arctan2(-R[:, 2, 0], sy)
    z = np.arctan2(R[:, 1, 0], R[:, 0, 0])
    return np.degrees(np.stack([x, y, z], axis=1))


def plot_pose_track(pose: dict[str, np.ndarray], path, fps: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(pose["c2w"])) / fps
    fig, axes = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    colours = ("tab:red", "tab:green", "tab:blue")  # one colour per axis; thin = before, thick = after
    for key, style, name in (("c2w_raw", dict(alpha=0.45, lw=0.7), "per-frame fit"),
                             ("c2w", dict(lw=1.4), "bundle-adjusted")):
        c2w = pose[key].astype(np.float64)
        eul = rotation_to_euler_deg(c2w[:, :3, :3])
        for k, axis in enumerate("xyz"):
            axes[0].plot(t, eul[:, k], color=colours[k], label=f"rot {axis} ({name})", **style)
            axes[1].plot(t, c2w[:, k, 3], color=colours[k], label=f"cam {axis} ({name})", **style)
    axes[0].set_ylabel("camera rotation (deg)")
    axes[1].set_ylabel("camera position (world units)")
    axes[1].set_xlabel("time (s)")
    for ax in axes:
        ax.legend(ncol=3, fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Head-Sync Stabilizer: pose track before / after bundle adjustment")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
