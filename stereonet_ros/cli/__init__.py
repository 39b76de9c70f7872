"""Command-line entry points (thin wrappers over package functions)."""
from __future__ import annotations

import sys
from typing import NoReturn

PRECISIONS = ('fp32', 'bf16', 'fp16')
PRECISION_HELP = ("inference precision: 'fp32' (default), 'bf16' (a GPU, or a CPU with native bfloat16: about "
                  "half the CPU time), 'fp16' (a GPU)")


def fail(program: str, reason: str, status: int = 1) -> NoReturn:
    """Exit with a one-line reason on stderr, as every stereonet CLI does for bad input."""
    one_line = ' '.join(str(reason).split())
    print(f'{program}: error: {one_line}', file=sys.stderr)
    raise SystemExit(status)
