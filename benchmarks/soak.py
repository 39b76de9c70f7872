"""Soak: the node under a steady stream for minutes, its memory and where pairs go.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--rate 10] [--width 640 --height 480]
        [--qos reliable|best_effort] [--out benchmarks/results/FILE.md]

The node runs as its console script (CPU, the bundled default); this process publishes stereo sets at
``--rate`` Hz and subscribes to ``disparity``. Every minute: the node's resident memory (``VmRSS`` of its
process), sets sent, answered, and the node's own counts from ``/diagnostics`` (sets formed, pairs dropped
because a newer one arrived while the network ran, messages the synchronizer discarded unmatched, and per
input the discarded sets that lacked that input's message, i.e. messages lost before the node paired
them). Latency = answer time - the set's stamp. The figure to hold (issue 11): RSS flat after warm-up,
growth under 2 % from the first full minute to the last, and no unexplained unpaired sets.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from _report import publish
from node_pipeline import INPUTS, make_set, publish_set  # the same stereo set the pipeline benchmark sends

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid``, MiB (``VmRSS``)."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f'no VmRSS for pid {pid}')


def process_memory(pid: int) -> dict[str, Any]:
    """Peak resident memory (``VmHWM``, MiB) of process ``pid`` and whether it has PyTorch loaded
    (``libtorch`` mapped)."""
    peak = next(int(line.split()[1]) / 1024 for line in Path(f'/proc/{pid}/status').read_text().splitlines()
                if line.startswith('VmHWM:'))
    return {'peak_rss_mib': peak, 'torch_loaded': 'libtorch' in Path(f'/proc/{pid}/maps').read_text()}


def soak(minutes: float, rate: float, width: int, height: int, reliable: bool, domain: int,
         backend: str = 'auto', inference_threads: int = 0) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix='soak_'))
    params = folder / 'params.yaml'
    lines = ['/**:', '  ros__parameters:', '    device: cpu', f'    backend: {backend}',
             f'    inference_threads: {inference_threads}', '    diagnostics_period_seconds: 1.0']
    if reliable:
        lines.append('    qos_overrides:')
        for topic in INPUTS:
            lines += [f'      /{topic}:', '        subscription:', '          reliability: reliable',
                      '          depth: 5']
    params.write_text('\n'.join(lines) + '\n')
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    log = (folder / 'node.log').open('wb')
    process = subprocess.Popen([str(Path(sys.executable).parent / 'stereonet_node'), '--ros-args', '--params-file',
                                str(params)], stdout=log, stderr=subprocess.STDOUT, env=env)
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    latencies: list[tuple[float, float]] = []  # (time since start, latency s)
    diagnostics: dict[str, str] = {}
    minutes_rows: list[dict[str, Any]] = []
    try:
        node = rclpy.create_node('soak_publisher', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE) if reliable else qos_profile_sensor_data
        publishers = [node.create_publisher(kind, topic, qos)
                      for topic, kind in zip(INPUTS, (Image, Image, CameraInfo, CameraInfo), strict=True)]
        started: list[float] = []

        def on_disparity(msg: DisparityImage) -> None:
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            latencies.append((time.monotonic() - (started[0] if started else 0.0), (time.time_ns() - stamp) / 1e9))

        def on_diagnostics(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if 'stereonet_node' in status.name:
                    diagnostics.update({value.key: value.value for value in status.values})

        node.create_subscription(DisparityImage, 'disparity', on_disparity, QoSProfile(depth=10))
        node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (all(p.get_subscription_count() for p in publishers)
                                                   and diagnostics.get('outputs subscribed') == 'disparity'):
            executor.spin_once(timeout_sec=0.1)
        template = make_set(width, height, 1)
        sent = 0

        def row() -> dict[str, Any]:
            return {'minute': len(minutes_rows) + 1, 'rss_mib': rss_mib(process.pid), 'sent': sent,
                    'answered': len(latencies), **{key: diagnostics.get(key, '') for key in (
                        'sets formed', 'sets processed', 'dropped pairs (latest wins)', 'sync unmatched messages',
                        'sets lacking a message, by input')}}

        period = 1.0 / rate
        start = time.monotonic()
        started.append(start)
        next_time, next_minute = start, start + 60.0
        while time.monotonic() - start < minutes * 60.0:
            now = time.monotonic()
            if now >= next_time:
                publish_set(publishers, template)
                sent += 1
                next_time += period
            if now >= next_minute:
                minutes_rows.append(row())
                next_minute += 60.0
            executor.spin_once(timeout_sec=max(0.0, min(next_time - time.monotonic(), 0.01)))
        if len(minutes_rows) < int(minutes):  # the last minute ends with the loop, before its boundary check
            minutes_rows.append(row())
        settle = time.monotonic() + 5
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.1)
        memory = process_memory(process.pid)
    finally:
        rclpy.try_shutdown(context=context)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        log.close()
    values = np.array([latency for _, latency in latencies]) * 1000.0
    return {'sent': sent, 'answered': len(latencies), 'minutes': minutes_rows, 'diagnostics': diagnostics,
            'latency_p50_ms': float(np.percentile(values, 50)) if values.size else float('nan'),
            'latency_p95_ms': float(np.percentile(values, 95)) if values.size else float('nan'),
            'node_log': str(folder / 'node.log'), 'backend': diagnostics.get('backend', '?'), **memory}


def report(result: dict[str, Any], arguments: argparse.Namespace) -> str:
    rows = result['minutes']
    lines = [f'Soak, {date.today().isoformat()}, {os.cpu_count()} CPUs: {arguments.width}x{arguments.height} rgb8 '
             f'sets at {arguments.rate:g} Hz for {arguments.minutes:g} min, {arguments.qos} inputs, node on the CPU '
             f'(bundled default checkpoint, {result["backend"]}, inference_threads {arguments.inference_threads}).', '',
             '| minute | node RSS MiB | sent | answered | sets formed | dropped (latest wins) | sync unmatched | '
             'sets lacking a message, by input |', '| --- | --- | --- | --- | --- | --- | --- | --- |']
    for row in rows:
        lines.append(f'| {row["minute"]} | {row["rss_mib"]:.1f} | {row["sent"]} | {row["answered"]} | '
                     f'{row["sets formed"]} | {row["dropped pairs (latest wins)"]} | {row["sync unmatched messages"]} | '
                     f'{row["sets lacking a message, by input"]} |')
    if len(rows) >= 2:
        growth = (rows[-1]['rss_mib'] - rows[0]['rss_mib']) / rows[0]['rss_mib'] * 100.0
        lines += ['', f'RSS growth from minute 1 to minute {rows[-1]["minute"]}: {growth:+.2f} % '
                      f'(goal: under 2 % over 10 minutes).']
    lines += [f'Answered {result["answered"]} of {result["sent"]} sets; latency p50 {result["latency_p50_ms"]:.0f} ms, '
              f'p95 {result["latency_p95_ms"]:.0f} ms.']
    return '\n'.join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--minutes', type=float, default=10.0)
    parser.add_argument('--rate', type=float, default=10.0)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--qos', choices=('reliable', 'best_effort'), default='reliable')
    parser.add_argument('--inference-threads', type=int, default=0,
                        help="the node's inference_threads (0 = its default: all CPUs but one)")
    parser.add_argument('--out', type=Path, help='also write the table here')
    arguments = parser.parse_args()
    from stereonet_ros.evaluation.through_node import unique_domain_id

    result = soak(arguments.minutes, arguments.rate, arguments.width, arguments.height, arguments.qos == 'reliable',
                  unique_domain_id(salt=73), inference_threads=arguments.inference_threads)
    text = report(result, arguments)
    publish(text, arguments.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
