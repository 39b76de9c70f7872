"""stereonet-convert: a seed Lightning ``.ckpt`` (or any supported checkpoint) -> our safetensors format.

    stereonet-convert SEED.ckpt OUT.safetensors

Opens the source without executing pickled code (see ``stereonet_ros.model.checkpoint``) and writes
the weights with their model config, input contract and provenance.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

PROGRAM = 'stereonet-convert'


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('source', type=Path, help='seed Lightning .ckpt or stereonet_ros .safetensors')
    parser.add_argument('destination', type=Path, help='output .safetensors file')
    arguments = parser.parse_args(argv)

    from stereonet_ros.cli import fail
    from stereonet_ros.model.checkpoint import CheckpointError, convert_checkpoint

    if arguments.destination.suffix != '.safetensors':
        fail(PROGRAM, f'{arguments.destination}: the output must end in .safetensors', status=2)
    if arguments.destination.resolve() == arguments.source.resolve():
        fail(PROGRAM, f'{arguments.destination}: the output would overwrite the source', status=2)
    try:
        checkpoint = convert_checkpoint(arguments.source, arguments.destination)
    except CheckpointError as err:
        fail(PROGRAM, str(err))
    except OSError as err:
        fail(PROGRAM, f'cannot write {arguments.destination}: {err.strerror or err}')
    config = checkpoint.config
    print(f'{PROGRAM}: {arguments.source} -> {arguments.destination} ({checkpoint.contract.color}, '
          f'K={config.k_downsampling_layers}, R={config.k_refinement_layers}, '
          f'max disparity {config.max_disparity})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
