"""How many large images arrive between two processes: Fast DDS defaults, the shipped profile, reliable QoS.

    .venv/bin/python benchmarks/dds_delivery.py [--count 40] [--rate 10] [--sizes 640x480,1280x720]
        [--out benchmarks/results/FILE.md]

A publisher process sends ``--count`` rgb8 images at ``--rate`` Hz to a subscriber process (plain rclpy,
no stereonet code), on a ROS domain of its own (``ROS_DOMAIN_ID`` when set) limited to this host, for each of:

- ``default``: both best effort (sensor-data QoS, what stereo_image_proc and this node subscribe with),
  Fast DDS's default transports;
- ``profile``: the same QoS with ``config/fastdds_large_images.xml`` (16 MiB shared-memory segment);
- ``reliable``: both reliable (the ``qos_overrides`` the README shows), Fast DDS's defaults.

The table gives the images received out of those sent. Delivery depends on the machine and its load:
compare rows of one run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
PROFILE = REPOSITORY / 'config' / 'fastdds_large_images.xml'

WORKER = r'''
import sys, time
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
role, reliability, width, height, count, rate, ready_file = sys.argv[1:8]
width, height, count, rate = int(width), int(height), int(count), float(rate)
rclpy.init()
node = rclpy.create_node(f'dds_delivery_{role}')
qos = (QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
       if reliability == 'reliable' else qos_profile_sensor_data)
if role == 'sub':
    received = []
    node.create_subscription(Image, 'dds_delivery', lambda msg: received.append(msg.header.frame_id), qos)
    open(ready_file, 'w').close()
    deadline = time.monotonic() + 30 + count / rate
    while time.monotonic() < deadline and len(received) < count:
        rclpy.spin_once(node, timeout_sec=0.05)
        if received and received[-1] == 'last':
            break
    print(len(set(received)))
else:
    publisher = node.create_publisher(Image, 'dds_delivery', qos)
    deadline = time.monotonic() + 30
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.5)  # discovery of both directions
    data = np.random.default_rng(0).integers(0, 256, height * width * 3, dtype=np.uint8).tobytes()
    for index in range(count):
        msg = Image(height=height, width=width, encoding='rgb8', step=width * 3, data=data)
        msg.header.frame_id = 'last' if index == count - 1 else str(index)
        publisher.publish(msg)
        time.sleep(1.0 / rate)
    time.sleep(1.0)
node.destroy_node()
rclpy.try_shutdown()
'''


def deliver(variant: str, width: int, height: int, count: int, rate: float, domain: int, folder: Path) -> int:
    """Images received out of ``count`` for one variant and size (a fresh pair of processes)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    env.pop('FASTRTPS_DEFAULT_PROFILES_FILE', None)
    env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    if variant == 'profile':
        env['FASTRTPS_DEFAULT_PROFILES_FILE'] = str(PROFILE)
    reliability = 'reliable' if variant == 'reliable' else 'best_effort'
    ready = folder / f'ready-{variant}-{width}x{height}'
    arguments = [reliability, str(width), str(height), str(count), str(rate), str(ready)]
    subscriber = subprocess.Popen([sys.executable, '-c', WORKER, 'sub', *arguments], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    publisher = subprocess.run([sys.executable, '-c', WORKER, 'pub', *arguments], env=env, capture_output=True,
                               text=True, timeout=120)
    out, err = subscriber.communicate(timeout=120)
    if publisher.returncode != 0 or subscriber.returncode != 0:
        raise RuntimeError(f'{variant} {width}x{height}: worker failed:\n{publisher.stderr}\n{err}')
    return int(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--count', type=int, default=40)
    parser.add_argument('--rate', type=float, default=10.0)
    parser.add_argument('--sizes', default='640x480,1280x720')
    parser.add_argument('--out', type=Path, help='also write the table (with date and machine) here')
    arguments = parser.parse_args()
    import tempfile

    sizes = [tuple(int(v) for v in text.split('x')) for text in arguments.sizes.split(',')]
    from stereonet_ros.evaluation.through_node import unique_domain_id

    domain = unique_domain_id(salt=61)  # ROS_DOMAIN_ID when set
    lines = [f'{arguments.count} rgb8 images at {arguments.rate:g} Hz between two processes on one host; '
             f'{date.today().isoformat()}, {os.cpu_count()} CPUs',
             '', '| size | default (best effort) | shipped profile (best effort) | reliable |', '| --- | --- | --- | --- |']
    with tempfile.TemporaryDirectory() as folder:
        for width, height in sizes:
            cells = []
            for variant in ('default', 'profile', 'reliable'):
                received = deliver(variant, width, height, arguments.count, arguments.rate, domain, Path(folder))
                cells.append(f'{received}/{arguments.count}')
            lines.append(f'| {width}x{height} | ' + ' | '.join(cells) + ' |')
    table = '\n'.join(lines)
    print(table)
    if arguments.out:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(table + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
