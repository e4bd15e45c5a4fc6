"""`render_audio`, `synctalk render` and `evaluate_subject` end to end on a tiny synthetic subject (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_render_engine import SIZE, make_subject, render_frame, shared_trained

from synctalk.errors import InputError
from synctalk.io.audio import write_wav


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    work, _ = shared_trained()
    return make_subject(tmp_path_factory.mktemp("render_api") / "subject", work)


def tone(path, seconds: float, amplitude: float = 0.3):
    t = np.arange(int(round(seconds * 16000))) / 16000
    write_wav(path, (amplitude * np.sin(2 * np.pi * 300 * t) * (t > -1)).astype(np.float32), 16000)
    return path


def test_render_audio_to_mp4_with_audio(subject, tmp_path):
    from synctalk.io.video import iter_frames
    from synctalk.render import RenderOptions, render_audio

    # 1.3 s -> round(32.5) = 32 frames (halves to even), longer than the 6-frame pose track (walks back).
    info = render_audio(subject, tone(tmp_path / "a.wav", 1.3), tmp_path / "o.mp4",
                        RenderOptions(device="cpu", frames_dir=tmp_path / "png", smoothing=1.0, blink="none"))
    assert info["frames"] == 32 and info["mode"] == "head"
    frames = list(iter_frames(tmp_path / "o.mp4"))
    assert len(frames) == 32 and frames[0].shape == (SIZE, SIZE, 3)
    assert len(list((tmp_path / "png").glob("frame_*.png"))) == 32
    import av

    with av.open(str(tmp_path / "o.mp4")) as c:
        assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.video[0].codec_context.name == "h264"
        audio_s = float(c.streams.audio[0].duration * c.streams.audio[0].time_base)
    assert abs(audio_s - 32 / 25) < 0.1


def test_short_audio_portrait_and_test_split(subject, tmp_path):
    import cv2

    from synctalk.render import RenderOptions, render_audio

    info = render_audio(subject, tone(tmp_path / "s.wav", 0.3), None,
                        RenderOptions(device="cpu", portrait=True, frames_dir=tmp_path / "p", pose="fixed"))
    assert info["frames"] == 8 and info["mode"] == "head+portrait"
    # --test renders the test split with its own pose and audio: the same image as the trainer's render
    # of that frame, up to the lossy torso.mp4 background.
    info = render_audio(subject, None, None, RenderOptions(device="cpu", test=True, frames_dir=tmp_path / "t",
                                                                max_samples=None))
    assert info["frames"] == 2
    _, trainer = shared_trained()
    with trainer.ema_weights():
        ref = render_frame(trainer, 6).numpy() * 255
    png = cv2.cvtColor(cv2.imread(str(tmp_path / "t" / "frame_00000.png")), cv2.COLOR_BGR2RGB).astype(np.float64)
    assert np.abs(png - ref).mean() < 4.0


def test_driving_features_of_own_audio_equal_training_features(subject):
    from synctalk.audio.load import load_driving_audio
    from synctalk.audio.windows import n_video_frames
    from synctalk.render.api import driving_features
    from synctalk.render.session import RenderSession

    session = RenderSession(subject, device="cpu")
    wav = load_driving_audio(subject / "audio.wav")
    n = n_video_frames(wav.size)
    assert n == 8
    ours = driving_features(session, wav, n).numpy()
    assert np.allclose(ours, np.load(subject / "audio" / "features.npy"), atol=1e-5)


def test_clear_errors(subject, tmp_path):
    import shutil

    from synctalk.cli import main
    from synctalk.render import RenderOptions, render_audio

    silent = tmp_path / "silent.wav"
    write_wav(silent, np.zeros(16000, np.float32), 16000)
    with pytest.raises(InputError, match="silent"):
        render_audio(subject, silent, tmp_path / "x.mp4", RenderOptions(device="cpu"))
    info = render_audio(subject, silent, None, RenderOptions(device="cpu", allow_silent=True, frames_dir=tmp_path / "f"))
    assert info["frames"] == 25
    with pytest.raises(InputError, match="no trained head model"):
        render_audio(subject, tone(tmp_path / "a.wav", 0.5), tmp_path / "x.mp4", RenderOptions(device="cpu"),
                     workspace=tmp_path / "none")
    with pytest.raises(InputError, match="no torso model"):
        render_audio(subject, tone(tmp_path / "a.wav", 0.5), tmp_path / "x.mp4", RenderOptions(device="cpu", torso=True))
    old = tmp_path / "old"
    shutil.copytree(subject, old)
    manifest = json.loads((old / "subject.json").read_text())
    manifest["format_version"] = 0
    (old / "subject.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="subject format"):
        render_audio(old, tone(tmp_path / "a.wav", 0.5), tmp_path / "x.mp4", RenderOptions(device="cpu"))
    (subject / "audio" / "ave.safetensors").rename(tmp_path / "ave.safetensors")
    try:
        with pytest.raises(InputError, match="stage audio"):
            render_audio(subject, tone(tmp_path / "a.wav", 0.5), tmp_path / "x.mp4", RenderOptions(device="cpu"))
    finally:
        (tmp_path / "ave.safetensors").rename(subject / "audio" / "ave.safetensors")
    # The CLI turns these into one line and exit status 1.
    assert main(["render", str(subject), "--audio", str(tmp_path / "missing.wav"), "--device", "cpu"]) == 1
    assert main(["render", str(subject), "--audio", str(tone(tmp_path / "b.wav", 0.4)), "-o",
                 str(tmp_path / "cli.mp4"), "--device", "cpu", "--portrait"]) == 0
    assert (tmp_path / "cli.mp4").is_file()


def test_portrait_region_covers_jaw_and_neck_not_hair():
    from synctalk import subject as S
    from synctalk.render.portrait import gaussian_feather, paste_region

    h = w = 20
    face = torch.zeros(1, h, w, dtype=torch.uint8)
    face[0, 4:12, 6:14] = 255
    labels = torch.zeros(1, h, w, dtype=torch.uint8)
    labels[0, 0:4, 4:16] = S.LABEL_HAIR
    labels[0, 12:16, 8:12] = S.LABEL_NECK
    alpha = torch.zeros(1, h, w)
    alpha[0, 2:15, 6:14] = 1.0        # the rendered jaw drops 3 rows below the source chin; hair above
    region = paste_region(face, labels, alpha)[0]
    assert region[13, 7] and region[14, 13]        # rendered jaw below the source face is kept
    assert region[14, 9]                           # neck comes from the render (no old chin)
    assert not region[2, 8]                        # source hair stays, even under rendered alpha
    assert not region[18, 2]                       # background stays
    import cv2

    hard = np.zeros((h, w), np.float32)
    hard[5:15, 5:15] = 1
    ours = gaussian_feather(torch.from_numpy(hard)[None], 9)[0].numpy()
    ref = cv2.GaussianBlur(hard, (9, 9), 0, borderType=cv2.BORDER_REPLICATE)
    assert np.abs(ours - ref).max() < 1 / 255   # the same feather as the stored masks (cv2), within a level


def test_evaluate_writes_table_json_and_reuses_frames(subject, tmp_path):
    from synctalk.evaluate import EvaluateOptions, evaluate_subject, format_table

    out = tmp_path / "eval"
    result = evaluate_subject(subject, (), out, options=EvaluateOptions(device="cpu", modes=("head", "portrait", "torso")))
    assert set(result["modes"]) == {"head", "portrait"}           # no torso model: torso skipped
    head = result["modes"]["head"]
    assert 10 < head["psnr"] < 60 and 0 < head["ssim"] <= 1
    assert head["lpips_alex"] == {"unavailable": "no --lpips-weights given"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["modes"]["head"]["psnr"] == pytest.approx(head["psnr"])
    assert (out / "compare_head.mp4").is_file() and "PSNR" in format_table(result)
    again = evaluate_subject(subject, (), out, options=EvaluateOptions(device="cpu", modes=("head",), reuse_frames=True,
                                                                      video=False))
    assert again["modes"]["head"]["psnr"] == pytest.approx(head["psnr"])


def test_portrait_of_cropped_subject_goes_back_into_the_source(subject, tmp_path):
    import shutil

    import cv2

    from synctalk.io.video import VideoWriter, iter_frames
    from synctalk.render import RenderOptions, render_audio

    cropped = tmp_path / "cropped"
    shutil.copytree(subject, cropped)
    source = tmp_path / "source.mp4"
    with VideoWriter(source, fps=25, crf=0) as w:
        for frame in iter_frames(subject / "frames.mp4"):
            canvas = np.full((40, 48, 3), 50, np.uint8)
            canvas[4:36, 8:40] = frame
            w.write(canvas)
    manifest = json.loads((cropped / "subject.json").read_text())
    manifest["crop"] = {"x0": 8, "y0": 4, "side": 32, "source_width": 48, "source_height": 40}
    manifest["source"] = {"path": str(source), "fps": 25.0, "vfr": False, "n_frames": 8}
    (cropped / "subject.json").write_text(json.dumps(manifest))
    info = render_audio(cropped, tone(tmp_path / "a.wav", 0.4), None,
                        RenderOptions(device="cpu", portrait=True, frames_dir=tmp_path / "full"))
    assert info["full_resolution"]
    png = cv2.imread(str(tmp_path / "full" / "frame_00000.png"))
    assert png.shape == (40, 48, 3)
    assert abs(int(png[20, 2, 0]) - 50) <= 3      # outside the crop: the source canvas


def test_prime_render_kernels_is_a_no_op_without_cuda(subject, monkeypatch):
    """Training primes the render kernels only on CUDA (tests_gpu times the primed first render); on a
    CPU it must do nothing and, in particular, never fail a finished training run."""
    from synctalk.nerf import train_run
    from synctalk.render.api import prime_render_kernels

    assert prime_render_kernels(subject, subject / "workspace" / "nerf", device="cpu") is None
    calls = []
    monkeypatch.setattr("synctalk.render.api.prime_render_kernels",
                        lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(RuntimeError("no GPU")))
    train_run._prime_render_kernels(subject, subject / "workspace" / "nerf")   # logs, does not raise
    assert len(calls) == 1


def test_rest_frame_is_the_medoid_of_silent_closed_train_frames():
    from synctalk.render.silence import choose_rest_frame

    feats = np.zeros((10, 4), np.float32)
    feats[[1, 2, 3], 0] = [0.0, 1.0, 5.0]       # mean 2.0: frame 2 is the medoid
    opening = np.full(10, 0.05, np.float32)
    opening[[1, 2, 3, 5, 8]] = 0.001            # closed lips; 8 is a test frame, 5 is not silent
    silent = np.zeros(10, bool)
    silent[[1, 2, 3, 8]] = True
    rest = choose_rest_frame(feats, opening, silent, n_train=7)
    assert (rest.frame, rest.source, rest.candidates) == (2, "silent+closed", 3)
    silent[[1, 2]] = False                        # too few silent closed frames: lips sealed anywhere
    rest = choose_rest_frame(feats, opening, silent, n_train=7)
    assert rest.source == "closed" and rest.candidates == 4 and rest.frame in (1, 2, 3, 5)
    opening[:] = 0.05                             # never closed: nothing to rest on
    assert choose_rest_frame(feats, opening, silent, n_train=7) is None


def test_pauses_get_the_rest_mouth(subject, tmp_path, shared_data):
    """A driving clip of real speech with a pause: the paused frames' features become the rest frame's
    own feature, the spoken frames keep theirs, and render_audio reports it."""
    import shutil

    from synctalk import subject as S
    from synctalk.audio.av_sync import silent_frames, speech_frames
    from synctalk.audio.load import load_driving_audio
    from synctalk.audio.windows import n_video_frames
    from synctalk.io.atomic import save_npz
    from synctalk.render import RenderOptions, render_audio
    from synctalk.render.api import driving_features
    from synctalk.render.session import RenderSession
    from synctalk.render.silence import close_silences

    sub_dir = tmp_path / "subject"
    shutil.copytree(subject, sub_dir)
    # Landmarks: lips closed (inner gap 0) in train frames 2-4, open elsewhere; face height 200 px.
    lms = np.zeros((8, 478, 3), np.float32)
    lms[:, 10, 1], lms[:, 152, 1], lms[:, 13, 1] = 0.0, 200.0, 150.0
    lms[:, 14, 1] = [160, 160, 150, 150, 150, 160, 160, 160]
    save_npz(sub_dir / S.LANDMARKS, lms_delta=S.encode_landmarks(lms), detected=np.ones(8, bool))
    speech = load_driving_audio(shared_data / "hdtf_radio34_sadtalker_8s.wav")[:32000]
    wav = np.concatenate([speech, np.zeros(24000, np.float32), speech[:16000]])   # 2 s, 1.5 s pause, 1 s
    session = RenderSession(sub_dir, device="cpu")
    n = n_video_frames(wav.size)
    plain = driving_features(session, wav, n)
    closed, report = close_silences(S.Subject(sub_dir), wav, plain)
    own = np.load(sub_dir / "audio" / "features.npy")
    assert report["mode"] == "closed" and report["rest"]["frame"] in (2, 3, 4), report
    silent = silent_frames(speech_frames(wav, n))
    assert silent[55:85].all() and (~silent).sum() >= 40   # the inserted pause (frames 50-87) is silent
    changed = (closed != plain).any(dim=1).numpy()
    assert np.array_equal(changed, silent) and report["silent_frames"] == silent.sum()
    assert torch.equal(closed[60], torch.from_numpy(own[report["rest"]["frame"]]))
    from synctalk.io.audio import write_wav

    write_wav(tmp_path / "d.wav", wav, 16000)
    info = render_audio(sub_dir, tmp_path / "d.wav", None, RenderOptions(device="cpu", frames_dir=tmp_path / "f",
                                                                         pose="fixed", max_samples=None))
    assert info["silence"] == report
    natural = render_audio(sub_dir, tmp_path / "d.wav", None, RenderOptions(
        device="cpu", frames_dir=tmp_path / "g", pose="fixed", max_samples=None, silence="natural"))
    assert natural["silence"] == {"mode": "natural"}
