"""How a benchmark hands over its table: printed, and with ``--out`` also written for ``benchmarks/results/``."""
from __future__ import annotations

from pathlib import Path


def publish(text: str, out: Path | None) -> None:
    """Print ``text``; with ``out``, also write it there (folders made as needed)."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + '\n')
