"""stereonet-eval-bag: score stereo depth on recorded rosbag2 bags and write a report.

    stereonet-eval-bag BAG... --out DIR [--gt-topic TOPIC] [--left-topic T] [--right-topic T]
                       [--left-info-topic T] [--right-info-topic T] [--approximate-sync]
                       [--sync-tolerance S] [--queue-size N] [--checkpoint PATH] [--device auto]
                       [--write-bag] [--max-frames N] [--no-progress]

Reads mcap and sqlite3 bags (folders or their files), pairs the four inputs as the node does, runs the
network on every pair and writes into DIR: ``metrics.json``, ``per_frame.csv``, ``report.md``,
``report.html`` (self-contained), ``pictures/`` and, with ``--write-bag``, ``output_bag/`` (mcap:
``/disparity``, ``/points2``, ``/depth`` and the left view on the input stamps). Ground truth
(``--gt-topic``): a ``stereo_msgs/DisparityImage`` or a depth ``sensor_msgs/Image`` (32FC1 m, 16UC1 mm).
Bad input exits non-zero with a one-line reason and leaves no new report.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

from stereonet_ros.evaluation.replay import (DEFAULT_LEFT_INFO_TOPIC, DEFAULT_LEFT_TOPIC, DEFAULT_QUEUE_SIZE,
                                             DEFAULT_RIGHT_INFO_TOPIC, DEFAULT_RIGHT_TOPIC)

PROGRAM = 'stereonet-eval-bag'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description='Score stereo depth on recorded rosbag2 bags '
                                     '(mcap or sqlite3) and write a report.')
    parser.add_argument('bags', nargs='+', type=Path, metavar='BAG',
                        help='rosbag2 bag folder (or its .mcap / .db3 file); several are evaluated in order')
    parser.add_argument('--out', type=Path, required=True,
                        help='report folder (created; a previous report is replaced)')
    parser.add_argument('--left-topic', default=DEFAULT_LEFT_TOPIC, help='left rectified image (sensor_msgs/Image)')
    parser.add_argument('--right-topic', default=DEFAULT_RIGHT_TOPIC, help='right rectified image')
    parser.add_argument('--left-info-topic', default=DEFAULT_LEFT_INFO_TOPIC, help='left sensor_msgs/CameraInfo')
    parser.add_argument('--right-info-topic', default=DEFAULT_RIGHT_INFO_TOPIC, help='right sensor_msgs/CameraInfo')
    parser.add_argument('--gt-topic', help='ground truth: stereo_msgs/DisparityImage, or depth sensor_msgs/Image '
                        '(32FC1 metres, 16UC1 millimetres), stamped like the left image; default: none')
    parser.add_argument('--approximate-sync', action='store_true', help='pair by approximate stamps (as the node)')
    parser.add_argument('--sync-tolerance', type=float, default=0.0,
                        help='approximate sync: largest stamp spread in a pair, seconds (0 = unbounded)')
    parser.add_argument('--queue-size', type=int, default=DEFAULT_QUEUE_SIZE, help='sync queue size (as the node)')
    parser.add_argument('--checkpoint', type=Path,
                        help='stereonet_ros .safetensors or seed Lightning .ckpt (default: the bundled checkpoint)')
    parser.add_argument('--device', default='auto', help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument('--write-bag', action='store_true',
                        help='also write DIR/output_bag (mcap): /disparity, /points2, /depth on the input stamps')
    parser.add_argument('--max-frames', type=int, help='stop after this many pairs')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    # Imported here so that --help and usage errors answer without loading torch.
    from stereonet_ros.cli import fail
    from stereonet_ros.evaluation.bag_eval import PredictorSource, check_bags, evaluate_bags
    from stereonet_ros.evaluation.bagio import BagWriteError, open_bag_writer
    from stereonet_ros.evaluation.replay import ReplayConfig, ReplayError
    from stereonet_ros.evaluation.report import OUTPUT_BAG_NAME, ReportError, ReportFolder, RunInfo, write_report
    from stereonet_ros.geometry import GeometryError
    from stereonet_ros.image_codec import ImageCodecError
    from stereonet_ros.inference import InputError, Predictor, UntrainedPlaceholderWarning
    from stereonet_ros.model.checkpoint import CheckpointError
    from stereonet_ros.training.train import git_sha

    if arguments.max_frames is not None and arguments.max_frames < 1:
        fail(PROGRAM, f'--max-frames {arguments.max_frames}: must be >= 1', status=2)
    try:
        config = ReplayConfig(left_topic=arguments.left_topic, right_topic=arguments.right_topic,
                              left_info_topic=arguments.left_info_topic, right_info_topic=arguments.right_info_topic,
                              gt_topic=arguments.gt_topic, approximate_sync=arguments.approximate_sync,
                              sync_tolerance_s=arguments.sync_tolerance, queue_size=arguments.queue_size)
    except ReplayError as err:
        fail(PROGRAM, str(err), status=2)
    command = ' '.join(shlex.quote(part) for part in [PROGRAM, *(sys.argv[1:] if argv is None else argv)])
    try:
        check_bags(arguments.bags, config)  # every bag and topic, before loading the model
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', UntrainedPlaceholderWarning)
            predictor = Predictor.from_checkpoint(arguments.checkpoint, device=arguments.device)
        for warning in caught:
            print(f'{PROGRAM}: warning: {warning.message}', file=sys.stderr)
        provenance = predictor.checkpoint.provenance
        info = RunInfo(checkpoint=str(arguments.checkpoint) if arguments.checkpoint else 'bundled default',
                       checkpoint_note=str(provenance.get('note', '')), placeholder=predictor.is_placeholder,
                       device=str(predictor.device), command=command, git_sha=git_sha(),
                       created=datetime.now(timezone.utc).isoformat(timespec='seconds'))
        with ReportFolder(arguments.out) as staging:
            bag_path = staging.path / OUTPUT_BAG_NAME
            with open_bag_writer(bag_path, 'mcap') if arguments.write_bag else nullcontext(None) as output_bag:
                result = evaluate_bags(arguments.bags, config, PredictorSource(predictor),
                                       max_disparity=predictor.contract.max_disparity, output_bag=output_bag,
                                       progress=False if arguments.no_progress else None,
                                       max_frames=arguments.max_frames)
            published_bag = str(arguments.out / OUTPUT_BAG_NAME) if arguments.write_bag else None
            metrics = write_report(result, info, staging.path, output_bag=published_bag)
            staging.publish(extra=(OUTPUT_BAG_NAME,))
    except (ReplayError, ReportError, BagWriteError, CheckpointError, InputError, GeometryError,
            ImageCodecError) as err:
        fail(PROGRAM, str(err))
    timing = metrics['timing']
    for frame in result.frames:
        if frame.status in ('skipped', 'dropped'):
            print(f'{PROGRAM}: warning: {Path(frame.bag).name} pair #{frame.index} {frame.status}: {frame.note}',
                  file=sys.stderr)
    summary = (f'{PROGRAM}: {metrics["frames"]} pairs ({metrics["frames_scored"]} scored, '
               f'{metrics["frames_skipped"]} skipped) on {info.device}; model time p50 '
               f'{timing["model_ms_p50"]:.1f} ms, p95 {timing["model_ms_p95"]:.1f} ms')
    if metrics['epe'] is not None:
        summary += (f'; EPE {metrics["epe"]:.2f} px, bad-1 {metrics["bad1"]:.1f} %, bad-3 {metrics["bad3"]:.1f} %, '
                    f'D1 {metrics["d1"]:.1f} %')
    print(summary)
    if info.placeholder:
        print(f'{PROGRAM}: (these scores are of the UNTRAINED placeholder network, not of StereoNet)')
    print(f'{PROGRAM}: report: {arguments.out / "report.html"} (also report.md, metrics.json, per_frame.csv)'
          + (f'; output bag: {published_bag}' if published_bag else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
