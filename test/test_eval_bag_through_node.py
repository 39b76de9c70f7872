"""``stereonet-eval-bag --through-node``: bags played into a real ``stereonet_node`` over DDS.

Each test that starts a node gives it a ROS domain of its own (from the pid, different from the node
tests' ``1 + pid % 100``), discovery limited to this host. Bags are small (160x96 gray) so that a
loaded 2-core CPU answers a pair in well under a second; every wait is bounded by the CLI's timeouts.
"""
from __future__ import annotations

import csv
import json
import os
import stat
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')

from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from stereonet_ros.camera import StereoCamera  # noqa: E402
from stereonet_ros.cli import eval_bag  # noqa: E402
from stereonet_ros.evaluation.bag_eval import SourceResult, evaluate_bags  # noqa: E402
from stereonet_ros.evaluation.bagio import camera_info_messages, image_message  # noqa: E402
from stereonet_ros.evaluation.makebag import simple_camera, synthetic_pairs, write_stereo_bag  # noqa: E402
from stereonet_ros.evaluation.replay import ReplayConfig, ReplayFrame  # noqa: E402
from stereonet_ros.evaluation.through_node import node_disparity_to_shift  # noqa: E402
from stereonet_ros.inference import Predictor, UntrainedPlaceholderWarning  # noqa: E402
from stereonet_ros.local_search import AUTO, DEFAULT_REACH_PX  # noqa: E402
from stereonet_ros.node_config import NodeConfig  # noqa: E402
from stereonet_ros.processing import OutputSelection, StereoProcessor  # noqa: E402
from stereonet_ros.ros.bag_player import to_ros_message  # noqa: E402
from stereonet_ros.sync import stamp_to_ns  # noqa: E402

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.filterwarnings('ignore::stereonet_ros.inference.UntrainedPlaceholderWarning')]

GT_TOPIC = '/ground_truth/disparity'
NODE = Path(sys.executable).parent / 'stereonet_node'
SEED_CHECKPOINT = (Path(__file__).resolve().parents[1].parent / 'shared' / 'fixtures' / 'seed_checkpoint_gray'
                   / 'seed_gray_random.ckpt')


def _domain(salt: int) -> str:
    return str(1 + (os.getpid() + salt) % 100)


def _bag(path: Path, count: int, seed: int = 0, doffs: float = 0.0, compression: str | None = None) -> Path:
    """Synthetic pairs; ``doffs`` = cx_right - cx_left (a Middlebury-style rig: DisparityImage values differ
    from the image shift); ``compression``: images as CompressedImage (png, jpeg)."""
    camera = simple_camera(160, 96, 160.0, 0.12, doffs=doffs)
    pairs = (replace(pair, camera=camera) for pair in synthetic_pairs(count, width=160, height=96, seed=seed))
    write_stereo_bag(path, pairs, storage='mcap', gt='disparity', compression=compression)  # type: ignore[arg-type]
    return path


class NodeValiditySource:
    """The model in this process with the node's post-processing (validity rule, DisparityImage values)
    and the same conversion back to image shift: what the node's scores must equal."""

    description = 'in-process model with the node validity rule'
    drop_reason = 'never'

    def __init__(self, predictor: Predictor, scale: float = 1.0, local_search: int = DEFAULT_REACH_PX) -> None:
        self.processor = StereoProcessor(predictor)
        self.config = NodeConfig(device='cpu', inference_scale=scale, local_search_px=local_search)

    def __call__(self, frame: ReplayFrame) -> SourceResult:
        outputs = self.processor.process(frame.left, frame.right, frame.camera, self.config,
                                         OutputSelection(depth=False, points=False, confidence=False,
                                                         disparity_color=False))
        shift = node_disparity_to_shift(outputs.disparity, outputs.min_disparity, frame.camera.principal_offset)
        return SourceResult(shift, 0.0)


@pytest.fixture(scope='module')
def checkpoint(placeholder_checkpoint_path: Path) -> Path:
    """The seed fixture checkpoint where ../shared has it, else the untrained placeholder as a file."""
    return SEED_CHECKPOINT if SEED_CHECKPOINT.exists() else placeholder_checkpoint_path


def test_rosbags_messages_become_rclpy_messages_field_for_field() -> None:
    camera = StereoCamera(width=5, height=3, fx=90.0, fy=91.0, cx=2.0, cy=1.0, cx_right=-1.5, focal=90.0,
                          baseline=0.2, frame_id='left_optical')
    pixels = np.arange(15, dtype=np.uint16).reshape(3, 5) * 1000
    source = image_message(pixels, 'mono16', 1_700_000_000_123_456_789, 'left_optical')
    image = to_ros_message(source, Image)
    assert (image.height, image.width, image.encoding, image.step) == (3, 5, 'mono16', source.step)
    assert stamp_to_ns(image.header.stamp) == 1_700_000_000_123_456_789 and image.header.frame_id == 'left_optical'
    assert bytes(image.data) == source.data.tobytes()
    left_info, right_info = camera_info_messages(camera, 42)
    info = to_ros_message(right_info, CameraInfo)
    np.testing.assert_array_equal(np.asarray(info.p), right_info.p)
    np.testing.assert_array_equal(np.asarray(info.k), right_info.k)
    assert list(info.d) == list(right_info.d) and info.distortion_model == right_info.distortion_model
    assert (info.width, info.height, stamp_to_ns(info.header.stamp)) == (5, 3, 42)


@pytest.mark.parametrize('scale, refine, local_search', [(None, True, None), (1.5, True, 0), (None, False, 0)])
def test_scores_through_the_node_equal_the_in_process_scores_when_nothing_drops(
        tmp_path: Path, checkpoint: Path, scale: float | None, refine: bool, local_search: int | None) -> None:
    """The node's answers, scored, equal the same steps run in this process. The local search's thresholds turn a
    difference in the network's last digits (the node's threads sum in another order) into a whole pixel at a
    rare pixel, so its case (the node's default, 4) is held to 0.1 % and the others, without it, to 1e-5."""
    bag = _bag(tmp_path / 'bag', 3, doffs=5.0)
    out = tmp_path / 'out'
    arguments = [str(bag), '--out', str(out), '--gt-topic', GT_TOPIC, '--no-progress', '--through-node',
                 '--rate', '0.05', '--device', 'cpu', '--ros-domain-id', _domain(53), '--answer-timeout', '20',
                 '--checkpoint', str(checkpoint)]
    if scale is not None:  # passed on to the node it starts, as its inference_scale parameter
        arguments += ['--inference-scale', str(scale)]
    if not refine:  # passed on as its refine parameter
        arguments += ['--no-refine']
    if local_search is not None:  # passed on as its local_search_px parameter
        arguments += ['--local-search', str(local_search)]
    assert eval_bag.main(arguments) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['inference_scale'] == (scale or 1.0)
    assert metrics['local_search_px'] == (AUTO if local_search is None else local_search)
    reach = DEFAULT_REACH_PX if local_search is None else local_search  # AUTO beside this CPU network
    assert metrics['frames_dropped'] == 0, metrics['through_node']
    assert metrics['frames_scored'] == 3 and metrics['through_node']['pairs_answered'] == 3
    timing = metrics['timing']
    assert timing['frames_with_latency'] == 3 and 0 < timing['latency_ms_p50'] <= timing['latency_ms_p95']
    assert metrics['checkpoint']['placeholder'] == (checkpoint != SEED_CHECKPOINT)

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UntrainedPlaceholderWarning)
        predictor = Predictor.from_checkpoint(checkpoint, device='cpu', refine=refine)
    expected = evaluate_bags([bag], ReplayConfig(gt_topic=GT_TOPIC),
                             NodeValiditySource(predictor, scale or 1.0, reach), progress=False)
    assert expected.disparity is not None
    tolerance = 1e-3 if reach else 1e-5
    for key in ('epe', 'bad1', 'bad2', 'bad3', 'd1', 'density'):
        assert metrics[key] == pytest.approx(getattr(expected.disparity, key), rel=tolerance, abs=1e-6), key
    assert metrics['valid_pixels'] == expected.disparity.valid_pixels
    assert 0.0 < metrics['density'] < 1.0  # the node's validity rule leaves some pixels out
    if scale is not None:  # the node did run at the scale: at 1 its scores differ
        at_one = evaluate_bags([bag], ReplayConfig(gt_topic=GT_TOPIC), NodeValiditySource(predictor, 1.0, reach),
                               progress=False)
        assert at_one.disparity is not None
        assert metrics['epe'] != pytest.approx(at_one.disparity.epe, rel=1e-3)
    rows = list(csv.DictReader((out / 'per_frame.csv').open()))
    for row, frame in zip(rows, expected.frames, strict=True):
        assert frame.disparity is not None
        assert float(row['epe']) == pytest.approx(frame.disparity.epe, rel=tolerance)
        assert float(row['latency_ms']) > 0 and row['model_ms'] == ''
    report = (out / 'report.md').read_text()
    assert 'Played through `stereonet_node`' in report and 'end-to-end latency p50 / p95' in report


def test_a_png_compressed_bag_is_played_compressed_into_a_compressed_node_and_scores_as_raw(
        tmp_path: Path, checkpoint: Path) -> None:
    """The bag's CompressedImage topics are played on /left/image_rect/compressed, ... into a node started with
    image_transport compressed; its scores equal the in-process model's on the raw pixels (PNG is lossless)."""
    bag = _bag(tmp_path / 'bag', 2, doffs=5.0, compression='png')
    out = tmp_path / 'out'
    assert eval_bag.main([str(bag), '--out', str(out), '--gt-topic', GT_TOPIC, '--no-progress', '--through-node',
                          '--rate', '0.05', '--device', 'cpu', '--ros-domain-id', _domain(61), '--answer-timeout', '20',
                          '--checkpoint', str(checkpoint)]) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['frames_dropped'] == 0 and metrics['frames_scored'] == 2, metrics['through_node']
    raw = _bag(tmp_path / 'raw', 2, doffs=5.0)  # the same pairs, raw: the reference is computed on these
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UntrainedPlaceholderWarning)
        predictor = Predictor.from_checkpoint(checkpoint, device='cpu')
    expected = evaluate_bags([raw], ReplayConfig(gt_topic=GT_TOPIC), NodeValiditySource(predictor), progress=False)
    assert expected.disparity is not None
    for key in ('epe', 'bad1', 'bad3', 'density'):
        assert metrics[key] == pytest.approx(getattr(expected.disparity, key), rel=1e-5, abs=1e-6), key
    assert metrics['valid_pixels'] == expected.disparity.valid_pixels


def test_bags_that_mix_raw_and_compressed_images_are_refused_before_a_node_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bags = [_bag(tmp_path / 'raw', 1), _bag(tmp_path / 'png', 1, compression='png')]
    with pytest.raises(SystemExit) as exit_info:
        eval_bag.main([*map(str, bags), '--out', str(tmp_path / 'out'), '--no-progress', '--through-node',
                       '--ros-domain-id', _domain(67), '--node-executable', str(tmp_path / 'never-started')])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and 'the bags mix raw and compressed images' in error, error
    assert '/left/image_rect (raw)' in error and '/left/image_rect/compressed (compressed)' in error


def test_every_pair_played_fast_into_the_node_is_answered_or_counted_as_dropped(tmp_path: Path) -> None:
    # Two bags from the same start stamp (as stereonet-make-bag writes them): the second is played later
    # in time; played at the recorded 10 Hz, faster than the CPU answers, so the node drops pairs.
    bags = [_bag(tmp_path / 'first', 6), _bag(tmp_path / 'second', 4, seed=1)]
    out = tmp_path / 'out'
    assert eval_bag.main([*map(str, bags), '--out', str(out), '--gt-topic', GT_TOPIC, '--no-progress',
                          '--through-node', '--rate', '1', '--device', 'cpu', '--ros-domain-id', _domain(71),
                          '--answer-timeout', '20']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    rows = list(csv.DictReader((out / 'per_frame.csv').open()))
    assert len(rows) == metrics['frames'] == 10
    assert {row['status'] for row in rows} <= {'scored', 'dropped'}
    answered = [row for row in rows if row['status'] == 'scored']
    assert all(float(row['latency_ms']) > 0 for row in answered)
    assert all(row['latency_ms'] == '' for row in rows if row['status'] == 'dropped')
    node = metrics['through_node']
    assert node['pairs_answered'] == len(answered) and node['pairs_dropped'] == 10 - len(answered)
    assert metrics['frames_dropped'] == node['pairs_dropped']
    assert [item['answers'] for item in node['bags']] == [
        sum(row['status'] == 'scored' and row['bag'] == str(bag) for row in rows) for bag in bags]
    assert node['bags'][0]['stamp_offset_ns'] == 0 and node['bags'][1]['stamp_offset_ns'] > 0
    assert all(item['unmatched_answers'] == 0 for item in node['bags'])
    # The latest-wins slot never drops the newest pair: each bag's last pair is answered.
    for bag in bags:
        last = [row for row in rows if row['bag'] == str(bag)][-1]
        assert last['status'] == 'scored', last


def _failing(tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str]) -> str:
    bag = _bag(tmp_path / 'bag', 2)
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_info:
        eval_bag.main([str(bag), '--out', str(out), '--gt-topic', GT_TOPIC, '--no-progress', '--through-node',
                       *arguments])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith('stereonet-eval-bag: error: '), error
    assert not (out / 'metrics.json').exists() and not (out / 'report.html').exists()
    assert not any(path.name.startswith('.partial-report-') for path in out.iterdir())
    return error


def test_no_running_node_is_a_one_line_error_after_the_bounded_wait_and_no_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = _failing(tmp_path, capsys, ['--use-running-node', '--ros-domain-id', _domain(89), '--node-timeout', '3'])
    assert 'no stereonet node matched within 3 s' in error and '/left/image_rect' in error


def test_a_node_that_dies_while_the_bag_plays_is_a_one_line_error_and_no_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The real node, killed a few seconds after it started: while the (very slow) playback runs.
    wrapper = tmp_path / 'dying_node'
    wrapper.write_text(f'#!/bin/sh\n"{NODE}" "$@" &\nchild=$!\nsleep 12\nkill -9 $child\n'
                       'echo "[FATAL] killed by the test"\nexit 9\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    error = _failing(tmp_path, capsys, ['--rate', '0.005', '--device', 'cpu', '--ros-domain-id', _domain(97),
                                        '--node-executable', str(wrapper)])
    assert 'the node exited with status 9: [FATAL] killed by the test' in error


def test_a_node_that_never_starts_is_a_one_line_error_and_no_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = _failing(tmp_path, capsys, ['--device', 'tpu', '--ros-domain-id', _domain(13)])
    assert 'the node exited with status 1' in error and "device='tpu'" in error


def test_a_running_node_is_used_as_it_is_and_reports_its_own_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, placeholder_checkpoint_path: Path) -> None:
    from stereonet_ros.evaluation.through_node import NodeProcess

    domain = _domain(29)
    node = NodeProcess(tmp_path, int(domain), str(placeholder_checkpoint_path), 'cpu',
                       extra_parameters={'diagnostics_period_seconds': '0.1'})
    try:
        monkeypatch.setenv('ROS_DOMAIN_ID', domain)
        monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
        bag = _bag(tmp_path / 'bag', 2)
        out = tmp_path / 'out'
        assert eval_bag.main([str(bag), '--out', str(out), '--gt-topic', GT_TOPIC, '--no-progress', '--through-node',
                              '--use-running-node', '--rate', '0.1', '--answer-timeout', '20']) == 0
        assert node.process.poll() is None  # not ours to stop
        metrics = json.loads((out / 'metrics.json').read_text())
        assert metrics['through_node']['node'] == 'already running' and metrics['frames_scored'] == 2
        assert metrics['checkpoint']['path'] == str(placeholder_checkpoint_path) and metrics['device'] == 'cpu'
        assert metrics['checkpoint']['placeholder'] is True
    finally:
        node.stop()
