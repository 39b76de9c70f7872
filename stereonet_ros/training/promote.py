"""Make a trained checkpoint the bundled default, with its measured accuracy in its provenance.

    python -m stereonet_ros.training.promote runs/default/model_best.safetensors [--synthetic-samples 32]

Runs ``stereonet-evaluate`` on the held-out synthetic set and the real Motorcycle pair (SGBM
measured in the same run), records the table in the checkpoint's provenance, and writes it to
``stereonet_ros/checkpoints/stereonet_default.safetensors``. The checkpoint is marked
*preliminary* (``Predictor`` then warns, quoting the figures) unless it meets the goal set for the
default: on Motorcycle, EPE and bad-3 below SGBM with stereo_image_proc's parameters, and on the
held-out synthetic set EPE <= 1.0 px. The flag is computed from the measurement, never set by hand.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stereonet_ros.inference import DEFAULT_CHECKPOINT

PROGRAM = 'python -m stereonet_ros.training.promote'
SYNTHETIC_EPE_GOAL = 1.0


def goal_report(results: dict[str, Any]) -> tuple[bool, str]:
    """(goal met, one-line summary) from :func:`stereonet_ros.evaluation.evaluate.evaluate` results."""
    real = results['sets']['motorcycle']['methods']
    ours, sgbm = real['stereonet'], real['sgbm-stereo_image_proc']
    tuned = real.get('sgbm-tuned', sgbm)
    synthetic = results['sets']['synthetic']['methods']['stereonet']
    met = ours['epe'] < sgbm['epe'] and ours['bad3'] < sgbm['bad3'] and synthetic['epe'] <= SYNTHETIC_EPE_GOAL
    summary = (f'Motorcycle EPE {ours["epe"]:.2f} px / bad-3 {ours["bad3"]:.1f} % (SGBM stereo_image_proc '
               f'{sgbm["epe"]:.2f} px / {sgbm["bad3"]:.1f} %, tuned {tuned["epe"]:.2f} px / {tuned["bad3"]:.1f} %); '
               f'held-out synthetic EPE {synthetic["epe"]:.2f} px (goal <= {SYNTHETIC_EPE_GOAL:g})')
    return met, summary


def promote(source: Path, destination: Path, synthetic_samples: int) -> tuple[bool, str]:
    from stereonet_ros.evaluation.evaluate import evaluate, format_table
    from stereonet_ros.model.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(source)
    if checkpoint.provenance.get('placeholder') or not checkpoint.provenance.get('trained'):
        raise SystemExit(f'{PROGRAM}: error: {source} is not a trained checkpoint')
    results = evaluate(str(source), ['synthetic', 'motorcycle'], device='cpu', synthetic_samples=synthetic_samples,
                       log=lambda text: print(text, file=sys.stderr))
    met, summary = goal_report(results)
    steps = checkpoint.provenance.get('steps_total', checkpoint.provenance.get('steps', '?'))
    provenance = dict(checkpoint.provenance)
    provenance.update({
        'evaluation': {spec: entry for spec, entry in results['sets'].items()},
        'evaluation_table': format_table(results),
        'preliminary': not met,
        'note': (f'{steps} training steps; {summary}' + ('' if met else '; short of the goal: prefer tuned '
                                                                         'SGBM or a better checkpoint')),
        'promoted_from': str(source),
    })
    provenance.pop('placeholder', None)
    save_checkpoint(destination, dataclasses.replace(checkpoint, provenance=provenance))
    print(format_table(results))
    return met, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('source', type=Path, help='a trained checkpoint (e.g. runs/default/model_best.safetensors)')
    parser.add_argument('--destination', type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument('--synthetic-samples', type=int, default=32)
    arguments = parser.parse_args(argv)
    met, summary = promote(arguments.source, arguments.destination, arguments.synthetic_samples)
    print(f'{PROGRAM}: wrote {arguments.destination} ({"goal met" if met else "PRELIMINARY"}): {summary}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
