"""How a benchmark hands over its table (printed, and with ``--out`` also written for ``benchmarks/results/``), and
how it times settings against each other in one process."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

K = TypeVar('K')
T = TypeVar('T')


def publish(text: str, out: Path | None) -> None:
    """Print ``text``; with ``out``, also write it there (folders made as needed)."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + '\n')


def alternating(calls: Mapping[K, Callable[[], T]], repeats: int) -> tuple[dict[K, T], dict[K, float]]:
    """Each of ``calls`` ``repeats`` times, in turn (so that a drift in the machine's speed reaches them alike):
    (the last answer of each, the median seconds of each)."""
    answers: dict[K, T] = {}
    times: dict[K, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            answers[key] = call()
            times[key].append(time.perf_counter() - start)
    return answers, {key: statistics.median(seconds) for key, seconds in times.items()}
