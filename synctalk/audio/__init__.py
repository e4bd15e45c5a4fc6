"""Audio for SyncTalk: loading driving audio, the Wav2Lip-style mel spectrogram, per-video-frame mel
windows, the SyncNet audio encoder (state-dict compatible with the original AVE), a subject-trained
sync model, and an offline lip-sync score.

Submodules import torch/PyAV lazily where they can, so importing ``synctalk.audio`` stays cheap.
"""

SAMPLE_RATE = 16000
VIDEO_FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS  # 640
