"""Text objectives: mean loss, next-word examples and accuracy."""

from __future__ import annotations

import math

import torch
from conftest import chunks_of

from thresh_opt.objectives.text import mean_loss, next_word_accuracy, next_word_examples, perplexity


def test_mean_loss_matches_the_models_own_loss(rwkv):
    ids = chunks_of(rwkv, 3)
    with torch.no_grad():
        own = rwkv.model(input_ids=ids, labels=ids).loss.item()
    assert math.isclose(mean_loss(rwkv.model, ids, batch_size=2), own, rel_tol=1e-5)
    assert perplexity(own) == math.exp(own)


def test_next_word_examples_split_off_the_last_word():
    text = "one two three four five six seven eight nine.\nshort line here\nand so the people went unto the mountain, Amen!"
    examples = next_word_examples(text)
    assert [(e.context, e.word) for e in examples] == [
        ("one two three four five six seven eight", "nine"),
        ("and so the people went unto the mountain,", "Amen"),
    ]


def test_next_word_accuracy_beats_chance_on_held_out_text(rwkv):
    examples = next_word_examples(rwkv.heldout_text, limit=64)
    acc = next_word_accuracy(rwkv.model, rwkv.tokenizer, examples)
    assert 0.0 <= acc <= 1.0
    # a trained model gets some words right; a 4k vocabulary at chance would get none of 64
    assert acc > 0.02
