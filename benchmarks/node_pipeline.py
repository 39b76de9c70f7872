"""stereonet_node's own cost against the model's, and end-to-end latency through DDS, same run.

    .venv/bin/python benchmarks/node_pipeline.py [--width 960 --height 540] [--repeats 5] [--seconds 20]

Part 1 (in process, CPU): per pair, the median time of each stage the node adds around the
network: decode (two rgb8 Images -> network input + left colours), the model (preprocess + forward),
post (validity, depth, cloud, colour map), of which the cloud (reproject + PointCloud2 buffer),
and messages + publish (all five outputs, through rclpy to a subscriber in another process, so
that serialization really happens). Overhead = decode + post + messages + publish, against model.

Part 2 (across processes): the node runs as its console script; this process publishes stereo sets
at a fixed rate (30 Hz) and subscribes to ``disparity``; latency = receive time - the set's stamp
(wall clock). Reports pairs sent / processed / dropped (the node's latest-wins slot; from
``/diagnostics``) and latency p50/p95: with a slow CPU most pairs are dropped, and latency stays
about one to two model times, never growing (no backlog).
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

warnings.simplefilter('ignore')

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

from stereonet_ros.camera import from_camera_infos  # noqa: E402
from stereonet_ros.geometry import pointcloud2_buffer, reproject_to_3d  # noqa: E402
from stereonet_ros.image_codec import array_to_image_fields  # noqa: E402
from stereonet_ros.inference import Predictor  # noqa: E402
from stereonet_ros.node_config import NodeConfig  # noqa: E402
from stereonet_ros.processing import OutputSelection, StereoProcessor, decode_pair  # noqa: E402
from stereonet_ros.ros.messages import (disparity_message, float_image_message, pointcloud_message,  # noqa: E402
                                        rgb_image_message)

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
INPUTS = ('left/image_rect', 'right/image_rect', 'left/camera_info', 'right/camera_info')


def publish_set(publishers: list[Any], template: list[Any]) -> None:
    """Publish one stereo set (the four messages of :func:`make_set`) stamped now, the same stamp on each."""
    stamp = time.time_ns()
    for msg in template:
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    for publisher, msg in zip(publishers, template, strict=True):
        publisher.publish(msg)


def make_set(width: int, height: int, stamp_ns: int) -> list[Any]:
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (height, width + 32, 3), dtype=np.uint8)
    messages: list[Any] = []
    for array in (scene[:, 32:], scene[:, :width]):  # left, right: a 32 px shift
        fields = array_to_image_fields(np.ascontiguousarray(array), 'rgb8')
        msg = Image(height=fields.height, width=fields.width, encoding='rgb8', step=fields.step)
        msg.data = fields.data
        messages.append(msg)
    for right in (False, True):
        info = CameraInfo(width=width, height=height)
        info.p = [700.0, 0.0, width / 2, -700.0 * 0.12 if right else 0.0, 0.0, 700.0, height / 2, 0.0, 0, 0, 1, 0]
        messages.append(info)
    for msg in messages:
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg.header.frame_id = 'left_optical'
    return messages


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000.0


def stage_costs(width: int, height: int, repeats: int, domain: int) -> dict[str, float]:
    """Part 1: median ms per stage. A subscriber process makes publish() serialize for real."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    listener = subprocess.Popen([sys.executable, '-c', LISTENER], env=env)
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        node = rclpy.create_node('node_pipeline_bench', context=context)
        publishers = {name: node.create_publisher(kind, name, RELIABLE) for name, kind in
                      (('disparity', DisparityImage), ('points2', PointCloud2), ('depth', Image),
                       ('confidence', Image), ('disparity/image_color', Image))}
        deadline = time.monotonic() + 60
        while not all(p.get_subscription_count() for p in publishers.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        processor = StereoProcessor(Predictor.from_checkpoint(None, device='cpu'))
        config = NodeConfig()
        messages = make_set(width, height, 1)
        camera = from_camera_infos(messages[2], messages[3])
        times: dict[str, list[float]] = {key: [] for key in ('decode', 'model', 'post', 'cloud', 'publish')}
        for index in range(repeats + 1):  # the first round warms up
            start = time.perf_counter()
            left, right, rgb = decode_pair(messages[0], messages[1], True)
            decoded = time.perf_counter()
            out = processor.process(left, right, camera, config, OutputSelection(), rgb)
            processed = time.perf_counter()
            masked = np.where(out.valid, out.disparity, np.float32(np.nan))
            cloud_start = time.perf_counter()
            pointcloud2_buffer(reproject_to_3d(masked, camera), rgb, False)
            cloud_time = time.perf_counter() - cloud_start
            header = messages[0].header
            assert out.cloud is not None and out.depth is not None and out.confidence is not None
            assert out.disparity_color is not None
            publish_start = time.perf_counter()
            publishers['disparity'].publish(disparity_message(out, camera, header))
            publishers['points2'].publish(pointcloud_message(out.cloud, height, width, header))
            publishers['depth'].publish(float_image_message(out.depth, header))
            publishers['confidence'].publish(float_image_message(out.confidence, header))
            publishers['disparity/image_color'].publish(rgb_image_message(out.disparity_color, header))
            published = time.perf_counter()
            if index:
                times['decode'].append(decoded - start)
                times['model'].append(out.timings['model'])
                times['post'].append(out.timings['post'])
                times['cloud'].append(cloud_time)
                times['publish'].append(published - publish_start)
            del processed
        return {key: median_ms(values) for key, values in times.items()}
    finally:
        rclpy.try_shutdown(context=context)
        listener.send_signal(signal.SIGINT)
        listener.wait(timeout=30)


LISTENER = r'''
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.executors import ExternalShutdownException
from sensor_msgs.msg import Image, PointCloud2
from stereo_msgs.msg import DisparityImage
rclpy.init()
node = rclpy.create_node('node_pipeline_listener')
qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
for name, kind in (('disparity', DisparityImage), ('points2', PointCloud2), ('depth', Image), ('confidence', Image),
                   ('disparity/image_color', Image)):
    node.create_subscription(kind, name, lambda msg: None, qos)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
finally:
    rclpy.try_shutdown()
'''


def end_to_end(width: int, height: int, rate: float, seconds: float, domain: int) -> dict[str, Any]:
    """Part 2: the node as a subprocess, sets published at ``rate`` Hz for ``seconds``."""
    folder = Path(tempfile.mkdtemp(prefix='node_pipeline_'))
    params = folder / 'params.yaml'
    lines = ['stereonet_node:', '  ros__parameters:', '    device: cpu', '    qos_overrides:']
    for topic in INPUTS:
        lines += [f'      /{topic}:', '        subscription:', '          reliability: reliable', '          depth: 2']
    params.write_text('\n'.join(lines) + '\n')
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    node_bin = Path(sys.executable).parent / 'stereonet_node'
    log = (folder / 'node.log').open('wb')
    process = subprocess.Popen([str(node_bin), '--ros-args', '--params-file', str(params)], stdout=log,
                               stderr=subprocess.STDOUT, env=env)
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    latencies: list[float] = []
    diagnostics: dict[str, str] = {}
    try:
        node = rclpy.create_node('node_pipeline_e2e', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        publishers = [node.create_publisher(kind, topic, RELIABLE)
                      for topic, kind in zip(INPUTS, (Image, Image, CameraInfo, CameraInfo), strict=True)]

        def on_disparity(msg: DisparityImage) -> None:
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            latencies.append((time.time_ns() - stamp) / 1e9)

        def on_diagnostics(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if 'stereonet_node' in status.name:
                    diagnostics.update({value.key: value.value for value in status.values})

        node.create_subscription(DisparityImage, 'disparity', on_disparity, RELIABLE)
        node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (all(p.get_subscription_count() for p in publishers)
                                                   and diagnostics.get('outputs subscribed') == 'disparity'):
            executor.spin_once(timeout_sec=0.1)
        template = make_set(width, height, 1)
        sent = 0
        period = 1.0 / rate
        start = time.monotonic()
        next_time = start
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            if now >= next_time:
                publish_set(publishers, template)
                sent += 1
                next_time += period
            executor.spin_once(timeout_sec=max(0.0, min(next_time - time.monotonic(), 0.01)))
        # Drain: the pair in progress and the one waiting, then a diagnostics period.
        settle = time.monotonic() + 5
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.1)
    finally:
        rclpy.try_shutdown(context=context)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        log.close()
    half = len(latencies) // 2
    return {'sent': sent, 'received': len(latencies), 'diagnostics': diagnostics,
            'latency_p50_ms': float(np.percentile(latencies, 50)) * 1000 if latencies else float('nan'),
            'latency_p95_ms': float(np.percentile(latencies, 95)) * 1000 if latencies else float('nan'),
            'first_half_p50_ms': float(np.median(latencies[:half])) * 1000 if half else float('nan'),
            'second_half_p50_ms': float(np.median(latencies[half:])) * 1000 if half else float('nan')}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--width', type=int, default=960)
    parser.add_argument('--height', type=int, default=540)
    parser.add_argument('--repeats', type=int, default=5, help='timed pairs in part 1')
    parser.add_argument('--rate', type=float, default=30.0, help='input sets per second in part 2')
    parser.add_argument('--seconds', type=float, default=20.0, help='duration of part 2')
    arguments = parser.parse_args()
    import torch
    # 215..232 (a range valid on Linux), apart from the tests' 1..100.
    domain = 215 + os.getpid() % 9
    print(f'# stereonet_node pipeline, {arguments.width}x{arguments.height} rgb8, CPU, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads')
    costs = stage_costs(arguments.width, arguments.height, arguments.repeats, domain)
    overhead = costs['decode'] + costs['post'] + costs['publish']
    print('\n| stage | median ms |\n| --- | --- |')
    for key in ('decode', 'model', 'post', 'cloud', 'publish'):
        print(f'| {key} | {costs[key]:.1f} |')
    print(f'| overhead (decode + post + publish) | {overhead:.1f} = {100 * overhead / costs["model"]:.1f} % of model |')
    result = end_to_end(arguments.width, arguments.height, arguments.rate, arguments.seconds, domain + 9)
    diagnostics = result['diagnostics']
    print(f'\nend to end at {arguments.rate:g} Hz for {arguments.seconds:g} s: sent {result["sent"]}, '
          f'disparity received {result["received"]}, node: sets {diagnostics.get("sets formed")}, processed '
          f'{diagnostics.get("sets processed")}, dropped (latest wins) '
          f'{diagnostics.get("dropped pairs (latest wins)")}; the rest of the sent sets were overwritten in the '
          'subscriptions\' keep-last queues (depth 2) before the executor took them')
    print(f'latency p50 {result["latency_p50_ms"]:.0f} ms, p95 {result["latency_p95_ms"]:.0f} ms '
          f'(first half p50 {result["first_half_p50_ms"]:.0f} ms, second half {result["second_half_p50_ms"]:.0f} ms: '
          'equal halves = no backlog)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
