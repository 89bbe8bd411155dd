"""Training text for the embedded models: sources, cleaning and a fixed held-out split."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

KJV_SPEC = "Gen1:1-Rev22:21"
KJV_SOURCES = {"kjv": "verses", "kjv-print": "print"}
_VERSE_REF = re.compile(r"^\S+\d+:\d+\s+")

# Held-out blocks are contiguous runs of lines, so that held-out text is never a neighbour line of
# a training line (less leakage than a line-level split), and the split depends only on the text.
BLOCK_LINES = 100
HELDOUT_EVERY = 20  # 1 block in 20 -> 5% held out


@dataclass(frozen=True)
class TextSplit:
    """Train and held-out text of one source."""

    name: str
    train: str
    heldout: str


def read_kjv(layout: str = "verses") -> str:
    """The King James Bible from Debian's `bible-kjv-text` package.

    layout "verses": one verse per line, references stripped. "print": the `bible` tool's own page
    layout (chapter headings, verse numbers, lines wrapped at 80 columns), which the shipped embedded
    models were trained on.
    """
    exe = shutil.which("bible")
    if exe is None:
        raise FileNotFoundError(
            "corpus 'kjv' needs Debian's bible-kjv-text package: apt-get install bible-kjv-text"
        )
    flags = ["-f"] if layout == "verses" else []
    out = subprocess.run([exe, *flags, KJV_SPEC], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ.get("PATH", ""), "COLUMNS": "80"}).stdout
    if layout == "print":
        return out
    return "\n".join(_VERSE_REF.sub("", line) for line in out.splitlines() if line.strip())


def read_text(source: str) -> str:
    """Read a corpus source: 'kjv', 'kjv-print' or a path to a UTF-8 text file."""
    if source in KJV_SOURCES:
        return read_kjv(KJV_SOURCES[source])
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"corpus source {source!r}: no such file (use 'kjv', 'kjv-print' or a text file)")
    return path.read_text(encoding="utf-8")


def split_text(name: str, text: str) -> TextSplit:
    """Split text into train and held-out parts by fixed blocks of lines."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < BLOCK_LINES * HELDOUT_EVERY:  # too short for whole blocks: hold out the last 5%
        cut = max(1, len(lines) // HELDOUT_EVERY)
        return TextSplit(name=name, train="\n".join(lines[:-cut]), heldout="\n".join(lines[-cut:]))
    train: list[str] = []
    heldout: list[str] = []
    for start in range(0, len(lines), BLOCK_LINES):
        block = lines[start : start + BLOCK_LINES]
        is_heldout = (start // BLOCK_LINES) % HELDOUT_EVERY == HELDOUT_EVERY - 1
        (heldout if is_heldout else train).extend(block)
    return TextSplit(name=name, train="\n".join(train), heldout="\n".join(heldout))


def load_corpus(sources: list[str]) -> list[TextSplit]:
    """Read and split every source."""
    return [split_text(s if s in KJV_SOURCES else Path(s).stem, read_text(s)) for s in sources]
