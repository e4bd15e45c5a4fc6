"""A resting, closed mouth in the pauses of new audio (``RenderOptions.silence``; default "closed").

The head NeRF draws the mouth from the audio features around a frame. In a pause of the driving audio
it draws whatever the subject did in pauses of its own footage, and real speakers often pause with
parted lips (breathing): the 71-s CNN anchor closes its lips in only 35 % of its own silent frames
(BENCHMARKS.md "Offline lip-sync score"). A viewer of new speech expects a mouth at rest when the voice
stops, so "closed" gives every silent frame of the driving audio the audio feature of one subject
TRAIN frame that is silent with closed lips: a frame the NeRF was fitted on, so it draws that frame's
closed mouth. The frame is the medoid (the member nearest the mean) of all such frames' features, a
real feature rather than an average that no frame ever had. Without a silent closed-lip train frame it
falls back to the medoid of closed-lip train frames (lips sealed mid-speech, /m b p/); without those,
nothing changes. "natural" leaves the features as they are (the original's behaviour).

"Silent" is the lip-sync score's definition (synctalk.audio.av_sync.silent_frames): silero-vad non-speech
at least 2 frames from speech, so the frames around speech keep their own features and the NeRF's
8-frame feature smoothing blends into and out of the rest. Needs silero-vad (the ``audio`` extra); where
it is missing, "closed" warns and renders "natural".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from synctalk import subject as S
from synctalk.errors import InputError
from synctalk.log import get_logger

log = get_logger("render.silence")

SILENCE_MODES = ("closed", "natural")
MIN_REST_FRAMES = 3   # fewer candidates than this: the "rest" would be one odd frame, try the next source


@dataclass(frozen=True)
class RestMouth:
    frame: int        # the subject frame whose audio feature stands in for silence
    candidates: int   # how many train frames it was chosen from
    source: str       # "silent+closed" (preferred) or "closed" (lips sealed mid-speech)


def choose_rest_frame(features: np.ndarray, opening: np.ndarray, silent: np.ndarray, n_train: int
                      ) -> RestMouth | None:
    """The medoid feature's frame among train frames that are silent with closed lips (else closed)."""
    from synctalk.audio.av_sync import CLOSED_OPENING

    n = min(len(features), len(opening), len(silent))
    train = np.arange(n) < n_train
    closed = np.asarray(opening[:n]) < CLOSED_OPENING
    for source, mask in (("silent+closed", train & closed & np.asarray(silent[:n])), ("closed", train & closed)):
        idx = np.flatnonzero(mask)
        if len(idx) >= MIN_REST_FRAMES:
            f = features[idx].astype(np.float64)
            medoid = idx[int(np.argmin(((f - f.mean(axis=0)) ** 2).sum(axis=1)))]
            return RestMouth(int(medoid), int(len(idx)), source)
    return None


def subject_rest_mouth(sub: S.Subject, features: np.ndarray) -> RestMouth | None:
    """``choose_rest_frame`` for a prepared subject: its landmarks, and silero-vad on its audio.wav."""
    from synctalk.audio.av_sync import silent_frames, speech_frames
    from synctalk.audio.load import load_driving_audio
    from synctalk.audio.mouth import mouth_opening

    wav = load_driving_audio(sub.path(S.AUDIO), allow_silent=True)
    n = sub.n_frames
    return choose_rest_frame(features, mouth_opening(sub.landmarks()), silent_frames(speech_frames(wav, n)),
                             sub.split.n_train)


def close_silences(sub: S.Subject, wav: np.ndarray, features: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``features`` [n, 512] of the driving ``wav`` with every silent frame's row replaced by the rest
    feature; returns (features, a report for the render's info)."""
    from synctalk.audio.av_sync import silent_frames, speech_frames

    try:
        silent = silent_frames(speech_frames(wav, len(features)))
    except ImportError as e:  # silero-vad is the "audio" extra, imported on first use
        log.warning("silence=closed needs silero-vad (pip install 'synctalk[audio]'); rendering pauses as they "
                    "are (%s)", e)
        return features, {"mode": "natural", "reason": f"silero-vad unavailable: {e}"}
    report: dict = {"mode": "closed", "silent_frames": int(silent.sum()), "frames": int(len(silent))}
    if not silent.any():
        return features, report
    from synctalk.nerf.data import load_audio_features

    own = load_audio_features(sub, sub.n_frames)
    try:
        rest = subject_rest_mouth(sub, own)
    except InputError as e:   # a subject without landmarks (prepared by hand, or an old format)
        log.warning("pauses render as they are: %s", e)
        return features, {**report, "mode": "natural", "reason": str(e)}
    if rest is None:
        log.warning("no train frame of %s has closed lips; pauses render as they are", sub.root)
        return features, {**report, "mode": "natural", "reason": "no closed-lip train frame"}
    out = features.clone()
    out[torch.from_numpy(silent).to(out.device)] = torch.from_numpy(own[rest.frame]).to(out.device, out.dtype)
    log.info("silence: %d of %d frames get the rest mouth of subject frame %d (%s, from %d candidates)",
             int(silent.sum()), len(silent), rest.frame, rest.source, rest.candidates)
    return out, {**report, "rest": asdict(rest)}
