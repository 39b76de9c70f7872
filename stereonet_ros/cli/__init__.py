"""Command-line entry points (thin wrappers over package functions)."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

PRECISIONS = ('fp32', 'bf16', 'fp16')
PRECISION_HELP = ("inference precision: 'fp32' (default), 'bf16' (a GPU, or a CPU with native bfloat16: about "
                  "half the CPU time), 'fp16' (a GPU)")
NODE_PRECISIONS = ('auto', *PRECISIONS)
"""What the node's ``precision`` takes, for the CLIs that run the bundled default as the node does."""
NODE_PRECISION_HELP = ("inference precision, as the node's: 'auto' (default: bf16 for the bundled default on a CPU "
                       "with native bfloat16, AVX512-BF16 or AMX, else fp32), 'fp32', 'bf16' (a GPU, or a CPU with "
                       "native bfloat16), 'fp16' (a GPU)")


def add_after_search_flags(parser: argparse.ArgumentParser, where: str = '') -> None:
    """``--no-sgbm-fallback``, ``--no-fill-occlusions`` and ``--left-right-check``: the node's ``sgbm_fallback`` and
    ``fill_occlusions`` false and ``left_right_check`` true, as every CLI that runs the local search declares them;
    ``where`` adds where they apply."""
    parser.add_argument('--no-sgbm-fallback', action='store_true',
                        help=f"keep the searched answer where it is unsure instead of taking SGBM's{where} (the node's "
                        'sgbm_fallback false)')
    parser.add_argument('--no-fill-occlusions', action='store_true',
                        help="keep the answer where it says a pixel is hidden and is unsure instead of the row's "
                        f"background{where} (the node's fill_occlusions false)")
    parser.add_argument('--left-right-check', action='store_true',
                        help="also answer for the right view (the mirrored pair, about twice the time) and take the "
                        f"pixels it disagrees with as unsure{where} (the node's left_right_check true)")


def fail(program: str, reason: str, status: int = 1) -> NoReturn:
    """Exit with a one-line reason on stderr, as every stereonet CLI does for bad input."""
    one_line = ' '.join(str(reason).split())
    print(f'{program}: error: {one_line}', file=sys.stderr)
    raise SystemExit(status)
