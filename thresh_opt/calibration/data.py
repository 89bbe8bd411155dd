"""Calibration token chunks from text, JSON Lines or a Hugging Face dataset, tokenized once and cached."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field

from thresh_opt.config import atomic_write
from thresh_opt.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from thresh_opt.models import LoadedModel

HELDOUT = "heldout"
HF_PREFIX = "hf:"


class CalibrationSpec(BaseModel):
    """Which text, cut how: `count` chunks of `ctx_len` tokens picked with `seed`.

    Args:
        source: 'heldout' (first half of an embedded model's held-out text), a .txt file, a .jsonl file, or
            'hf:DATASET_ID'.
        ctx_len: tokens per chunk (the paper used 1,024).
        count: chunks to keep; fewer are used when the text is shorter.
        seed: which chunks are kept.
        text_field: the text field of JSON Lines records or dataset rows.
        split: dataset split (hub datasets only).
        dataset_config: dataset configuration name (hub datasets only).
        documents: use only the first N documents (lines of a .txt count as one document).
    """

    model_config = ConfigDict(extra="forbid")

    source: str = HELDOUT
    ctx_len: int = Field(128, ge=2)
    count: int = Field(32, ge=1)
    seed: int = 0
    text_field: str = "text"
    split: str = "train"
    dataset_config: str | None = None
    documents: int | None = Field(None, ge=1)


def cache_dir() -> Path:
    """Where tokenized chunks and statistics are cached: $THRESH_OPT_CACHE or ~/.cache/thresh-opt."""
    return Path(os.environ.get("THRESH_OPT_CACHE", Path.home() / ".cache" / "thresh-opt"))


def _documents(spec: CalibrationSpec, loaded: LoadedModel) -> list[str]:
    src = spec.source
    if src == HELDOUT:
        return [loaded.heldout_part("calibration")]
    if src.startswith(HF_PREFIX):
        return _hub_documents(spec)
    path = Path(src)
    if not path.is_file():
        raise UserError(f"calibration source {src!r}: no such file (use 'heldout', a .txt or .jsonl file, or hf:ID)")
    if path.suffix in (".jsonl", ".json"):
        docs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(spec.text_field), str):
                raise UserError(f"{path}:{n}: no string field {spec.text_field!r} (set text_field)")
            docs.append(record[spec.text_field])
        return docs
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _hub_documents(spec: CalibrationSpec) -> list[str]:
    import datasets

    dataset_id = spec.source[len(HF_PREFIX) :]
    split = spec.split if spec.documents is None else f"{spec.split}[:{spec.documents}]"
    try:
        ds = datasets.load_dataset(dataset_id, spec.dataset_config, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, bad split: all reach the user as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"calibration source {spec.source!r} cannot be loaded: {first}") from None
    if spec.text_field not in ds.column_names:
        raise UserError(f"{spec.source}: no column {spec.text_field!r}; columns: {', '.join(ds.column_names)}")
    return list(ds[spec.text_field])


def _source_fingerprint(spec: CalibrationSpec, loaded: LoadedModel) -> str:
    if spec.source == HELDOUT:
        return hashlib.sha256(loaded.heldout_part("calibration").encode()).hexdigest()
    path = Path(spec.source)
    if path.is_file():
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return spec.source


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A digest of the tokenizer's full definition (fast tokenizers) or its name and size."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256(text.encode()).hexdigest()


def chunks_key(spec: CalibrationSpec, loaded: LoadedModel) -> str:
    """Cache key of a calibration set: tokenizer, source contents and every setting."""
    parts = [tokenizer_fingerprint(loaded.tokenizer), _source_fingerprint(spec, loaded), spec.model_dump_json()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def tokenize_documents(tokenizer: PreTrainedTokenizerBase, docs: list[str]) -> torch.Tensor:
    """One token stream: documents joined by the end-of-text token."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, return_attention_mask=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def calibration_chunks(loaded: LoadedModel, spec: CalibrationSpec | None = None,
                       cache: Path | None = None) -> torch.Tensor:
    """The calibration set as a (count, ctx_len) tensor, from the disk cache when it is there."""
    spec = spec or CalibrationSpec()
    folder = (cache or cache_dir()) / "chunks"
    path = folder / f"{chunks_key(spec, loaded)}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    docs = _documents(spec, loaded)
    if spec.documents is not None and not spec.source.startswith(HF_PREFIX):
        docs = docs[: spec.documents]
    stream = tokenize_documents(loaded.tokenizer, docs)
    n = len(stream) // spec.ctx_len
    if n == 0:
        raise UserError(f"calibration source {spec.source!r} has {len(stream)} tokens, "
                        f"fewer than one chunk of {spec.ctx_len}")
    chunks = stream[: n * spec.ctx_len].view(n, spec.ctx_len)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed))[: spec.count]
    chunks = chunks[order.sort().values].contiguous()  # keep text order among the chosen chunks
    atomic_write(path, lambda tmp: torch.save(chunks, tmp))
    return chunks
