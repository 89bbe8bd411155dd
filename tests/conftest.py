"""Shared fixtures: offline settings, the embedded models (loaded once), the shared data folder."""

from __future__ import annotations

import os

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_k] = _v

import pytest  # noqa: E402
import torch  # noqa: E402

from thresh_opt.config import shared_data_dir  # noqa: E402
from thresh_opt.models import load_model  # noqa: E402

torch.set_num_threads(int(os.environ.get("THRESH_OPT_TEST_THREADS", "2")))  # 1 beside a second pytest


@pytest.fixture(scope="session")
def rwkv():
    """The embedded RWKV-4 model, loaded once for the whole session."""
    return load_model("embedded:rwkv4-tiny")


@pytest.fixture(scope="session")
def opt():
    """The embedded OPT model, loaded once for the whole session."""
    return load_model("embedded:opt-tiny")


@pytest.fixture(autouse=True)
def _dense_again(request):
    """Tests share the loaded models: leave them dense for the next test."""
    yield
    for name in ("rwkv", "opt"):
        if name in request.fixturenames:
            request.getfixturevalue(name).thresholded.reset_thresholds()


@pytest.fixture(scope="session")
def shared_data():
    """shared/data, or a skip naming the setting when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (set THRESH_OPT_SHARED to the shared/ folder)")
    return path


def chunks_of(loaded, n: int = 4, ctx_len: int = 64) -> torch.Tensor:
    """The first n held-out chunks of an embedded model."""
    from thresh_opt.objectives.text import token_chunks

    return token_chunks(loaded.tokenizer, loaded.heldout_text, ctx_len)[:n]
