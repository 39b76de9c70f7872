"""A/B of a training-data change at equal compute: two arms continue the same checkpoint for the same
wall time, the baseline recipe (A) and the recipe with the change (B), then both are scored on the real
pair (Motorcycle, three views) and on held-out synthetic from the *baseline* generator.

    .venv/bin/python benchmarks/generator_ab.py --minutes 20 --change data.supersample=2 \
        [--init stereonet_ros/checkpoints/stereonet_v3_candidate.safetensors] [--override KEY=VALUE ...] \
        [--out benchmarks/results/FILE.md]

Equal compute means equal wall time on the same machine, one arm after the other: a change that makes
the generator slower pays for it in fewer samples (the table gives each arm's samples). ``--override``
applies to both arms (e.g. ``device=cuda batch_size=32 workers=16`` on a GPU). Issue 9 asks for one such
run per generator change before it is adopted, with its numbers in the commit.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--minutes', type=float, required=True, help='wall time of each arm')
    parser.add_argument('--change', action='append', required=True, metavar='KEY=VALUE',
                        help="arm B's change to the recipe (TrainConfig keys, e.g. data.supersample=2)")
    parser.add_argument('--override', action='append', default=[], metavar='KEY=VALUE', help='both arms')
    parser.add_argument('--init', type=Path, help='checkpoint both arms continue (default: the latest best)')
    parser.add_argument('--synthetic-samples', type=int, default=32)
    parser.add_argument('--out', type=Path, help='also write the table here')
    arguments = parser.parse_args()
    from stereonet_ros.visit.burst import start_checkpoint

    init = arguments.init or start_checkpoint()
    folder = Path(tempfile.mkdtemp(prefix='generator_ab_'))
    arms = {'A (recipe)': arguments.override, 'B (' + ', '.join(arguments.change) + ')':
            [*arguments.override, *arguments.change]}
    rows = {}
    for index, (name, overrides) in enumerate(arms.items()):
        trained = arm(f'arm{index}', overrides, init, arguments.minutes, folder)
        rows[name] = {**trained, **score(Path(str(trained['checkpoint'])), arguments.synthetic_samples)}
    base = rows['A (recipe)']
    lines = [f'Generator A/B, {date.today().isoformat()}, {platform.machine()} with {os.cpu_count()} CPUs: each arm '
             f'{arguments.minutes:g} min from {init.name}' + (f', both with {" ".join(arguments.override)}'
                                                               if arguments.override else '') + '.', '',
             '| arm | steps | samples | Motorcycle dense EPE | ratio | bad-3 % | held-out synthetic EPE | guide rise |',
             '| --- | --- | --- | --- | --- | --- | --- | --- |']
    for name, row in rows.items():
        lines.append(f'| {name} | {row["steps"]} | {row["samples"]} | {row["motorcycle_epe"]:.3f} | '
                     f'{row["motorcycle_epe"] / base["motorcycle_epe"]:.3f} | {row["motorcycle_bad3"]:.1f} | '
                     f'{row["synthetic_epe"]:.3f} | {row["guide_rise"]:+.3f} |')
    text = '\n'.join(lines)
    publish(text, arguments.out)
    print(json.dumps({name: {k: v for k, v in row.items() if k != 'checkpoint'} for name, row in rows.items()}))
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
