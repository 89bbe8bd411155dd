"""The architectures with a SENECA cost model and a training recipe, declared once.

An entry (in ``thresh_opt.registry.ARCHITECTURES``) holds an :class:`Architecture`: its transformers
class, where its blocks and linear maps are, how its dimensions are read from a transformers config,
the per-token work outside its linear maps (for the hardware model) and how a small one is built from
scratch (for `thresh-opt model train`); its options model is the dimensions a user may give
(`thresh-opt hardware estimate --arch`). Where the thresholds sit is declared apart, as YAML data
(``thresh_opt/models/placements/``), so that any causal LM can be thresholded by a placement spec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from thresh_opt.hardware.dims import DenseWork, ModelDims, elementwise
from thresh_opt.registry import ARCHITECTURES

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class SmallModel:
    """The dimensions of a model built from scratch (`thresh-opt model train`)."""

    layers: int
    hidden: int
    heads: int
    vocab: int
    eos: int
    pad: int


@dataclass(frozen=True)
class Architecture:
    """What thresh-opt knows of one architecture beyond its placement spec.

    Args:
        label: for model cards and tables.
        hf_class: the transformers causal-LM class.
        block_prefix: the module-name prefix of its blocks (``blocks.3.att.key``).
        linear: per block, thresholded-site kind -> (input width, output width) as multiples of the model
            width ``d`` and feed-forward width ``f``, in placement order.
        dense_input: kinds whose input is never thresholded (the attention output; the head).
        ffn_attr, heads_attr: the transformers config attributes of the feed-forward width and heads.
        attention: keeps a KV cache (per-token cost grows with the context).
        block_work: (dims, block) -> the per-token work outside the linear maps of that block.
        build: a freshly initialised transformers model of these dimensions.
    """

    label: str
    hf_class: str
    block_prefix: str
    linear: Mapping[str, tuple[str, str]]
    dense_input: frozenset[str]
    ffn_attr: str
    heads_attr: str | None
    attention: bool
    block_work: Callable[[ModelDims, int], list[DenseWork]]
    build: Callable[[SmallModel], PreTrainedModel]

    def dims(self, name: str, config: Any, context: int | None = None, head: bool = False) -> ModelDims:
        """The hardware model's dimensions from a transformers config."""
        heads = getattr(config, self.heads_attr) if self.heads_attr else None
        return ModelDims(name, config.num_hidden_layers, config.hidden_size, getattr(config, self.ffn_attr), context,
                         heads, config.vocab_size if head else None)


class RwkvDimensions(BaseModel):
    """RWKV-4 dimensions: blocks, width, feed-forward width (default 4d), vocabulary (counts the head)."""

    model_config = ConfigDict(extra="forbid")
    layers: int = Field(ge=1)
    hidden: int = Field(ge=1)
    ffn: int | None = Field(None, ge=1)
    vocab: int | None = Field(None, ge=1)


class OptDimensions(RwkvDimensions):
    """OPT dimensions: RWKV's, plus attention heads (default d/64) and the context attended to (1024)."""

    heads: int | None = Field(None, ge=1)
    context: int | None = Field(None, ge=1)


def rwkv4_block_work(dims: ModelDims, i: int) -> list[DenseWork]:
    """One RWKV-4 block's work outside the linear maps: token shift, WKV and gates."""
    d, f, p = dims.hidden, dims.ffn_width, f"blocks.{i}"
    return [
        # token shift: five mixes x*mu + prev*(1-mu)
        elementwise(f"{p}.token_shift", "token_shift", i, 5 * 3 * d),
        # WKV of transformers' rwkv_linear_attention_cpu per channel: 18 add/mul/max, 4 exp, 1 division
        DenseWork(f"{p}.wkv", "wkv", "recurrence", i, 18 * d, 5 * d, loads=23 * d, stores=23 * d),
        # sigmoid(r) * wkv, relu(k)^2, sigmoid(r) * v, two residual adds
        elementwise(f"{p}.gates", "gates", i, d + 2 * f + d + 2 * d, 2 * d),
    ]


def opt_block_work(dims: ModelDims, i: int) -> list[DenseWork]:
    """One OPT block's work outside the linear maps: attention over the cache, biases and activations."""
    d, f, p = dims.hidden, dims.ffn_width, f"layers.{i}"
    n, h = dims.attended, dims.head_count
    return [
        # q.k over n cached keys and the weighted sum over n cached values: 2 x n x d multiply-adds,
        # each reading one cached element; softmax: n x h exponentials and 3 n h operations
        DenseWork(f"{p}.attention", "attention", "attention", i, 4 * n * d + 3 * n * h, n * h,
                  loads=2 * n * d, stores=2 * d),
        # biases of q, k, v, out_proj, fc1, fc2; relu; two residual adds
        elementwise(f"{p}.gates", "gates", i, 5 * d + f + f + 2 * d),
    ]


def _rwkv4(m: SmallModel) -> PreTrainedModel:
    from transformers import RwkvConfig, RwkvForCausalLM

    config = RwkvConfig(hidden_size=m.hidden, attention_hidden_size=m.hidden, intermediate_size=4 * m.hidden,
                        num_hidden_layers=m.layers, context_length=1024,
                        rescale_every=0,  # no in-place weight rescaling at inference: thresholds see stable tensors
                        tie_word_embeddings=False, vocab_size=m.vocab, bos_token_id=m.eos, eos_token_id=m.eos)
    return RwkvForCausalLM(config)


def _opt(m: SmallModel) -> PreTrainedModel:
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(hidden_size=m.hidden, word_embed_proj_dim=m.hidden, ffn_dim=4 * m.hidden,
                       num_hidden_layers=m.layers, num_attention_heads=m.heads, max_position_embeddings=1024,
                       dropout=0.0, attention_dropout=0.0, pad_token_id=m.pad, vocab_size=m.vocab,
                       bos_token_id=m.eos, eos_token_id=m.eos)
    return OPTForCausalLM(config)


ARCHITECTURES.register("rwkv4", Architecture(
    label="RWKV-4 (transformers RwkvForCausalLM)", hf_class="RwkvForCausalLM", block_prefix="blocks",
    linear={"att.key": ("d", "d"), "att.receptance": ("d", "d"), "att.value": ("d", "d"), "att.output": ("d", "d"),
            "ffn.receptance": ("d", "d"), "ffn.key": ("d", "f"), "ffn.value": ("f", "d")},
    dense_input=frozenset({"head"}), ffn_attr="intermediate_size", heads_attr=None, attention=False,
    block_work=rwkv4_block_work, build=_rwkv4), RwkvDimensions, thresholds_per_block=7)
ARCHITECTURES.register("opt", Architecture(
    label="OPT (transformers OPTForCausalLM)", hf_class="OPTForCausalLM", block_prefix="layers",
    # the qkv tensor feeds the three d x d maps q, k and v
    linear={"qkv": ("d", "3d"), "out_proj": ("d", "d"), "fc1": ("d", "f"), "fc2": ("f", "d")},
    dense_input=frozenset({"out_proj", "head"}), ffn_attr="ffn_dim", heads_attr="num_attention_heads", attention=True,
    block_work=opt_block_work, build=_opt), OptDimensions, thresholds_per_block=3)
