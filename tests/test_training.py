"""The training command: a few-step smoke run, reproducibility, the model card, resuming."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from thresh_opt.cli import main
from thresh_opt.models import load_model
from thresh_opt.training.corpus import split_text


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, rwkv):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(rwkv.heldout_text)  # any English text: here the shipped held-out text
    return path


def _train(out, text_file, *extra):
    args = ["model", "train", "--out", str(out), "--source", str(text_file), "--steps", "3", "--layers", "2",
            "--hidden", "32", "--vocab-size", "300", "--ctx-len", "16", "--batch-size", "2", "--eval-every", "3",
            *extra]
    assert main(args) == 0


@pytest.mark.parametrize("arch", ["rwkv4", "opt"])
def test_a_few_training_steps_give_a_loadable_model_with_a_card(tmp_path, text_file, arch):
    _train(tmp_path, text_file, "--arch", arch, "--heads", "2")
    model_dir = tmp_path / "model"
    card = (model_dir / "README.md").read_text()
    metrics = json.loads((model_dir / "training.json").read_text())["metrics"]
    assert metrics["tokens_seen"] == 3 * 2 * 16
    assert f"{metrics['heldout_perplexity']:.2f}" in card and "tokens seen" in card
    loaded = load_model(str(model_dir))
    assert next(iter(load_file(model_dir / "model.safetensors").values())).dtype == torch.float16
    assert len(loaded.thresholded.names) == 2 * (7 if arch == "rwkv4" else 3)


def test_training_is_reproducible(tmp_path, text_file):
    _train(tmp_path / "a", text_file)
    _train(tmp_path / "b", text_file)
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_held_out_split_is_disjoint_and_fixed():
    lines = [f"line {i}" for i in range(4000)]
    split = split_text("t", "\n".join(lines))
    train, held = set(split.train.splitlines()), set(split.heldout.splitlines())
    assert not train & held
    assert len(held) == 200 and "line 1900" in held and "line 1899" in train
    assert split == split_text("t", "\n".join(lines))


def test_one_block_rwkv_is_refused(tmp_path, text_file, capsys):
    args = ["model", "train", "--out", str(tmp_path), "--source", str(text_file), "--layers", "1", "--steps", "1"]
    assert main(args) == 2
    assert "at least 2 blocks" in capsys.readouterr().err


def test_missing_corpus_file_is_a_clear_error(tmp_path, capsys):
    code = main(["model", "train", "--out", str(tmp_path), "--source", str(tmp_path / "nope.txt"), "--steps", "1"])
    assert code == 2
    assert "no such file" in capsys.readouterr().err
