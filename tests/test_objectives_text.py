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


def test_the_loss_from_the_heads_input_in_slices_matches_the_full_logits(rwkv, opt, monkeypatch):
    from thresh_opt.models import head

    for loaded in (rwkv, opt):
        ids = chunks_of(loaded, 3)
        sliced, whole = head.HeadLoss(loaded.model, ids), head.HeadLoss(loaded.model, ids, sliced=False)
        assert sliced.sliced and not whole.sliced
        vocab = loaded.model.get_output_embeddings().out_features
        monkeypatch.setattr(head, "SLICE_BYTES", 4 * vocab * 7)  # slices of 7 tokens: many, and a ragged last one
        with torch.no_grad():
            own = loaded.model(input_ids=ids, labels=ids).loss.item() * ids[:, 1:].numel()

        def forward(loaded=loaded, ids=ids):
            return loaded.model(input_ids=ids, use_cache=False)

        assert math.isclose(sliced.loss_sum(forward, ids), own, rel_tol=1e-5)
        assert math.isclose(whole.loss_sum(forward, ids), own, rel_tol=1e-5)


def test_a_model_that_changes_its_logits_after_the_head_keeps_the_full_forward(rwkv):
    from thresh_opt.models.head import HeadLoss

    def soft_cap(_m, _args, out):
        out.logits = 5.0 * torch.tanh(out.logits / 5.0)
        return out

    handle = rwkv.model.register_forward_hook(soft_cap)
    try:
        ids = chunks_of(rwkv, 2)
        loss = HeadLoss(rwkv.model, ids)
        assert not loss.sliced
        with torch.no_grad():
            capped = torch.nn.functional.cross_entropy(rwkv.model(input_ids=ids).logits[:, :-1].flatten(0, 1),
                                                       ids[:, 1:].flatten(), reduction="sum").item()
        assert math.isclose(loss.loss_sum(lambda: rwkv.model(input_ids=ids, use_cache=False), ids), capped,
                            rel_tol=1e-5)
    finally:
        handle.remove()


def test_next_word_examples_split_off_the_last_word():
    text = ("one two three four five six seven eight nine.\nshort line here\n"
            "and so the people went unto the mountain, Amen!")
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
