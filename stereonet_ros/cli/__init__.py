"""Command-line entry points (thin wrappers over package functions)."""
from __future__ import annotations

import sys
from typing import NoReturn


def fail(program: str, reason: str, status: int = 1) -> NoReturn:
    """Exit with a one-line reason on stderr, as every stereonet CLI does for bad input."""
    one_line = ' '.join(str(reason).split())
    print(f'{program}: error: {one_line}', file=sys.stderr)
    raise SystemExit(status)
