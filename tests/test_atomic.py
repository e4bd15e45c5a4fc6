from __future__ import annotations

import numpy as np
import pytest

from synctalk.io.atomic import atomic_path, load_npz, save_npz, write_json
from synctalk.prepare.maskcodec import MaskReader, MaskWriter


def test_atomic_path_removes_temp_on_error(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_npz_and_json_roundtrip(tmp_path):
    save_npz(tmp_path / "a.npz", x=np.arange(5, dtype=np.float32))
    assert load_npz(tmp_path / "a.npz")["x"].tolist() == [0, 1, 2, 3, 4]
    write_json(tmp_path / "a.json", {"v": np.float32(1.5), "a": np.arange(2)})
    assert (tmp_path / "a.json").read_text().count("1.5") == 1


def test_maskcodec_roundtrip_random_access(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random((40, 50)) > 0.5).astype(np.uint8) * 4
    frames = []
    for t in range(150):  # slowly moving edges, like parsing maps
        f = np.roll(base, t // 10, axis=1)
        f[t % 40, :] = t % 5
        frames.append(f)
    w = MaskWriter(tmp_path / "m.npz", 40, 50, chunk=64)
    for f in frames:
        w.add(f)
    w.close()
    with MaskReader(tmp_path / "m.npz") as r:
        assert len(r) == 150
        for t in (0, 63, 64, 65, 149, 10, -1):
            assert np.array_equal(r[t], frames[t])
        assert np.array_equal(r.read_all(), np.stack(frames))
    with pytest.raises(ValueError):
        MaskWriter(tmp_path / "n.npz", 4, 4).add(np.zeros((4, 5), np.uint8))
