"""The allocator tuning keeps large freed blocks in the process (what makes CPU forwards fast)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='mallopt tuning is glibc-only')

# Allocates and frees 256 MiB in a worker thread (as the ROS node infers), then reports how much of it
# the process still holds (resident set, from /proc/self/statm).
PROBE = r'''
import json, os, sys, threading
import torch
from stereonet_ros.cpu_allocator import tune_allocator_for_inference
applied = tune_allocator_for_inference()
page = os.sysconf('SC_PAGE_SIZE')
def resident() -> int:
    with open('/proc/self/statm') as stream:
        return int(stream.read().split()[1]) * page
before = resident()
def work() -> None:
    block = torch.ones(64 * 1024 * 1024)  # 256 MiB, written so that its pages are resident
    del block
thread = threading.Thread(target=work)
thread.start(); thread.join()
print(json.dumps({'applied': applied, 'kept_mib': (resident() - before) / 2**20}))
'''


def _probe(tuning: str) -> dict[str, float]:
    environment = {**os.environ, 'STEREONET_ALLOCATOR_TUNING': tuning}
    output = subprocess.run([sys.executable, '-c', PROBE], capture_output=True, text=True, check=True,
                            env=environment, timeout=120).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def test_tuned_process_keeps_freed_blocks_for_reuse_even_from_a_worker_thread() -> None:
    tuned = _probe('1')
    assert tuned['applied'] is True
    assert tuned['kept_mib'] > 200  # the 256 MiB stays in the heap for the next forward


def test_tuning_can_be_turned_off_and_then_glibc_returns_the_block() -> None:
    untouched = _probe('0')
    assert untouched['applied'] is False
    assert untouched['kept_mib'] < 50  # glibc's default: mmap'd, unmapped on free


def test_the_node_processing_tunes_the_allocator_whatever_runs_the_network() -> None:
    """An ONNX Runtime predictor never applies the tuning itself (it is not PyTorch's CPU path); the node's
    StereoProcessor does, for its post-processing (960x540, every output: 62.6 ms untuned, 32.0 ms tuned)."""
    probe = ('import json, warnings\nwarnings.simplefilter("ignore")\n'
             'from stereonet_ros import cpu_allocator\nfrom stereonet_ros.backends import DEFAULT_ONNX\n'
             'from stereonet_ros.onnx_backend import OnnxPredictor\nfrom stereonet_ros.processing import StereoProcessor\n'
             'predictor = OnnxPredictor(DEFAULT_ONNX, device="cpu")\nbefore = cpu_allocator._applied\n'
             'StereoProcessor(predictor)\nprint(json.dumps([before, cpu_allocator._applied]))\n')
    output = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True, timeout=120,
                            env={**os.environ, 'STEREONET_ALLOCATOR_TUNING': '1'}).stdout
    assert json.loads(output.strip().splitlines()[-1]) == [None, True]
