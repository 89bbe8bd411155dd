"""Language-modelling objectives on plain text: token chunks, mean loss, perplexity, next-word accuracy."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

_LAST_WORD = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]+)[^A-Za-z]*$", re.S)


def token_chunks(tokenizer: PreTrainedTokenizerBase, text: str, ctx_len: int) -> torch.Tensor:
    """Tokenize text and cut it into non-overlapping chunks of ctx_len tokens (remainder dropped)."""
    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    n = len(ids) // ctx_len
    if n == 0:
        raise ValueError(f"text has {len(ids)} tokens, fewer than one chunk of {ctx_len}")
    return torch.tensor(ids[: n * ctx_len], dtype=torch.long).view(n, ctx_len)


@torch.no_grad()
def mean_loss(model: nn.Module, chunks: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of the chunks (the head applied a
    slice at a time, see `thresh_opt.models.head`)."""
    from thresh_opt.models.head import HeadLoss

    device = next(model.parameters()).device
    head = HeadLoss.of(model, chunks[:1].to(device))
    total, count = 0.0, 0
    for batch in chunks.split(batch_size):
        batch = batch.to(device)
        total += head.loss_sum(partial(model, input_ids=batch, use_cache=False), batch)
        count += batch[:, 1:].numel()
    return total / count


def perplexity(loss: float) -> float:
    """Perplexity from a mean loss in nats."""
    return math.exp(loss)


@dataclass(frozen=True)
class NextWordExample:
    """A passage split into context and its last word (LAMBADA style)."""

    context: str
    word: str


def next_word_examples(text: str, min_words: int = 8, limit: int | None = None) -> list[NextWordExample]:
    """Passages (one per line) of at least min_words words whose last word is alphabetic."""
    examples = []
    for line in text.splitlines():
        m = _LAST_WORD.match(line.strip())
        if m and len(line.split()) >= min_words:
            examples.append(NextWordExample(m.group("context"), m.group("word")))
            if limit is not None and len(examples) >= limit:
                break
    return examples


@torch.no_grad()
def next_word_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[NextWordExample],
    batch_size: int = 16,
    max_context: int = 256,
) -> float:
    """Fraction of examples whose last word is the greedy continuation, every token of it."""
    if not examples:
        raise ValueError("no next-word examples")
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(examples), batch_size):
        rows = []
        for ex in examples[start : start + batch_size]:
            ctx = tokenizer(ex.context, return_attention_mask=False)["input_ids"][-max_context:]
            tgt = tokenizer(" " + ex.word, return_attention_mask=False)["input_ids"]
            rows.append((ctx, tgt))
        width = max(len(c) + len(t) for c, t in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (c, t) in enumerate(rows):  # right padding keeps causal models (and RWKV's state) exact
            seq = c + t
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        pred = logits.argmax(-1).cpu()
        for i, (c, t) in enumerate(rows):
            positions = torch.arange(len(c) - 1, len(c) + len(t) - 1)
            correct += int(torch.equal(pred[i, positions], torch.tensor(t)))
    return correct / len(examples)
