"""The CUDA path, on a CUDA device: parity with the CPU, reduced precision, graph replay, no host
synchronization, uint8 upload (:mod:`stereonet_ros.visit.checks`, which ``scripts/gpu_run`` also runs
without pytest). Skipped where torch sees no CUDA device; ``test_gpu_run.py`` rehearses the visit."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stereonet_ros.visit import checks

pytestmark = pytest.mark.cuda


@pytest.fixture(scope='module')
def pair() -> checks.Pair:
    return checks.real_pair()


@pytest.mark.parametrize('check', checks.CHECKS, ids=lambda check: check.__name__.removeprefix('check_'))
def test_on_cuda(check: Callable[[str, checks.Pair], dict[str, Any]], pair: checks.Pair) -> None:
    try:
        check('cuda', pair)
    except checks.CheckSkipped as err:
        pytest.skip(str(err))
