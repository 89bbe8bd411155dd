"""Calibration chunks and activation statistics: sources, determinism, disk caches, one-pass semantics."""

from __future__ import annotations

import json

import pytest
import torch

from thresh_opt import UserError
from thresh_opt.calibration import CalibrationSpec, activation_stats, cached_activation_stats, calibration_chunks


def test_heldout_chunks_are_fixed_by_seed_and_cached(rwkv, tmp_path):
    spec = CalibrationSpec(ctx_len=64, count=8, seed=1)
    a = calibration_chunks(rwkv, spec, cache=tmp_path)
    assert a.shape == (8, 64)
    cached = list((tmp_path / "chunks").glob("*.pt"))
    assert len(cached) == 1
    assert torch.equal(torch.load(cached[0]), a)
    assert torch.equal(calibration_chunks(rwkv, spec, cache=tmp_path / "other"), a)  # recomputed: same
    b = calibration_chunks(rwkv, spec.model_copy(update={"seed": 2}), cache=tmp_path)
    assert not torch.equal(a, b)
    assert len(list((tmp_path / "chunks").glob("*.pt"))) == 2


def test_text_and_jsonl_sources(rwkv, tmp_path):
    lines = rwkv.heldout_text.splitlines()[:300]
    txt = tmp_path / "cal.txt"
    txt.write_text("\n".join(lines))
    jsonl = tmp_path / "cal.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": line}) for line in lines))
    from_txt = calibration_chunks(rwkv, CalibrationSpec(source=str(txt), ctx_len=32, count=4), cache=tmp_path)
    from_jsonl = calibration_chunks(rwkv, CalibrationSpec(source=str(jsonl), ctx_len=32, count=4, text_field="body"),
                                    cache=tmp_path)
    assert torch.equal(from_txt, from_jsonl)  # one document per line either way


def test_a_changed_source_file_is_tokenized_again(rwkv, tmp_path):
    txt = tmp_path / "cal.txt"
    txt.write_text("\n".join(rwkv.heldout_text.splitlines()[:60]))
    spec = CalibrationSpec(source=str(txt), ctx_len=32, count=2)
    first = calibration_chunks(rwkv, spec, cache=tmp_path)
    txt.write_text("\n".join(rwkv.heldout_text.splitlines()[60:120]))
    assert not torch.equal(first, calibration_chunks(rwkv, spec, cache=tmp_path))


@pytest.mark.parametrize(
    ("source", "content", "match"),
    [
        ("missing.txt", None, "no such file"),
        ("bad.jsonl", '{"text": "fine"}\n{oops\n', "bad.jsonl:2: not valid JSON"),
        ("nofield.jsonl", '{"body": "x"}\n', "no string field 'text'"),
        ("short.txt", "too short", "fewer than one chunk of 128"),
    ],
)
def test_bad_sources_are_clear_errors(rwkv, tmp_path, source, content, match):
    path = tmp_path / source
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=match):
        calibration_chunks(rwkv, CalibrationSpec(source=str(path)), cache=tmp_path)


def test_a_hub_dataset_offline_is_a_clear_error(rwkv, tmp_path):
    with pytest.raises(UserError, match="'hf:JeanKaddour/minipile' cannot be loaded"):
        calibration_chunks(rwkv, CalibrationSpec(source="hf:JeanKaddour/minipile"), cache=tmp_path)


def test_heldout_source_needs_an_embedded_model(rwkv, tmp_path):
    rwkv.model.save_pretrained(tmp_path / "m")
    rwkv.tokenizer.save_pretrained(tmp_path / "m")
    from thresh_opt.models import load_model

    local = load_model(str(tmp_path / "m"))
    with pytest.raises(UserError, match="no shipped held-out text"):
        calibration_chunks(local, CalibrationSpec(), cache=tmp_path)


def test_statistics_increase_with_the_level_and_are_cached(rwkv, tmp_path):
    spec = CalibrationSpec(ctx_len=64, count=4)
    stats = cached_activation_stats(rwkv, spec, cache=tmp_path)
    for name, ts in stats.thresholds.items():
        assert ts == sorted(ts), name
        assert ts[-1] > 0, name
    files = list((tmp_path / "stats").glob("*.json"))
    assert len(files) == 1
    again = cached_activation_stats(rwkv, spec, cache=tmp_path)
    assert again == stats
    assert stats.at(0.0) == dict.fromkeys(stats.thresholds, 0.0)


def test_one_pass_statistics_see_the_thresholds_set_upstream(rwkv, tmp_path):
    """The choice made explicit: statistics are measured under the model's current thresholds.

    With everything dense, one pass gives every module's dense statistics (what the published
    module-by-module pass measures before any choice). Once upstream thresholds are set, modules
    downstream see different inputs, so a fresh pass is needed after each accepted choice.
    """
    chunks = calibration_chunks(rwkv, CalibrationSpec(ctx_len=64, count=4), cache=tmp_path)
    tm = rwkv.thresholded
    dense = activation_stats(tm, chunks)
    tm.set_thresholds({n: t for n, t in dense.at(0.5).items() if n.startswith("blocks.0.")})
    after = activation_stats(tm, chunks)
    assert after.thresholds["blocks.0.att.key"] == dense.thresholds["blocks.0.att.key"]  # nothing upstream of it
    assert after.thresholds["blocks.1.att.key"] != dense.thresholds["blocks.1.att.key"]
    # the statistics cache is keyed by the thresholds in force
    cached_dense = cached_activation_stats(rwkv, CalibrationSpec(ctx_len=64, count=4), cache=tmp_path)
    tm.reset_thresholds()
    assert cached_activation_stats(rwkv, CalibrationSpec(ctx_len=64, count=4), cache=tmp_path) != cached_dense


def test_calibrate_command(tmp_path, capsys):
    from thresh_opt.cli import main

    args = ["calibrate", "embedded:opt-tiny", "--count", "4", "--ctx-len", "64", "--cache-dir", str(tmp_path)]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chunks"] == [4, 64] and len(out["thresholds"]) == len(out["thresholds"]) > 0
    assert list((tmp_path / "stats").glob("*.json"))
    assert main([*args[:2], "--count", "0"]) == 2
    assert "--count: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_cache_writes_are_atomic_and_never_share_a_temporary_file(tmp_path):
    from thresh_opt.config import atomic_write

    path = tmp_path / "cache" / "x.json"
    atomic_write(path, lambda tmp: tmp.write_text("old"))
    seen = []

    def fail(tmp):
        seen.append(tmp)
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and list(path.parent.iterdir()) == [path]  # no temporary left behind

    def nested(tmp):  # a second writer of the same file while the first is writing (Ray workers do this)
        seen.append(tmp)
        atomic_write(path, lambda inner: (seen.append(inner), inner.write_text("second")))
        tmp.write_text("first")

    atomic_write(path, nested)
    assert path.read_text() == "first" and len(set(seen)) == len(seen) == 3
    assert list(path.parent.iterdir()) == [path]
