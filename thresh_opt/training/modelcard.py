"""Model cards for trained models, written from the numbers the training run recorded."""

from __future__ import annotations

import json
from pathlib import Path

from thresh_opt.registry import ARCHITECTURES

LICENCES = {
    "kjv": "King James Bible (Debian package bible-kjv-text), one verse per line: public domain",
    "kjv-print": "King James Bible (Debian package bible-kjv-text) in the `bible` tool's print layout "
    "(chapter headings, verse numbers, 80-column lines): public domain",
    "wikitext-2-raw-v1.test": "WikiText-2 raw test split (Merity et al. 2016): CC BY-SA 3.0 / GFDL (Wikipedia text)",
}


def _source_line(source: str) -> str:
    stem = source if source in LICENCES else Path(source).stem
    return LICENCES.get(stem, f"{Path(source).name}: licence as stated by its provider")


def write_model_card(model_dir: Path) -> Path:
    """Write model_dir/README.md from model_dir/training.json and config.json."""
    record = json.loads((model_dir / "training.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    cfg, m = record["config"], record["metrics"]
    arch = ARCHITECTURES[cfg["arch"]].target.label
    sources = "\n".join(f"- {_source_line(s)}" for s in cfg["sources"])
    hours = m["training_seconds"] / 3600
    stopped = "" if m["steps"] >= cfg["max_steps"] else f"; this run was stopped by its time limit at step {m['steps']}"
    command = " ".join(
        ["thresh-opt model train", f"--arch {cfg['arch']}", "--out runs/train"]
        + [f"--source {s if s in LICENCES else '../shared/data/calibration/' + Path(s).name}" for s in cfg["sources"]]
        + [f"--{k.replace('_', '-')} {cfg[k]}" for k in ("layers", "hidden", "heads", "vocab_size", "ctx_len",
                                                          "batch_size", "lr", "weight_decay", "warmup_steps", "seed",
                                                          "threads")]
        + [f"--steps {cfg['max_steps']}"]
    )
    heads = ", " + str(cfg["heads"]) + " heads" if ARCHITECTURES[cfg["arch"]].target.heads_attr else ""
    warmup_steps, weight_decay = cfg["warmup_steps"], cfg["weight_decay"]
    threads = cfg["threads"] or "default"
    card = f"""# {model_dir.parent.name if model_dir.name == 'model' else model_dir.name}

A small {arch} trained from scratch by thresh-opt (`thresh-opt model train`), so that the toolkit runs
offline. It is a test subject for activation thresholds, not a useful language model.

## Architecture
- {cfg['layers']} blocks, hidden size {cfg['hidden']}, feed-forward {4 * cfg['hidden']}{heads}
- vocabulary {config['vocab_size']} (byte-level BPE trained on the training split)
- {m['parameters']:,} parameters, stored as float16 safetensors

## Training data
{sources}

Held-out split: every 20th block of 100 lines of each source (5%), never seen in training; shipped as
`heldout.txt` ({m['heldout_tokens']:,} tokens in {cfg['ctx_len']}-token chunks).

## Training
- {m['steps']:,} steps of {cfg['batch_size']} x {cfg['ctx_len']} tokens: {m['tokens_seen']:,} tokens seen
- AdamW, peak learning rate {cfg['lr']}, {warmup_steps} warm-up steps then cosine decay, weight decay {weight_decay}
- seed {cfg['seed']}, {threads} CPU thread(s), {m['training_seconds']:,.0f} s ({hours:.2f} h) of training

Reproduce (seeded: the same command gives the same weights{stopped}):

    {command}

## Held-out results
| metric | value |
|---|---|
| loss (nats/token) | {m['heldout_loss']:.4f} |
| perplexity | {m['heldout_perplexity']:.2f} |
| next-word accuracy (last word of held-out lines, greedy, 500 lines) | {m['heldout_next_word_accuracy']:.1%} |
"""
    path = model_dir / "README.md"
    path.write_text(card, encoding="utf-8")
    return path
