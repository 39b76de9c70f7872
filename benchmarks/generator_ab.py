"""A/B of training-data changes at equal compute: every arm continues the same checkpoint for the same
wall time, the baseline recipe (A) and the recipe with one change each (B...), then all are scored on the
real pair (Motorcycle, dense) and on held-out synthetic from the *baseline* generator.

    .venv/bin/python benchmarks/generator_ab.py --minutes 20 --arm data.supersample=2 \
        --arm 'data.extra_photos=true data.texture_scale_range=[0.25,1.0]' [--seed-arm] \
        [--init stereonet_ros/checkpoints/stereonet_v3_candidate.safetensors] [--override KEY=VALUE ...] \
        [--out benchmarks/results/FILE.md]

Equal compute means equal wall time on the same machine, one arm after the other: a change that makes
the generator slower pays for it in fewer samples (the table gives each arm's samples). ``--arm`` takes
one arm's changes, space-separated TrainConfig KEY=VALUE; ``--override`` applies to every arm (e.g.
``device=cuda batch_size=32 workers=16`` on a GPU). ``--seed-arm`` adds the baseline again on another
data seed: the spread between the two A rows is what a difference must beat to mean anything. Each row
also gives what the arm's generator draws (100 training samples): disparity p95 as a fraction of the
width and the occluded share of left pixels, beside Motorcycle's. Issue 9 asks for one such run per
generator change before it is adopted, with its numbers in the commit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
from _report import publish

ROOT = Path(__file__).resolve().parents[1]


def arm(name: str, overrides: list[str], init: Path, minutes: float, folder: Path) -> dict[str, object]:
    from stereonet_ros.config import load
    from stereonet_ros.training.train import TrainConfig, train

    config = load(TrainConfig, overrides=[f'init_checkpoint={init}', 'score_real_pair=false',
                                         'validate_every=1000000', 'checkpoint_every=50', 'log_every=25',
                                         'steps=1000000', *overrides])
    output = folder / name
    steps = train(config, output, progress=False, time_limit_s=minutes * 60.0)
    return {'steps': steps, 'samples': steps * config.batch_size, 'checkpoint': output / 'model_latest.safetensors'}


def score(checkpoint: Path, synthetic_samples: int) -> dict[str, float]:
    from stereonet_ros.evaluation.evaluate import OURS, evaluate
    from stereonet_ros.evaluation.refinement import refinement_scores
    from stereonet_ros.model.checkpoint import load_checkpoint
    from stereonet_ros.samples import motorcycle

    results = evaluate(str(checkpoint), ['motorcycle', 'synthetic'], device='cpu', with_sgbm=False,
                       synthetic_samples=synthetic_samples, log=lambda text: None)
    ours = {spec.split(':')[0]: entry['methods'][OURS]['dense'] for spec, entry in results['sets'].items()}
    pair = motorcycle()
    refinement = refinement_scores(load_checkpoint(checkpoint), pair.left, pair.right, pair.disparity)
    return {'motorcycle_epe': ours['motorcycle']['epe'], 'motorcycle_bad3': ours['motorcycle']['bad3'],
            'synthetic_epe': ours['synthetic']['epe'], 'guide_rise': refinement.guide_rise_epe}


def scene_statistics(overrides: list[str], samples: int = 100) -> dict[str, float]:
    """What an arm's training generator draws: disparity p95 / width and the occluded share (left view)."""
    from stereonet_ros.config import load
    from stereonet_ros.data.synthetic import generate_sample
    from stereonet_ros.training.train import TrainConfig

    data = load(TrainConfig, overrides=overrides).data
    drawn = [generate_sample(data, seed=12345, index=index) for index in range(samples)]
    p95 = float(np.mean([np.percentile(s.disp_left, 95) / data.width for s in drawn]))
    return {'disparity_p95_width': p95, 'occluded': float(np.mean([s.occluded_left.mean() for s in drawn]))}


def motorcycle_statistics() -> dict[str, float]:
    """The same for the real pair, over its ground truth (occluded and unknown pixels are not finite)."""
    from stereonet_ros.samples import motorcycle

    disparity = motorcycle().disparity
    known = np.isfinite(disparity)
    return {'disparity_p95_width': float(np.percentile(disparity[known], 95) / disparity.shape[1]),
            'occluded': float(1.0 - known.mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--minutes', type=float, required=True, help='wall time of each arm')
    parser.add_argument('--arm', action='append', required=True, metavar="'KEY=VALUE ...'",
                        help="one arm's changes to the recipe (TrainConfig keys, e.g. data.supersample=2)")
    parser.add_argument('--seed-arm', action='store_true', help='the baseline again on another data seed')
    parser.add_argument('--override', action='append', default=[], metavar='KEY=VALUE', help='every arm')
    parser.add_argument('--init', type=Path, help='checkpoint every arm continues (default: the latest best)')
    parser.add_argument('--synthetic-samples', type=int, default=32)
    parser.add_argument('--out', type=Path, help='also write the table here')
    arguments = parser.parse_args()
    from stereonet_ros.config import load
    from stereonet_ros.training.train import TrainConfig
    from stereonet_ros.visit.burst import start_checkpoint

    init = arguments.init or start_checkpoint()
    folder = Path(tempfile.mkdtemp(prefix='generator_ab_'))
    arms = {'A (recipe)': list(arguments.override)}
    if arguments.seed_arm:
        seed = load(TrainConfig, overrides=arguments.override).seed + 1
        arms[f'A (recipe, seed {seed})'] = [*arguments.override, f'seed={seed}']
    for changes in arguments.arm:
        arms['B (' + ', '.join(changes.split()) + ')'] = [*arguments.override, *changes.split()]
    for overrides in arms.values():
        load(TrainConfig, overrides=overrides)  # a bad key fails now, not after the first arm's minutes
    rows = {}
    for index, (name, overrides) in enumerate(arms.items()):
        print(f'generator_ab: arm {name}', file=sys.stderr, flush=True)
        trained = arm(f'arm{index}', overrides, init, arguments.minutes, folder)
        rows[name] = {**trained, **score(Path(str(trained['checkpoint'])), arguments.synthetic_samples),
                      **scene_statistics(overrides)}
    base = rows['A (recipe)']
    real = motorcycle_statistics()
    lines = [f'Generator A/B, {date.today().isoformat()}, {platform.machine()} with {os.cpu_count()} CPUs: each arm '
             f'{arguments.minutes:g} min from {init.name}' + (f', every arm with {" ".join(arguments.override)}'
                                                               if arguments.override else '') + '.', '',
             '| arm | steps | samples | Motorcycle dense EPE | ratio | bad-3 % | held-out synthetic EPE | guide rise '
             '| disparity p95 / width | occluded % |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for name, row in rows.items():
        lines.append(f'| {name} | {row["steps"]} | {row["samples"]} | {row["motorcycle_epe"]:.3f} | '
                     f'{row["motorcycle_epe"] / base["motorcycle_epe"]:.3f} | {row["motorcycle_bad3"]:.1f} | '
                     f'{row["synthetic_epe"]:.3f} | {row["guide_rise"]:+.3f} | {row["disparity_p95_width"]:.3f} | '
                     f'{100 * row["occluded"]:.1f} |')
    lines.append(f'| Motorcycle (for reference) | | | | | | | | {real["disparity_p95_width"]:.3f} | '
                 f'{100 * real["occluded"]:.1f} (no finite ground truth) |')
    text = '\n'.join(lines)
    publish(text, arguments.out)
    print(json.dumps({name: {k: v for k, v in row.items() if k != 'checkpoint'} for name, row in rows.items()}))
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
