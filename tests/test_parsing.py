"""The parsing stage on a short real clip: label layout and the portrait paste-back mask."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from media_factory import write_clip

from synctalk import subject as S
from synctalk.io.video import iter_frames
from synctalk.prepare import landmarks as L
from synctalk.prepare import mesh_topology as M
from synctalk.prepare import parsing as P
from synctalk.prepare.config import PrepareConfig
from synctalk.prepare.context import StageContext
from synctalk.prepare.maskcodec import MaskReader

N_CLIP = 40


@pytest.fixture(scope="module")
def subject(anchor_video: Path, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("parsing_subject")
    write_clip(root / S.FRAMES, iter_frames(anchor_video, 0, N_CLIP))
    ctx = StageContext(root=root, source=root / S.FRAMES, config=PrepareConfig(),
                       facts={"n_frames": N_CLIP, "width": 512, "height": 512, "fps": 25.0})
    ctx.facts.update(L.run(ctx))
    facts = P.run(ctx)
    return root, facts


@pytest.fixture(scope="module")
def arrays(subject) -> dict[str, np.ndarray]:
    root, _ = subject
    with MaskReader(root / S.PARSING) as lab, MaskReader(root / S.PORTRAIT) as por, \
            MaskReader(root / S.SEGMENTATION) as seg:
        return {"labels": lab.read_all(), "portrait": por.read_all(), "person": seg.read_all(),
                "lms": S.load_landmarks(root / S.LANDMARKS)[0]}


def test_files_and_facts(subject, arrays):
    _, facts = subject
    assert arrays["labels"].shape == arrays["portrait"].shape == (N_CLIP, 512, 512)
    assert set(np.unique(arrays["labels"])) == set(S.LABEL_NAMES)
    fr = facts["parsing"]["label_fractions"]
    assert abs(sum(fr.values()) - 1) < 1e-3 and fr["face"] > 0.1 and fr["background"] > 0.2
    assert facts["parsing"]["face_outside_person"] < 0.03


def test_label_layout(arrays):
    for t in (0, N_CLIP // 2, N_CLIP - 1):
        labels, person, lms = arrays["labels"][t], arrays["person"][t] > 0, arrays["lms"][t]
        face = labels == S.LABEL_FACE
        assert (face & person).sum() / face.sum() > 0.97           # the face is part of the person
        assert not (person[labels == S.LABEL_BACKGROUND]).any()     # background is exactly not-person
        assert (labels[[0, 0, 0], [0, 256, 511]] == S.LABEL_BACKGROUND).all()  # top corners and middle
        ys = {k: np.nonzero(labels == k)[0] for k in S.LABEL_NAMES}
        assert ys[S.LABEL_HAIR].min() < ys[S.LABEL_FACE].min() - 20   # hair reaches above the face
        assert np.median(ys[S.LABEL_TORSO]) > lms[M.CHIN, 1]          # torso below the chin
        assert np.median(ys[S.LABEL_NECK]) > lms[M.CHIN, 1] - 10
        # straight above the forehead, a person pixel is hair; below the chin it is neck
        top = lms[M.FOREHEAD_TOP, :2].astype(int)
        assert labels[top[1] - 15, top[0]] == S.LABEL_HAIR
        chin = lms[M.CHIN, :2].astype(int)
        assert labels[chin[1] + 15, chin[0]] == S.LABEL_NECK
        # nose, eyes and mouth are face
        for i in (M.NOSE_TIP, M.IRIS_CENTER_LEFT, M.IRIS_CENTER_RIGHT, M.LIP_INNER_LOWER_MID):
            x, y = lms[i, :2].astype(int)
            assert labels[y, x] == S.LABEL_FACE


def test_portrait_mask(arrays):
    cfg = PrepareConfig().parsing
    reach = cfg.chin_extension_px + cfg.portrait_feather_px  # how far past the oval the mask may spread
    for t in (0, N_CLIP - 1):
        stored, lms = arrays["portrait"][t], arrays["lms"][t]
        assert set(np.unique(stored)) == {0, 255}, "the subject stores the hard region"
        mask = P.feather_mask(stored, cfg.portrait_feather_px)
        face = P.face_mask(lms, 512, 512)
        grown = cv2.dilate(face, np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
        assert mask[grown == 0].max() == 0
        x, y = lms[M.NOSE_TIP, :2].astype(int)
        assert mask[y, x] == 255
        inner = cv2.erode(face, np.ones((2 * cfg.portrait_feather_px + 1,) * 2, np.uint8))
        assert (mask[inner > 0] == 255).all()
        assert len(np.unique(mask)) > 5  # soft edge, not a hard cut
        # below the chin the mask reaches further than the oval (the chin extension)
        cx, cy = lms[M.CHIN, :2]
        col = mask[:, int(round(cx))]
        assert np.nonzero(col)[0].max() > cy + cfg.chin_extension_px - 1


def test_portrait_mask_options():
    lms = np.zeros((478, 2))
    oval = np.array(M.FACE_OVAL)
    ang = np.linspace(0, 2 * np.pi, len(oval), endpoint=False)
    lms[oval] = np.stack([256 + 80 * np.sin(ang), 256 - 100 * np.cos(ang)], axis=1)
    hard = P.portrait_mask(lms, 512, 512, chin_extension_px=0, feather_px=0)
    assert set(np.unique(hard)) == {0, 255}
    longer = P.portrait_mask(lms, 512, 512, chin_extension_px=10, feather_px=0)
    assert np.nonzero(longer[:, 256])[0].max() - np.nonzero(hard[:, 256])[0].max() == 10
    assert np.nonzero(longer[:, 180])[0].max() == np.nonzero(hard[:, 180])[0].max()  # outer quarter unchanged


def test_labels_follow_head_roll(arrays):
    """A rolled head gets rolled regions: labelling a rotated frame ~= rotating the labels."""
    lms, person = arrays["lms"][0][:, :2], arrays["person"][0]
    rot = cv2.getRotationMatrix2D((256, 300), 25, 1.0)
    lms_r = lms @ rot[:, :2].T + rot[:, 2]
    person_r = cv2.warpAffine(person, rot, (512, 512), flags=cv2.INTER_NEAREST)
    got = P.labels_for_frame(lms_r, person_r)
    want = cv2.warpAffine(P.labels_for_frame(lms, person), rot, (512, 512), flags=cv2.INTER_NEAREST)
    for k in (S.LABEL_FACE, S.LABEL_HAIR, S.LABEL_NECK):
        a, b = got == k, want == k
        assert (a & b).sum() / (a | b).sum() > 0.9, S.LABEL_NAMES[k]


def test_neck_keeps_skin_and_drops_the_collar(subject, arrays):
    root, _ = subject
    rgb = next(iter_frames(root / S.FRAMES, 5, 6))
    lms, person = arrays["lms"][5], arrays["person"][5]
    band_only = P.labels_for_frame(lms, person, neck_skin_tolerance=0)
    stored = arrays["labels"][5]
    assert np.array_equal(P.labels_for_frame(lms, person, rgb=rgb), stored)   # the stage uses the frame
    band = band_only == S.LABEL_NECK
    neck = stored == S.LABEL_NECK
    assert neck.sum() > 500 and (neck & ~band).sum() == 0
    collar = band & ~neck
    assert collar.sum() > 0.2 * band.sum()            # the shirt and tie under this anchor's chin
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32)
    skin = np.median(ycc[stored == S.LABEL_FACE], axis=0)
    dist = np.linalg.norm(ycc - skin, axis=-1)
    assert np.median(dist[neck]) < 0.5 * np.median(dist[collar])
