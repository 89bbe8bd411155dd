"""Train the embedded models: a byte-level BPE tokenizer and a small RWKV-4 or OPT, seeded and resumable."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from thresh_opt.architectures import SmallModel
from thresh_opt.errors import UserError
from thresh_opt.objectives.text import mean_loss, next_word_accuracy, next_word_examples, perplexity, token_chunks
from thresh_opt.registry import ARCHITECTURES
from thresh_opt.training.corpus import load_corpus

EOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass
class TrainConfig:
    """Everything that determines a training run (same config + seed -> same model)."""

    arch: str = "rwkv4"  # a registered architecture (thresh_opt.architectures)
    layers: int = 6
    hidden: int = 256
    heads: int = 4  # opt only
    vocab_size: int = 4096
    ctx_len: int = 128
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    max_steps: int = 4000
    eval_every: int = 250
    weight_decay: float = 0.05
    seed: int = 0
    threads: int = 0  # 0: torch default
    sources: list[str] = field(default_factory=lambda: ["kjv"])


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style), so that any text round-trips."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=PAD)


def build_model(cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A freshly initialised model of the configured architecture."""
    if cfg.arch not in ARCHITECTURES:
        raise UserError(f"arch {cfg.arch!r} is not trainable here; allowed: {', '.join(ARCHITECTURES.names())}")
    if cfg.arch == "rwkv4" and cfg.layers < 2:
        raise UserError("--layers: RWKV-4 needs at least 2 blocks (its initialisation interpolates over depth)")
    size = SmallModel(cfg.layers, cfg.hidden, cfg.heads, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    return ARCHITECTURES[cfg.arch].target.build(size)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    cfg: TrainConfig,
    out_dir: Path,
    time_limit_s: float | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (resuming from out_dir/checkpoint if present) and export an fp16 model to out_dir/model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    corpus = load_corpus(cfg.sources)
    train_text = "\n".join(s.train for s in corpus)
    heldout_text = "\n".join(s.heldout for s in corpus)
    (out_dir / "heldout.txt").write_text(heldout_text + "\n", encoding="utf-8")

    tok_dir = out_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    else:
        tokenizer = train_tokenizer([s.train for s in corpus], cfg.vocab_size)
        tokenizer.save_pretrained(tok_dir)
    stream = torch.tensor(tokenizer(train_text, return_attention_mask=False)["input_ids"], dtype=torch.long)
    heldout_chunks = token_chunks(tokenizer, heldout_text, cfg.ctx_len)
    log(f"train tokens {len(stream):,}  held-out chunks {len(heldout_chunks)} x {cfg.ctx_len}")

    model = build_model(cfg, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    state: dict[str, Any] = {"step": 0, "seconds": 0.0, "tokens": 0, "history": []}
    ckpt = out_dir / "checkpoint"
    if (ckpt / "state.json").exists():
        model.load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        gen.set_state(torch.load(ckpt / "generator.pt", weights_only=True))
        state = json.loads((ckpt / "state.json").read_text())
        log(f"resumed at step {state['step']}")

    def evaluate() -> float:
        model.eval()
        loss = mean_loss(model, heldout_chunks[:64], batch_size=16)
        model.train()
        return loss

    def save_checkpoint() -> None:
        ckpt.mkdir(exist_ok=True)
        torch.save(model.state_dict(), ckpt / "model.pt")  # tied weights: not safetensors
        torch.save(opt.state_dict(), ckpt / "optimizer.pt")
        torch.save(gen.get_state(), ckpt / "generator.pt")
        (ckpt / "state.json").write_text(json.dumps(state, indent=1))

    model.train()
    started = time.perf_counter() - state["seconds"]
    run_start = time.perf_counter()
    while state["step"] < cfg.max_steps:
        starts = torch.randint(0, len(stream) - cfg.ctx_len - 1, (cfg.batch_size,), generator=gen)
        batch = torch.stack([stream[s : s + cfg.ctx_len + 1] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, state["step"])
        loss = model(input_ids=batch, labels=batch).loss  # the model shifts labels itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        state["tokens"] += batch[:, 1:].numel()
        state["seconds"] = time.perf_counter() - started
        done = state["step"] >= cfg.max_steps
        out_of_time = time_limit_s is not None and time.perf_counter() - run_start > time_limit_s
        if state["step"] % cfg.eval_every == 0 or done or out_of_time:
            val = evaluate()
            state["history"].append({"step": state["step"], "train_loss": loss.item(), "heldout_loss": val})
            rate = state["tokens"] / state["seconds"]
            log(f"step {state['step']}/{cfg.max_steps} train {loss.item():.3f} held-out {val:.3f} ({rate:,.0f} tok/s)")
            save_checkpoint()
        if out_of_time:
            log("time limit reached: exporting the model as it is")
            break
    return export(cfg, model, tokenizer, heldout_text, heldout_chunks, state, out_dir / "model")


def export(
    cfg: TrainConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    heldout_text: str,
    heldout_chunks: torch.Tensor,
    state: dict,
    out: Path,
) -> dict:
    """Save fp16 weights, tokenizer, config, held-out text and a model card with measured metrics."""
    model.eval()
    model.half().float()  # measure the weights as shipped (float16), not the training copy
    metrics = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_seen": state["tokens"],
        "steps": state["step"],
        "training_seconds": round(state["seconds"], 1),
        **measure(model, tokenizer, heldout_text, heldout_chunks),
    }
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out)
    model.float()
    tokenizer.save_pretrained(out)
    (out / "heldout.txt").write_text(heldout_text + "\n", encoding="utf-8")
    (out / "training.json").write_text(json.dumps({"config": asdict(cfg), "metrics": metrics}, indent=1))
    return metrics


def measure(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, heldout_text: str,
            heldout_chunks: torch.Tensor) -> dict:
    """Held-out loss, perplexity and next-word accuracy (500 lines), as the model card reports them."""
    loss = mean_loss(model, heldout_chunks, batch_size=16)
    acc = next_word_accuracy(model, tokenizer, next_word_examples(heldout_text, limit=500))
    return {
        "heldout_loss": round(loss, 4),
        "heldout_perplexity": round(perplexity(loss), 2),
        "heldout_next_word_accuracy": round(acc, 4),
        "heldout_tokens": heldout_chunks.numel(),
    }
