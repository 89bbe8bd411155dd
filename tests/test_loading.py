"""Loading: embedded models offline, local folders, dtype and device options, and their errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from thresh_opt import UserError
from thresh_opt.models import embedded_models, load_model


def test_both_embedded_models_are_shipped():
    assert embedded_models() == ["embedded:opt-tiny", "embedded:rwkv4-tiny"]


def test_embedded_models_load_offline_in_a_fresh_process():
    code = (
        "from thresh_opt.models import load_model\n"
        "for name in ('embedded:rwkv4-tiny', 'embedded:opt-tiny'):\n"
        "    m = load_model(name)\n"
        "    print(name, type(m.model).__name__, len(m.thresholded.names), len(m.heldout_text) > 10000)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "embedded:rwkv4-tiny RwkvForCausalLM" in out.stdout and "True" in out.stdout
    assert "embedded:opt-tiny OPTForCausalLM" in out.stdout


def test_a_local_folder_loads_like_a_hub_id(rwkv, tmp_path):
    rwkv.model.save_pretrained(tmp_path)
    rwkv.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(again.model(input_ids=ids).logits, rwkv.model(input_ids=ids).logits)


def test_dtype_option():
    half = load_model("embedded:opt-tiny", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "embedded:gpt-huge"}, "unknown embedded model 'embedded:gpt-huge'; available: embedded:opt-tiny"),
        ({"source": "/no/such/folder"}, "cannot load model '/no/such/folder'"),
        ({"source": "no-such-org/no-such-model"}, "cannot load model 'no-such-org/no-such-model'"),
        ({"source": "embedded:rwkv4-tiny", "dtype": "float8"}, "dtype 'float8' is not supported"),
        ({"source": "embedded:rwkv4-tiny", "device": "tpu:7"}, "not a torch device"),
    ],
)
def test_loading_errors_are_clear(kwargs, match):
    with pytest.raises(UserError, match=match):
        load_model(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(UserError, match="no CUDA device"):
        load_model("embedded:rwkv4-tiny", device="cuda")
