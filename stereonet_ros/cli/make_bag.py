"""stereonet-make-bag: write a rosbag2 bag (mcap or sqlite3) of stereo pairs with camera_info and ground truth.

    stereonet-make-bag OUT [--synthetic N [--size 320x240] [--seed 0]] [--motorcycle]
                       [--middlebury DIR] [--pairs DIR [--focal PX] [--baseline M] [--doffs PX]]
                       [--storage mcap|sqlite3] [--gt disparity|depth|depth-mm|none] [--gt-topic T]
                       [--left-topic T] [--right-topic T] [--left-info-topic T] [--right-info-topic T]
                       [--rate 10] [--compressed png|jpeg [--jpeg-quality 95]]

Sources, one or more, written in this order: synthetic scenes of the training generator, the
Middlebury 2014 Motorcycle pair from scikit-image, Middlebury-format scenes (``im0.png``, ``im1.png``,
``calib.txt``, ``disp0.pfm``), a folder of pairs (``left/``, ``right/``, optional ``disparity/``). Topics
default to the node's inputs; ground truth goes to ``/ground_truth/disparity`` (DisparityImage) or
``/ground_truth/depth`` (32FC1 metres or 16UC1 millimetres). With ``--compressed`` the images are
``sensor_msgs/CompressedImage`` on ``<image topic>/compressed`` (PNG: lossless; JPEG: at ``--jpeg-quality``,
95 = image_transport's default), as the compressed plugin records them. Bad input exits non-zero with one line.
"""
from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from stereonet_ros.evaluation.replay import (DEFAULT_LEFT_INFO_TOPIC, DEFAULT_LEFT_TOPIC, DEFAULT_RIGHT_INFO_TOPIC,
                                             DEFAULT_RIGHT_TOPIC)

PROGRAM = 'stereonet-make-bag'


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r'(\d+)x(\d+)', text.strip())
    if not match or int(match.group(1)) < 16 or int(match.group(2)) < 16:
        raise argparse.ArgumentTypeError(f'size must be WIDTHxHEIGHT, each >= 16, e.g. 320x240; got {text!r}')
    return int(match.group(1)), int(match.group(2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description='Write a rosbag2 bag of stereo pairs with camera_info '
                                     'and ground truth.')
    parser.add_argument('out', type=Path, help='bag folder to create (must not exist)')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='rosbag2 storage (default mcap)')
    parser.add_argument('--synthetic', type=int, metavar='N', help='N synthetic scenes of the training generator')
    parser.add_argument('--size', type=_size, default=(320, 240), help='synthetic scene size WxH (default 320x240)')
    parser.add_argument('--seed', type=int, default=0, help='synthetic scene seed (default 0)')
    parser.add_argument('--motorcycle', action='store_true',
                        help='the Middlebury 2014 Motorcycle pair (quarter scale) that ships with scikit-image')
    parser.add_argument('--middlebury', type=Path, metavar='DIR', help='Middlebury scene folder or folder of scenes')
    parser.add_argument('--pairs', type=Path, metavar='DIR', help='folder with left/, right/ and optional disparity/')
    parser.add_argument('--focal', type=float, help='--pairs/--synthetic focal length, pixels (default: image width)')
    parser.add_argument('--baseline', type=float, default=0.12, help='--pairs/--synthetic baseline, metres')
    parser.add_argument('--doffs', type=float, default=0.0, help='--pairs: cx_right - cx_left, pixels (default 0)')
    parser.add_argument('--gt', choices=('disparity', 'depth', 'depth-mm', 'none'), default='disparity',
                        help='ground truth as DisparityImage, 32FC1 depth (m), 16UC1 depth (mm), or none')
    parser.add_argument('--gt-topic',
                        help='ground-truth topic (default /ground_truth/disparity or /ground_truth/depth)')
    parser.add_argument('--left-topic', default=DEFAULT_LEFT_TOPIC)
    parser.add_argument('--right-topic', default=DEFAULT_RIGHT_TOPIC)
    parser.add_argument('--left-info-topic', default=DEFAULT_LEFT_INFO_TOPIC)
    parser.add_argument('--right-info-topic', default=DEFAULT_RIGHT_INFO_TOPIC)
    parser.add_argument('--rate', type=float, default=10.0, help='frames per second of the stamps (default 10)')
    parser.add_argument('--compressed', choices=('png', 'jpeg'),
                        help="write the images as sensor_msgs/CompressedImage on <image topic>/compressed, as "
                        "image_transport's compressed plugin does (png: lossless; jpeg: lossy)")
    parser.add_argument('--jpeg-quality', type=int, default=95, metavar='Q',
                        help="--compressed jpeg: quality 1..100 (default 95, image_transport's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    from stereonet_ros.cli import fail
    from stereonet_ros.evaluation.bagio import BagWriteError
    from stereonet_ros.evaluation.makebag import (BagTopics, MakeBagError, StereoPair, folder_pairs, image_topics,
                                                  middlebury_pairs, motorcycle_pair, synthetic_pairs,
                                                  write_stereo_bag)

    if not (arguments.synthetic or arguments.motorcycle or arguments.middlebury or arguments.pairs):
        fail(PROGRAM, 'no source: give --synthetic N, --motorcycle, --middlebury DIR and/or --pairs DIR', status=2)
    if arguments.synthetic is not None and arguments.synthetic < 1:
        fail(PROGRAM, f'--synthetic {arguments.synthetic}: must be >= 1', status=2)
    if arguments.out.exists():
        fail(PROGRAM, f'{arguments.out} exists; not overwriting', status=2)
    if not 1 <= arguments.jpeg_quality <= 100:
        fail(PROGRAM, f'--jpeg-quality {arguments.jpeg_quality}: must be in [1, 100]', status=2)
    if arguments.jpeg_quality != 95 and arguments.compressed != 'jpeg':
        fail(PROGRAM, '--jpeg-quality needs --compressed jpeg', status=2)

    def sources() -> Iterator[StereoPair]:
        if arguments.synthetic:
            width, height = arguments.size
            yield from synthetic_pairs(arguments.synthetic, width, height, arguments.seed, arguments.focal,
                                       arguments.baseline)
        if arguments.motorcycle:
            yield motorcycle_pair()
        if arguments.middlebury:
            yield from middlebury_pairs(arguments.middlebury)
        if arguments.pairs:
            yield from folder_pairs(arguments.pairs, arguments.focal, arguments.baseline, arguments.doffs)

    topics = BagTopics(left=arguments.left_topic, right=arguments.right_topic, left_info=arguments.left_info_topic,
                       right_info=arguments.right_info_topic, ground_truth=arguments.gt_topic)
    names: list[str] = []

    def named(pairs: Iterator[StereoPair]) -> Iterator[StereoPair]:
        for pair in pairs:
            names.append(f'{pair.name} ({pair.camera.width}x{pair.camera.height})')
            yield pair

    try:
        count = write_stereo_bag(arguments.out, named(sources()), storage=arguments.storage, gt=arguments.gt,
                                 topics=topics, rate_hz=arguments.rate, compression=arguments.compressed,
                                 jpeg_quality=arguments.jpeg_quality)
    except (MakeBagError, BagWriteError) as err:
        fail(PROGRAM, str(err))
    shown = ', '.join(itertools.islice(names, 4)) + (f', ... ({len(names)} in all)' if len(names) > 4 else '')
    pairs = 'stereo pair' if count == 1 else 'stereo pairs'
    images = 'raw images' if arguments.compressed is None else (
        f'{arguments.compressed} images on {", ".join(image_topics(topics, arguments.compressed))}'
        + (f' (quality {arguments.jpeg_quality})' if arguments.compressed == 'jpeg' else ''))
    print(f'{PROGRAM}: wrote {count} {pairs} ({arguments.storage}, {images}, ground truth: {arguments.gt}) to '
          f'{arguments.out}: {shown}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
