"""Running one benchmark configuration per fresh subprocess (so allocator settings cannot leak)."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence


def run_worker(code: str, arguments: Sequence[object], timeout: float = 1800) -> dict[str, object]:
    """Run ``python -c code *arguments``; its last stdout line is a JSON object, returned."""
    completed = subprocess.run([sys.executable, '-c', code, *map(str, arguments)], capture_output=True, text=True,
                               timeout=timeout)
    if completed.returncode != 0:
        raise SystemExit(f'benchmark worker failed ({" ".join(map(str, arguments))}):\n{completed.stderr}')
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def alternate(variants: Sequence[str], rounds: int, measure: object) -> dict[str, dict[str, object]]:
    """Measure each variant ``rounds`` times, alternating, pooling the 'times' lists (medians taken later)."""
    pooled: dict[str, dict[str, object]] = {variant: {'times': []} for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            result = measure(variant)  # type: ignore[operator]
            times = pooled[variant]['times']
            assert isinstance(times, list)
            times.extend(result['times'])
            pooled[variant].update({key: value for key, value in result.items() if key != 'times'})
    return pooled


def median(values: object) -> float:
    assert isinstance(values, list)
    return float(statistics.median(values))
