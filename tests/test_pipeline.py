"""The prepare pipeline's resume / force / interruption semantics, with small fake stages."""

from __future__ import annotations

import dataclasses

import pytest

from synctalk.config import apply_overrides
from synctalk.errors import StageError, SyncTalkError
from synctalk.io.atomic import write_text
from synctalk.prepare import pipeline
from synctalk.prepare.config import PrepareConfig, preset
from synctalk.prepare.pipeline import Stage


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_in: str | None = None


def _fake_stages(rec: Recorder) -> list[Stage]:
    def make(name: str, out: str, facts: dict):
        def run(ctx):
            rec.calls.append(name)
            if rec.fail_in == name:
                raise RuntimeError("boom")
            write_text(ctx.path(out), f"{name} crf={ctx.config.decode.crf}\n")
            return facts
        return run

    return [
        Stage("a", 1, ("a.txt",), (), lambda c: c.decode, make("a", "a.txt", {"n_frames": 11, "fps": 25.0,
                                                                             "width": 8, "height": 8})),
        Stage("b", 1, ("b.txt",), ("a",), lambda c: c.parsing, make("b", "b.txt", {"b": 1})),
        Stage("c", 1, ("c.txt",), ("b",), lambda c: None, make("c", "c.txt", {})),
    ]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    rec = Recorder()
    monkeypatch.setattr(pipeline, "_stages", lambda: _fake_stages(rec))
    src = tmp_path / "video.mp4"
    src.write_bytes(b"not really a video; the fake stages never read it")
    return rec, src, tmp_path / "subject"


def test_second_run_skips_finished_stages(fake):
    rec, src, out = fake
    m = pipeline.prepare(src, out)
    assert rec.calls == ["a", "b", "c"]
    assert m["frames"] == 11 and m["split"] == {"train": [0, 10], "test": [10, 11]}
    pipeline.prepare(src, out)
    assert rec.calls == ["a", "b", "c"], "nothing should re-run"


def test_force_reruns_everything(fake):
    rec, src, out = fake
    pipeline.prepare(src, out)
    pipeline.prepare(src, out, force=True)
    assert rec.calls == ["a", "b", "c"] * 2


def test_changed_setting_reruns_stage_and_dependants(fake):
    rec, src, out = fake
    pipeline.prepare(src, out)
    cfg = PrepareConfig()
    cfg = dataclasses.replace(cfg, parsing=dataclasses.replace(cfg.parsing, chin_extension_px=7))
    pipeline.prepare(src, out, cfg)
    assert rec.calls == ["a", "b", "c", "b", "c"]


def test_deleted_or_modified_output_reruns(fake):
    rec, src, out = fake
    pipeline.prepare(src, out)
    (out / "b.txt").write_text("truncated")
    pipeline.prepare(src, out)
    assert rec.calls[3:] == ["b", "c"]
    (out / "c.txt").unlink()
    pipeline.prepare(src, out)
    assert rec.calls[5:] == ["c"]


def test_failed_stage_leaves_no_record_and_resumes_there(fake):
    rec, src, out = fake
    rec.fail_in = "b"
    with pytest.raises(StageError, match="stage b failed: RuntimeError: boom"):
        pipeline.prepare(src, out)
    assert not (out / ".stages" / "b.json").exists()
    assert not (out / "subject.json").exists()
    rec.fail_in = None
    pipeline.prepare(src, out)
    assert rec.calls == ["a", "b", "b", "c"], "a is reused, b and c run"


def test_only_runs_requested_stages_and_needs_earlier_ones(fake):
    rec, src, out = fake
    with pytest.raises(StageError, match="stage 'a' has no valid output yet"):
        pipeline.prepare(src, out, only=("b",))
    assert pipeline.prepare(src, out, only=("a",)) == {}, "no manifest until every stage is done"
    assert rec.calls == ["a"] and not (out / "subject.json").exists()
    pipeline.prepare(src, out, only=("b",), force=True)
    assert rec.calls == ["a", "b"], "force re-runs only the requested stage"
    m = pipeline.prepare(src, out)
    assert rec.calls == ["a", "b", "c"] and m["frames"] == 11


def test_changed_source_reruns(fake):
    rec, src, out = fake
    pipeline.prepare(src, out)
    src.write_bytes(b"another video")
    pipeline.prepare(src, out)
    assert rec.calls == ["a", "b", "c"] * 2


def test_missing_input_is_one_line_error(tmp_path):
    with pytest.raises(SyncTalkError, match="input video not found"):
        pipeline.prepare(tmp_path / "nope.mp4", tmp_path / "s")


def test_overrides_and_presets():
    cfg = apply_overrides(preset("default"), ["decode.crf=20", "pose.ba_iters_joint=5"])
    assert cfg.decode.crf == 20 and cfg.pose.ba_iters_joint == 5
    assert preset("fast").pose.max_tracks < preset("default").pose.max_tracks
    with pytest.raises(SyncTalkError, match="unknown setting"):
        apply_overrides(cfg, ["decode.nope=1"])
    with pytest.raises(SyncTalkError, match="bad value"):
        apply_overrides(cfg, ["decode.crf=high"])
    with pytest.raises(SyncTalkError, match="unknown prepare preset"):
        preset("ultra")


def test_cli_help_lists_reserved_commands(capsys):
    from synctalk.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in ("prepare", "train", "render", "evaluate"):
        assert name in text


def test_independent_stages_run_concurrently(monkeypatch, tmp_path):
    """b and c both depend only on a: with 2 jobs they overlap (b waits for c to start)."""
    import threading

    c_started = threading.Event()
    overlapped: list[bool] = []

    def run_a(ctx):
        write_text(ctx.path("a.txt"), "a")
        return {"n_frames": 11, "fps": 25.0, "width": 8, "height": 8}

    def run_b(ctx):
        overlapped.append(c_started.wait(timeout=10))
        write_text(ctx.path("b.txt"), "b")
        return {}

    def run_c(ctx):
        c_started.set()
        write_text(ctx.path("c.txt"), "c")
        return {}

    stages = [Stage("a", 1, ("a.txt",), (), lambda c: None, run_a),
              Stage("b", 1, ("b.txt",), ("a",), lambda c: None, run_b),
              Stage("c", 1, ("c.txt",), ("a",), lambda c: None, run_c)]
    monkeypatch.setattr(pipeline, "_stages", lambda: stages)
    src = tmp_path / "v.mp4"
    src.write_bytes(b"x")
    m = pipeline.prepare(src, tmp_path / "s", jobs=2)
    assert overlapped == [True]
    assert set(m["stages"]) == {"a", "b", "c"}
