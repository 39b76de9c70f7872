"""The synthetic generator's speed on one core, against another revision of it, in the same run.

    .venv/bin/python benchmarks/generator_speed.py [--against REV] [--samples 20] [--rounds 3] \
        [--override KEY=VALUE ...] [--out benchmarks/results/FILE.md]

``--against`` (default ``HEAD``) names a git revision whose ``stereonet_ros/data/synthetic.py`` is loaded beside
the working tree's; both render the same samples of the training recipe's generator (``TrainConfig().data``
with ``--override data.KEY=VALUE`` applied), interleaved sample by sample so that a machine's drift falls on
both alike. Reports ms per sample, samples/s and the speed-up, and whether every array of every sample is
bit-for-bit the same (a pure speed change must keep the training stream: runs resume by sample index).

A GPU visit trains with one DataLoader worker per core, so samples/s per core times the cores is what the
generator can feed (issue 10 asks for 200 samples/s on the H200 machine's 16 cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from types import ModuleType

import numpy as np
from _report import publish

ROOT = Path(__file__).resolve().parents[1]
MODULE = 'stereonet_ros/data/synthetic.py'


def load_revision(revision: str) -> ModuleType:
    """``MODULE`` as it is at git ``revision``, imported under a name of its own (the package beside it)."""
    source = subprocess.run(['git', 'show', f'{revision}:{MODULE}'], cwd=ROOT, capture_output=True, text=True)
    if source.returncode != 0:
        raise SystemExit(f'generator_speed: cannot read {MODULE} at {revision!r}: {source.stderr.strip()}')
    path = Path(tempfile.mkdtemp(prefix='generator_speed_')) / 'synthetic_at_revision.py'
    path.write_text(source.stdout)
    name = 'stereonet_ros.data._synthetic_at_revision'
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def identical(a: object, b: object) -> bool:
    """Every array field of two ``StereoSample``\\ s equal, dtype and NaN included."""
    for field in dataclasses.fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray) and not (x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)):
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--against', default='HEAD', help='git revision of the baseline (default HEAD)')
    parser.add_argument('--samples', type=int, default=20)
    parser.add_argument('--rounds', type=int, default=3, help='passes over the samples (timed: all of them)')
    parser.add_argument('--first-index', type=int, default=100, help='index of the first sample (seed 3)')
    parser.add_argument('--override', action='append', default=[], help='TrainConfig data.KEY=VALUE')
    parser.add_argument('--out', type=Path)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from stereonet_ros.config import load
    from stereonet_ros.data import synthetic as current
    from stereonet_ros.training.train import TrainConfig

    config = load(TrainConfig, overrides=args.override).data
    baseline = load_revision(args.against)
    sha = subprocess.run(['git', 'rev-parse', '--short', args.against], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    indices = range(args.first_index, args.first_index + args.samples)
    for index in indices[:1]:  # the photo cache and imports, outside the timing
        baseline.generate_sample(config, 3, index), current.generate_sample(config, 3, index)
    same = all(identical(baseline.generate_sample(config, 3, i), current.generate_sample(config, 3, i))
               for i in indices)
    seconds = {'baseline': 0.0, 'current': 0.0}
    for _ in range(args.rounds):
        for index in indices:
            for name, module in (('baseline', baseline), ('current', current)):
                began = time.perf_counter()
                module.generate_sample(config, 3, index)
                seconds[name] += time.perf_counter() - began
    count = args.samples * args.rounds
    rows = [f'| {label} | {seconds[name] / count * 1e3:.1f} | {count / seconds[name]:.2f} |'
            for name, label in (('baseline', f'{args.against} ({sha})'), ('current', 'working tree'))]
    cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                if line.startswith('model name')), platform.machine()) if Path('/proc/cpuinfo').exists() \
        else platform.machine()
    lines = [f'# Synthetic generator, one core ({date.today().isoformat()}, {cpu})',
             '', f'`benchmarks/generator_speed.py --against {args.against} --samples {args.samples} --rounds '
             f'{args.rounds}' + ''.join(f' --override {o}' for o in args.override) + '`: the recipe\'s generator '
             f'({config.width}x{config.height}, rig augmentation as configured), samples {indices.start}-'
             f'{indices.stop - 1} of seed 3, interleaved.', '',
             '| generator | ms per sample | samples/s |', '| --- | --- | --- |', *rows, '',
             f'Speed-up: {seconds["baseline"] / seconds["current"]:.3f}x. Every array of every sample bit-for-bit '
             f'the same as {args.against}\'s ({sha}): {"yes" if same else "NO"}.']
    publish('\n'.join(lines), args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
