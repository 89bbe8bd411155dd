"""Thresholded vs dense forward time, measured side by side in one run, plus embedded-model load time.

    python benchmarks/forward_overhead.py [--batch 8] [--ctx-len 128] [--repeats 15]

Dense = the bare Hugging Face model with no hooks. Thresholded = the same model object with every
site thresholded (target sparsity 0.5) and zero counting on. Runs alternate so that machine noise hits
both equally; the ratio of medians is printed per model. The thresholding and counting cost grows with
a module's input width while its consumer's cost grows with input x output width, so the ratio falls
as models get wider: --hub-shaped adds random-weight models of RWKV-4 169M and OPT-125m dimensions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

if os.environ.get("BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))

from thresh_opt.calibration import activation_stats
from thresh_opt.models import ThresholdedModel, load_model
from thresh_opt.objectives.text import token_chunks


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hub_shaped(name: str) -> torch.nn.Module:
    """A randomly initialised model with a hub model's dimensions (no download: timing only)."""
    from transformers import OPTConfig, OPTForCausalLM, RwkvConfig, RwkvForCausalLM

    if name == "rwkv-4-169m-shaped":
        return RwkvForCausalLM(RwkvConfig(vocab_size=50277, hidden_size=768, num_hidden_layers=12)).eval()
    return OPTForCausalLM(OPTConfig(vocab_size=50272, hidden_size=768, word_embed_proj_dim=768, ffn_dim=3072,
                                    num_hidden_layers=12, num_attention_heads=12)).eval()


@torch.no_grad()
def bench(name: str, batch: int, ctx_len: int, repeats: int) -> dict[str, float]:
    """Median seconds of a dense and a thresholded forward pass, alternating."""
    if name.endswith("-shaped"):
        model = hub_shaped(name)
        loaded = SimpleNamespace(model=model, thresholded=ThresholdedModel(model))
        ids = torch.randint(0, model.config.vocab_size, (batch, ctx_len), generator=torch.Generator().manual_seed(0))
        load_s = float("nan")
    else:
        load_s = _time(lambda: load_model(name))
        loaded = load_model(name)
        ids = token_chunks(loaded.tokenizer, loaded.heldout_text, ctx_len)[:batch]
    tm = loaded.thresholded
    tm.set_thresholds(activation_stats(tm, ids).at(0.5))
    dense, sparse = [], []
    for _ in range(repeats + 2):
        with tm.bare() as model:
            dense.append(_time(lambda: model(input_ids=ids)))
        with tm.counting():
            sparse.append(_time(lambda: loaded.model(input_ids=ids)))
        mac_weighted = tm.sparsity().mac_weighted
    d, s = statistics.median(dense[2:]), statistics.median(sparse[2:])
    return {"load_s": load_s, "dense_s": d, "thresholded_s": s, "ratio": s / d, "sparsity": mac_weighted}


def main() -> None:
    """Print one line per embedded model."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--hub-shaped", action="store_true",
                   help="also time random-weight models with RWKV-4 169M and OPT-125m dimensions")
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch} x {args.ctx_len} tokens")
    print(f"{'model':22} {'load s':>7} {'dense ms':>9} {'thresh ms':>10} {'ratio':>6} {'sparsity':>9}")
    names = ["embedded:rwkv4-tiny", "embedded:opt-tiny"]
    if args.hub_shaped:
        names += ["rwkv-4-169m-shaped", "opt-125m-shaped"]
    for name in names:
        r = bench(name, args.batch, args.ctx_len, args.repeats)
        print(f"{name:22} {r['load_s']:7.2f} {r['dense_s'] * 1e3:9.1f} {r['thresholded_s'] * 1e3:10.1f} "
              f"{r['ratio']:6.3f} {r['sparsity']:9.1%}")


if __name__ == "__main__":
    main()
