"""stereonet-eval-bag: score stereo depth on recorded rosbag2 bags and write a report.

    stereonet-eval-bag BAG... --out DIR [--gt-topic TOPIC] [--left-topic T] [--right-topic T]
                       [--left-info-topic T] [--right-info-topic T] [--approximate-sync]
                       [--sync-tolerance S] [--queue-size N] [--checkpoint PATH] [--backend auto] [--device auto]
                       [--precision auto] [--inference-scale S] [--no-refine] [--local-search PX] [--min-confidence T]
                       [--write-bag]
                       [--max-frames N]
                       [--no-progress]
                       [--baseline sgbm] [--depth-bins M,M,...]
                       [--through-node [--rate R] [--use-running-node] [--ros-domain-id N]
                                       [--node-timeout S] [--answer-timeout S] [--node-executable PATH]]

Reads mcap and sqlite3 bags (folders or their files), pairs the four inputs as the node does, runs the
network on every pair (in this process, or with ``--through-node`` in ``stereonet_node`` over DDS: the
bag is played into the node at the recorded rate times ``--rate`` with ``/clock`` and ``use_sim_time``,
its ``disparity`` recorded; unanswered pairs count as dropped, end-to-end latency is reported) and writes
into DIR: ``metrics.json``, ``per_frame.csv``, ``report.md``,
``report.html`` (self-contained), ``pictures/`` and, with ``--write-bag``, ``output_bag/`` (mcap:
``/disparity``, ``/points2``, ``/depth`` as the node publishes them with its default parameters, and the
left view, on the input stamps). Ground truth
(``--gt-topic``): a ``stereo_msgs/DisparityImage`` or a depth ``sensor_msgs/Image`` (32FC1 m, 16UC1 mm).
Scores are given in total (pixel-weighted), per bag, and for depth per range bin (``--depth-bins``);
``--baseline sgbm`` also scores OpenCV SGBM with stereo_image_proc's parameters on the same pairs, both
methods in the three views (dense with KITTI hole filling, answered pixels with density, matched density).
Images may be ``sensor_msgs/CompressedImage`` (PNG, JPEG, as image_transport's compressed plugin records
them): an image topic the bag lacks is read from its ``<topic>/compressed`` sibling when it has one.
Bad input exits non-zero with a one-line reason and leaves no new report.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from stereonet_ros.cli import NODE_PRECISION_HELP, NODE_PRECISIONS, add_after_search_flags
from stereonet_ros.evaluation.metrics import DEPTH_RANGE_EDGES  # numpy only: --help stays fast
from stereonet_ros.evaluation.replay import (DEFAULT_LEFT_INFO_TOPIC, DEFAULT_LEFT_TOPIC, DEFAULT_QUEUE_SIZE,
                                             DEFAULT_RIGHT_INFO_TOPIC, DEFAULT_RIGHT_TOPIC)
from stereonet_ros.evaluation.through_node import (DEFAULT_ANSWER_TIMEOUT, DEFAULT_STARTUP_TIMEOUT, NodeProcess,
                                                   NodeSource, PlaybackResult, PlaySettings, unique_domain_id)

if TYPE_CHECKING:  # loaded in main(): --help answers without torch
    from stereonet_ros.evaluation.bag_eval import EvaluationResult
    from stereonet_ros.evaluation.replay import ReplayConfig
    from stereonet_ros.evaluation.report import RunInfo

PROGRAM = 'stereonet-eval-bag'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description='Score stereo depth on recorded rosbag2 bags '
                                     '(mcap or sqlite3) and write a report.')
    parser.add_argument('bags', nargs='+', type=Path, metavar='BAG',
                        help='rosbag2 bag folder (or its .mcap / .db3 file); several are evaluated in order')
    parser.add_argument('--out', type=Path, required=True,
                        help='report folder (created; a previous report is replaced)')
    parser.add_argument('--left-topic', default=DEFAULT_LEFT_TOPIC,
                        help='left rectified image: sensor_msgs/Image, or CompressedImage (PNG, JPEG); a bag with '
                        'only <topic>/compressed is read from that')
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
                        help='stereonet_ros .safetensors, seed Lightning .ckpt, or .onnx from stereonet-export '
                        '(default: the bundled checkpoint)')
    parser.add_argument('--backend', choices=('auto', 'pytorch', 'onnxruntime'),
                        help="'auto' (the default) runs the bundled default in ONNX Runtime on a CPU in fp32 and in "
                        'PyTorch otherwise, a checkpoint file in PyTorch, an .onnx file in ONNX Runtime; as the node')
    parser.add_argument('--device', help="'auto' (CUDA when available; the default), 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument('--precision', choices=NODE_PRECISIONS, help=NODE_PRECISION_HELP)
    parser.add_argument('--inference-scale', type=float, metavar='S',
                        help='run the network on each pair resized by S, in [0.1, 2.5], in this process or in the '
                        'node this run starts (its inference_scale parameter); disparities come back at the input '
                        'size, in input pixels (default 1)')
    parser.add_argument('--no-refine', action='store_true',
                        help="without the checkpoint's refiners (the soft argmin carried up), in this process or in "
                        'the node this run starts (its refine parameter, false)')
    parser.add_argument('--local-search', type=int, metavar='PX',
                        help="search the photometric cost within PX pixels of the network's answer, 0..16, 0 = off, "
                        "in this process or in the node this run starts (its local_search_px parameter; default the "
                        "node's, -1: 4 where the network runs on the CPU, 0 on a GPU)")
    add_after_search_flags(parser, ', in this process or in the node this run starts')
    parser.add_argument('--min-confidence', type=float, metavar='T',
                        help="leave a hole where the confidence is below T, in [0, 1], in this process or in the "
                        "node this run starts (its min_confidence parameter; default the node's, 0: keep all)")
    parser.add_argument('--write-bag', action='store_true',
                        help='also write DIR/output_bag (mcap): /disparity, /points2, /depth on the input stamps')
    parser.add_argument('--max-frames', type=int, help='stop after this many pairs')
    parser.add_argument('--baseline', choices=BASELINES,
                        help="also run OpenCV SGBM with stereo_image_proc's parameters on the same pairs and score "
                        'both side by side in three views: dense (holes filled as the KITTI devkit does), answered '
                        'pixels with their density, and matched density (ours keeps its most confident pixels down '
                        "to SGBM's density)")
    parser.add_argument('--depth-bins', metavar='M,M,...',
                        help='edges of the depth range bins (of the ground-truth depth), metres, increasing; the last '
                        'bin is open-ended (default: ' + ','.join(f'{edge:g}' for edge in DEPTH_BIN_DEFAULT) + ')')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    node = parser.add_argument_group('through the ROS node (--through-node)')
    node.add_argument('--through-node', action='store_true',
                      help='start stereonet_node (or use a running one), play the bags into it over DDS with /clock '
                      'and use_sim_time, and score what it publishes on disparity; reports latency and dropped pairs')
    node.add_argument('--rate', type=float, help='playback speed factor: 1 = as recorded (default), 0.1 = ten times '
                      'slower (fewer pairs dropped by a slow node)')
    node.add_argument('--use-running-node', action='store_true',
                      help="do not start a node: play into the one running on this environment's ROS domain")
    node.add_argument('--ros-domain-id', type=int,
                      help='ROS domain of the node (default: a free-looking one for the node this run starts, the '
                      "environment's with --use-running-node)")
    node.add_argument('--node-timeout', type=float,
                      help=f'seconds to wait for the node to subscribe (default {DEFAULT_STARTUP_TIMEOUT:g})')
    node.add_argument('--answer-timeout', type=float,
                      help='after a bag ends, seconds without a new disparity before the unanswered pairs count as '
                      f'dropped (default {DEFAULT_ANSWER_TIMEOUT:g})')
    node.add_argument('--node-executable', type=Path,
                      help='the node program to start (default: stereonet_node beside this Python)')
    return parser


def parse_depth_bins(text: str) -> tuple[float, ...]:
    """``'0,1,2.5,10'`` -> ``(0.0, 1.0, 2.5, 10.0, inf)``: the last bin is open-ended.

    Raises:
        ValueError: not comma-separated numbers, or not >= 0 and strictly increasing (the message says which).
    """
    from stereonet_ros.evaluation.metrics import MetricsError, check_range_edges

    try:
        edges = [float(part) for part in text.split(',')]
    except ValueError:
        raise ValueError(f'--depth-bins {text!r}: expected comma-separated metres, e.g. 0,1,2,5,10') from None
    if edges and math.isfinite(edges[-1]):
        edges.append(math.inf)
    try:
        return check_range_edges(edges)
    except MetricsError as err:
        raise ValueError(f'--depth-bins {text!r}: {err}') from None


BASELINES = ('sgbm',)
DEPTH_BIN_DEFAULT = DEPTH_RANGE_EDGES[:-1]  # the open-ended last bin is implied
NODE_ONLY_OPTIONS = ('rate', 'use_running_node', 'ros_domain_id', 'node_timeout', 'answer_timeout',
                     'node_executable')


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    # Imported here so that --help and usage errors answer without loading torch.
    from stereonet_ros.cli import fail
    from stereonet_ros.evaluation.bag_eval import (DisparitySource, PredictorSource, SgbmBaseline, check_bags,
                                                   evaluate_bags)
    from stereonet_ros.evaluation.bagio import BagWriteError, open_bag_writer
    from stereonet_ros.evaluation.replay import ReplayConfig, ReplayError
    from stereonet_ros.evaluation.report import OUTPUT_BAG_NAME, ReportError, ReportFolder, RunInfo, write_report
    from stereonet_ros.evaluation.through_node import ThroughNodeError
    from stereonet_ros.geometry import GeometryError
    from stereonet_ros.image_codec import ImageCodecError
    from stereonet_ros.backends import open_predictor
    from stereonet_ros.inference_common import (MAX_INFERENCE_SCALE, MIN_INFERENCE_SCALE, InputError,
                                                UntrainedPlaceholderWarning, check_inference_scale,
                                                check_local_search, check_min_confidence)
    from stereonet_ros.local_search import AUTO
    from stereonet_ros.model.checkpoint import CheckpointError
    from stereonet_ros.training.train import git_sha

    if arguments.max_frames is not None and arguments.max_frames < 1:
        fail(PROGRAM, f'--max-frames {arguments.max_frames}: must be >= 1', status=2)
    depth_edges = DEPTH_RANGE_EDGES
    if arguments.depth_bins is not None:
        try:
            depth_edges = parse_depth_bins(arguments.depth_bins)
        except ValueError as err:
            fail(PROGRAM, str(err), status=2)
    if arguments.inference_scale is not None:
        try:
            check_inference_scale(arguments.inference_scale)
        except InputError:
            fail(PROGRAM, f'--inference-scale {arguments.inference_scale!r}: must be in '
                 f'[{MIN_INFERENCE_SCALE}, {MAX_INFERENCE_SCALE}]', status=2)
    if not arguments.through_node:
        given = [name for name in NODE_ONLY_OPTIONS if getattr(arguments, name) not in (None, False)]
        if given:
            fail(PROGRAM, f'--{given[0].replace("_", "-")} needs --through-node', status=2)
    else:
        if arguments.max_frames is not None:
            fail(PROGRAM, '--max-frames is not supported with --through-node (the bag is played whole)', status=2)
        if arguments.use_running_node and (arguments.checkpoint or arguments.backend or arguments.device
                                           or arguments.precision or arguments.inference_scale is not None
                                           or arguments.no_refine or arguments.local_search is not None
                                           or arguments.no_sgbm_fallback or arguments.no_fill_occlusions
                                           or arguments.left_right_check
                                           or arguments.min_confidence is not None or arguments.node_executable):
            fail(PROGRAM, '--checkpoint, --backend, --device, --precision, --inference-scale, --no-refine, '
                 '--local-search, --no-sgbm-fallback, --no-fill-occlusions, --left-right-check, --min-confidence and '
                 '--node-executable '
                 'configure a node this run starts; with --use-running-node set them on the running node', status=2)
    try:
        config = ReplayConfig(left_topic=arguments.left_topic, right_topic=arguments.right_topic,
                              left_info_topic=arguments.left_info_topic, right_info_topic=arguments.right_info_topic,
                              gt_topic=arguments.gt_topic, approximate_sync=arguments.approximate_sync,
                              sync_tolerance_s=arguments.sync_tolerance, queue_size=arguments.queue_size)
    except ReplayError as err:
        fail(PROGRAM, str(err), status=2)
    command = ' '.join(shlex.quote(part) for part in [PROGRAM, *(sys.argv[1:] if argv is None else argv)])
    created = datetime.now(timezone.utc).isoformat(timespec='seconds')
    device = arguments.device or 'auto'
    scale = 1.0 if arguments.inference_scale is None else float(arguments.inference_scale)
    reach = AUTO if arguments.local_search is None else arguments.local_search
    try:
        check_local_search(reach)
    except InputError as err:
        fail(PROGRAM, f'--local-search: {err}', status=2)
    try:
        min_confidence = check_min_confidence(0.0 if arguments.min_confidence is None else arguments.min_confidence)
    except InputError as err:
        fail(PROGRAM, f'--min-confidence: {err}', status=2)
    try:
        check_bags(arguments.bags, config)  # every bag and topic, before loading the model
        with ReportFolder(arguments.out) as staging:
            source: DisparitySource
            if arguments.through_node:
                node_run = _play_through_node(arguments, config, staging.path)
                source, max_disparity = node_run.source, node_run.max_disparity
                info = node_run.run_info(command, git_sha(), created)
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter('always', UntrainedPlaceholderWarning)
                    predictor = open_predictor(arguments.checkpoint, device=device,
                                               precision=arguments.precision or 'auto',
                                               backend=arguments.backend or 'auto', refine=not arguments.no_refine)
                for warning in caught:
                    print(f'{PROGRAM}: warning: {warning.message}', file=sys.stderr)
                provenance = predictor.checkpoint.provenance
                info = RunInfo(checkpoint=str(arguments.checkpoint) if arguments.checkpoint else 'bundled default',
                               checkpoint_note=str(provenance.get('note', '')), placeholder=predictor.is_placeholder,
                               device=str(predictor.device), command=command, git_sha=git_sha(),
                               created=created, precision=predictor.precision)
                source = PredictorSource(predictor, scale=scale, local_search=reach, min_confidence=min_confidence,
                                         sgbm_fallback=not arguments.no_sgbm_fallback,
                                         fill_occlusions=not arguments.no_fill_occlusions,
                                         left_right_check=arguments.left_right_check)
                max_disparity = predictor.contract.max_disparity / scale  # each answer gives its exact one
            bag_path = staging.path / OUTPUT_BAG_NAME
            with open_bag_writer(bag_path, 'mcap') if arguments.write_bag else nullcontext(None) as output_bag:
                baseline = SgbmBaseline(max_disparity) if arguments.baseline == 'sgbm' else None
                result: EvaluationResult = evaluate_bags(
                    arguments.bags, config, source, max_disparity=max_disparity, output_bag=output_bag,
                    progress=False if arguments.no_progress else None, max_frames=arguments.max_frames,
                    baseline=baseline, depth_edges=depth_edges)
            if arguments.through_node:
                node_run.annotate(result)
            if not (arguments.through_node and arguments.use_running_node):
                result.extra['inference_scale'] = scale
                result.extra['refine'] = not arguments.no_refine
                result.extra['local_search_px'] = reach
                result.extra['sgbm_fallback'] = not arguments.no_sgbm_fallback
                result.extra['fill_occlusions'] = not arguments.no_fill_occlusions
                result.extra['left_right_check'] = arguments.left_right_check
                result.extra['min_confidence'] = min_confidence
            published_bag = str(arguments.out / OUTPUT_BAG_NAME) if arguments.write_bag else None
            metrics = write_report(result, info, staging.path, output_bag=published_bag)
            staging.publish(extra=(OUTPUT_BAG_NAME,))
    except (ReplayError, ReportError, BagWriteError, CheckpointError, InputError, GeometryError,
            ImageCodecError, ThroughNodeError) as err:
        fail(PROGRAM, str(err))
    except OSError as err:  # the report or staging on a full disk: nothing is published, one line says why
        fail(PROGRAM, f'cannot write {err.filename or arguments.out}: {err.strerror or err}')
    timing = metrics['timing']
    for frame in result.frames:
        if frame.status in ('skipped', 'dropped'):
            print(f'{PROGRAM}: warning: {Path(frame.bag).name} pair #{frame.index} {frame.status}: {frame.note}',
                  file=sys.stderr)
    summary = (f'{PROGRAM}: {metrics["frames"]} pairs ({metrics["frames_scored"]} scored, '
               f'{metrics["frames_skipped"]} skipped, {metrics["frames_dropped"]} dropped) on {info.device}')
    if timing['frames_timed']:
        summary += f'; model time p50 {timing["model_ms_p50"]:.1f} ms, p95 {timing["model_ms_p95"]:.1f} ms'
    if timing['frames_with_latency']:
        summary += (f'; through the node: latency p50 {timing["latency_ms_p50"]:.1f} ms, '
                    f'p95 {timing["latency_ms_p95"]:.1f} ms')
    if metrics['epe'] is not None:
        summary += (f'; EPE {metrics["epe"]:.2f} px, bad-1 {metrics["bad1"]:.1f} %, bad-3 {metrics["bad3"]:.1f} %, '
                    f'D1 {metrics["d1"]:.1f} %')
    print(summary)
    if info.placeholder:
        print(f'{PROGRAM}: (these scores are of the UNTRAINED placeholder network, not of StereoNet)')
    print(f'{PROGRAM}: report: {arguments.out / "report.html"} (also report.md, metrics.json, per_frame.csv)'
          + (f'; output bag: {published_bag}' if published_bag else ''))
    return 0


@dataclass
class NodeRun:
    """A finished ``--through-node`` playback and what the report needs to say about it."""

    source: NodeSource
    playback: PlaybackResult
    settings: PlaySettings
    started: bool  # this run started the node (else: a running one)
    checkpoint: str
    checkpoint_note: str
    placeholder: bool
    device: str
    precision: str
    max_disparity: float  # the network's largest image shift, input pixels (output bag bounds)

    def run_info(self, command: str, git: str, created: str) -> RunInfo:
        from stereonet_ros.evaluation.report import RunInfo

        return RunInfo(checkpoint=self.checkpoint, checkpoint_note=self.checkpoint_note, placeholder=self.placeholder,
                       device=self.device, command=command, git_sha=git, created=created,
                       precision=self.precision)

    def annotate(self, result: EvaluationResult) -> None:
        """Add the playback's numbers to ``metrics.json`` (``through_node``) and notes to the report."""
        answered = sum(1 for frame in result.frames if math.isfinite(frame.latency_ms))
        dropped = result.count('dropped')
        result.extra['through_node'] = {
            'node': 'started by this run' if self.started else 'already running',
            'ros_domain_id': self.settings.domain_id, 'rate': self.settings.rate,
            'answer_timeout_s': self.settings.answer_timeout_s, 'pairs_answered': answered, 'pairs_dropped': dropped,
            'latency': 'wall-clock receive time of the disparity minus publish time of the last input with its stamp',
            'playback_wall_seconds': self.playback.wall_seconds,
            'bags': [{'path': item.bag, 'left_images': item.left_images, 'messages': item.messages,
                      'answers': len(item.answers), 'unmatched_answers': item.unmatched_answers,
                      'stamp_offset_ns': item.stamp_offset_ns, 'play_seconds': item.play_seconds}
                     for item in self.playback.bags],
            'node_identity': self.playback.node_diagnostics,  # checkpoint, device, ... from its /diagnostics
        }
        result.notes.append(
            f'Played through `stereonet_node` over DDS ({"started by this run" if self.started else "a running node"}'
            f', `use_sim_time` with `/clock`, {self.settings.rate:g} x the recorded rate): {answered} pairs answered, '
            f'{dropped} dropped (no disparity with their stamp: the node keeps only the newest waiting pair while it '
            'is busy). Scores are of what the node published: pixels it marks invalid (disparity <= 0, below '
            '`min_disparity`, match outside the right image) count as missing, so density is below 1 and the '
            'scores differ from an in-process run by those pixels. Latency: disparity received minus last input '
            'published, wall clock.')
        if any(item.stamp_offset_ns for item in self.playback.bags):
            result.notes.append('Bags whose stamps did not come after the previous bag\'s were played with their '
                                'stamps moved forward by a constant (`through_node.bags[].stamp_offset_ns`), so '
                                'the node saw time go forward; answers are matched on the bags\' own stamps.')


def _play_through_node(arguments: argparse.Namespace, config: ReplayConfig, folder: Path) -> NodeRun:
    """Start the node (unless ``--use-running-node``), play every bag into it, stop it; return the answers.

    Raises:
        ThroughNodeError: the node would not start, never matched, or died (one line).
        CheckpointError: ``--checkpoint`` cannot be used (checked before starting the node).
        ReplayError: a bag cannot be read, or the bags mix raw and compressed images.
    """
    from stereonet_ros.evaluation.bag_eval import bags_image_transport
    from stereonet_ros.inference import DEFAULT_CHECKPOINT, placeholder_checkpoint
    from stereonet_ros.local_search import AUTO
    from stereonet_ros.model.checkpoint import load_checkpoint
    from stereonet_ros.ros.bag_player import play_through_node

    start_node = not arguments.use_running_node
    domain = arguments.ros_domain_id
    if start_node and domain is None:
        domain = unique_domain_id()
    transport = bags_image_transport(arguments.bags, config)  # compressed bags: played compressed, node reads so
    settings = PlaySettings(rate=1.0 if arguments.rate is None else arguments.rate, domain_id=domain,
                            localhost_only=start_node,
                            startup_timeout_s=arguments.node_timeout or DEFAULT_STARTUP_TIMEOUT,
                            answer_timeout_s=arguments.answer_timeout or DEFAULT_ANSWER_TIMEOUT,
                            image_transport=transport)
    if not start_node:
        playback = play_through_node(arguments.bags, config, settings)
        diagnostics = playback.node_diagnostics
        label = diagnostics.get('checkpoint', 'unknown (the running node sent no diagnostics)')
        return NodeRun(NodeSource(playback, f'stereonet_node over DDS (a running node, ROS domain '
                                  f'{"of the environment" if domain is None else domain})'), playback, settings,
                       started=False, checkpoint=label, checkpoint_note=diagnostics.get('checkpoint provenance', ''),
                       placeholder=diagnostics.get('placeholder') == 'true',
                       device=diagnostics.get('device', 'unknown'), precision=diagnostics.get('precision', 'unknown'),
                       max_disparity=192.0)
    # The checkpoint is checked here first, so that a bad path is one line from us, not a node log.
    checkpoint_path = arguments.checkpoint.resolve() if arguments.checkpoint else None
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path)
    else:
        checkpoint = load_checkpoint(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.exists() else placeholder_checkpoint()
    node_folder = folder / 'node'
    node_folder.mkdir()
    scale = 1.0 if arguments.inference_scale is None else float(arguments.inference_scale)
    with NodeProcess(node_folder, settings.domain_id or 0, str(checkpoint_path) if checkpoint_path else None,
                     arguments.device or 'auto', executable=arguments.node_executable,
                     extra_parameters={'precision': arguments.precision or 'auto',
                                       'backend': arguments.backend or 'auto', 'inference_scale': repr(scale),
                                       'refine': 'false' if arguments.no_refine else 'true',
                                       'local_search_px': str(AUTO if arguments.local_search is None
                                                              else arguments.local_search),
                                       'sgbm_fallback': 'false' if arguments.no_sgbm_fallback else 'true',
                                       'fill_occlusions': 'false' if arguments.no_fill_occlusions else 'true',
                                       'left_right_check': 'true' if arguments.left_right_check else 'false',
                                       'min_confidence': repr(0.0 if arguments.min_confidence is None
                                                              else float(arguments.min_confidence))},
                     image_transport=transport) as node:
        playback = play_through_node(arguments.bags, config, settings, node_failure=node.failure)
    description = (f'stereonet_node over DDS (started by this run, ROS domain {settings.domain_id}, '
                   f'use_sim_time, {settings.rate:g} x the recorded rate)')
    device = playback.node_diagnostics.get('device', arguments.device or 'auto')
    return NodeRun(NodeSource(playback, description), playback, settings, started=True,
                   checkpoint=str(arguments.checkpoint) if arguments.checkpoint else 'bundled default',
                   checkpoint_note=str(checkpoint.provenance.get('note', '')),
                   placeholder=bool(checkpoint.provenance.get('placeholder')), device=device,
                   precision=playback.node_diagnostics.get('precision', arguments.precision or 'auto'),
                   max_disparity=float(checkpoint.contract.max_disparity) / scale)


if __name__ == '__main__':
    sys.exit(main())
