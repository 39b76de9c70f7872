"""Bag replay: bags written with rosbags (mcap and sqlite3) read back pair by pair, ground truth decoded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from stereonet_ros.camera import StereoCamera
from stereonet_ros.evaluation.bag_eval import SourceResult, evaluate_bags
from stereonet_ros.evaluation.bagio import TYPESTORE, BagWriteError, camera_info_messages, compressed_image_message, \
    image_message, open_bag_writer
from stereonet_ros.evaluation.makebag import (MakeBagError, StereoPair, shift_to_disparity_message_values,
                                              simple_camera, write_stereo_bag)
from stereonet_ros.evaluation.replay import (BagReplay, GroundTruthError, ReplayConfig, ReplayError, ReplayFrame,
                                             SkippedPair, decode_ground_truth, depth_to_shift,
                                             disparity_message_to_shift, normalize_topic, shift_to_depth)

HEIGHT, WIDTH = 24, 40
STORAGES = ('mcap', 'sqlite3')


def _camera(doffs: float = 0.0) -> StereoCamera:
    # f * T = 40 px m: depths of 0.8..4 m are disparities of 50..10 px.
    return simple_camera(WIDTH, HEIGHT, focal=40.0, baseline=1.0, doffs=doffs)


def _pairs(count: int, camera: StereoCamera, seed: int = 0) -> list[StereoPair]:
    """Random images and a ground truth whose depth is a whole number of millimetres (16UC1 holds it exactly)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(count):
        depth_mm = rng.integers(800, 4000, size=(HEIGHT, WIDTH))
        disparity = (camera.focal * camera.baseline / (depth_mm / 1000.0)).astype(np.float32)
        shift = disparity + np.float32(camera.principal_offset)  # image shift = DisparityImage value + cx_l - cx_r
        shift[0, :5] = np.inf  # no ground truth
        left = rng.integers(0, 256, size=(HEIGHT, WIDTH), dtype=np.uint8)
        right = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
        pairs.append(StereoPair(f'p{index}', left, right, camera, shift))
    return pairs


def _frames(path: Path, config: ReplayConfig) -> list[ReplayFrame | SkippedPair]:
    with BagReplay(path, config) as replay:
        return list(replay.frames())


@pytest.mark.parametrize('storage', STORAGES)
def test_a_written_bag_reads_back_the_same_pairs_cameras_and_ground_truth(tmp_path: Path, storage: str) -> None:
    camera = _camera(doffs=7.5)
    pairs = _pairs(3, camera)
    assert write_stereo_bag(tmp_path / 'bag', pairs, storage=storage) == 3  # type: ignore[arg-type]
    frames = _frames(tmp_path / 'bag', ReplayConfig(gt_topic='/ground_truth/disparity'))
    assert len(frames) == 3
    for index, (frame, pair) in enumerate(zip(frames, pairs, strict=True)):
        assert isinstance(frame, ReplayFrame)
        assert frame.index == index and frame.stamp_ns == 1_700_000_000_000_000_000 + index * 100_000_000
        np.testing.assert_array_equal(frame.left, pair.left)
        np.testing.assert_array_equal(frame.right, pair.right)  # rgb8, R, G, B
        assert frame.camera == camera
        assert frame.ground_truth is not None and frame.ground_truth.kind == 'disparity'
        assert pair.gt_shift is not None
        known = np.isfinite(pair.gt_shift)
        np.testing.assert_array_equal(np.isfinite(frame.ground_truth.shift), known)
        np.testing.assert_allclose(frame.ground_truth.shift[known], pair.gt_shift[known], atol=1e-5)


def test_a_middlebury_style_bag_stores_the_disparity_with_the_principal_offset_removed(tmp_path: Path) -> None:
    # cx_right - cx_left = doffs = 7.5 px: DisparityImage value = shift - (cx_l - cx_r) = shift + 7.5.
    camera = _camera(doffs=7.5)
    assert camera.principal_offset == -7.5
    pair = _pairs(1, camera)[0]
    write_stereo_bag(tmp_path / 'bag', [pair])
    with AnyReader([tmp_path / 'bag'], default_typestore=TYPESTORE) as reader:
        connection = next(c for c in reader.connections if c.topic == '/ground_truth/disparity')
        _, _, raw = next(reader.messages(connections=[connection]))
        message: Any = reader.deserialize(raw, connection.msgtype)
    values = np.frombuffer(message.image.data, dtype='<f4').reshape(HEIGHT, WIDTH)
    assert pair.gt_shift is not None
    known = np.isfinite(pair.gt_shift)
    np.testing.assert_allclose(values[known], pair.gt_shift[known] + 7.5, atol=1e-5)
    assert (values[~known] < message.min_disparity).all()
    # Depth from the message as any ROS consumer computes it: Z = f * T / d.
    assert message.f == 40.0 and message.t == 1.0
    # Read back, the shift is restored, so it compares with the network's output.
    frame = _frames(tmp_path / 'bag', ReplayConfig(gt_topic='/ground_truth/disparity'))[0]
    assert isinstance(frame, ReplayFrame) and frame.ground_truth is not None
    np.testing.assert_allclose(frame.ground_truth.shift[known], pair.gt_shift[known], atol=1e-5)


@pytest.mark.parametrize('storage', STORAGES)
@pytest.mark.parametrize('gt', ['depth', 'depth-mm'])
def test_depth_ground_truth_gives_the_disparity_ground_truth_back(tmp_path: Path, storage: str, gt: str) -> None:
    camera = _camera(doffs=7.5)
    pairs = _pairs(2, camera)
    write_stereo_bag(tmp_path / 'bag', pairs, storage=storage, gt=gt)  # type: ignore[arg-type]
    frames = _frames(tmp_path / 'bag', ReplayConfig(gt_topic='/ground_truth/depth'))
    for frame, pair in zip(frames, pairs, strict=True):
        assert isinstance(frame, ReplayFrame) and frame.ground_truth is not None and pair.gt_shift is not None
        assert frame.ground_truth.kind == ('depth-32FC1' if gt == 'depth' else 'depth-16UC1')
        known = np.isfinite(pair.gt_shift)
        np.testing.assert_array_equal(np.isfinite(frame.ground_truth.shift), known)
        np.testing.assert_allclose(frame.ground_truth.shift[known], pair.gt_shift[known], rtol=1e-5)
        np.testing.assert_allclose(frame.ground_truth.depth[known], shift_to_depth(pair.gt_shift, camera)[known],
                                   rtol=1e-5)


class _NoisySource:
    """Ground truth plus fixed noise, so that every error lies well inside one bad-N bin (no model needed)."""

    description = 'test source'

    def __init__(self, pairs: list[StereoPair], seed: int = 5) -> None:
        rng = np.random.default_rng(seed)
        self.answers = {}
        for index, pair in enumerate(pairs):
            assert pair.gt_shift is not None
            # |noise| in 0.1..0.9, 1.1..1.9, 2.1..2.9, 3.1..3.9 px: never near a threshold.
            noise = rng.integers(0, 4, size=pair.gt_shift.shape) + rng.uniform(0.1, 0.9, size=pair.gt_shift.shape)
            noise *= rng.choice([-1.0, 1.0], size=noise.shape)
            truth = np.where(np.isfinite(pair.gt_shift), pair.gt_shift, 20.0)
            self.answers[index] = (truth + noise).astype(np.float32)

    def __call__(self, frame: ReplayFrame) -> SourceResult:
        return SourceResult(self.answers[frame.index], 0.001)


@pytest.mark.parametrize('storage', STORAGES)
def test_ground_truth_as_disparity_or_depth_in_either_encoding_gives_the_same_numbers(tmp_path: Path,
                                                                                     storage: str) -> None:
    camera = _camera(doffs=7.5)
    pairs = _pairs(3, camera)
    results = {}
    for gt, topic in (('disparity', '/ground_truth/disparity'), ('depth', '/ground_truth/depth'),
                      ('depth-mm', '/ground_truth/depth')):
        write_stereo_bag(tmp_path / gt, pairs, storage=storage, gt=gt)  # type: ignore[arg-type]
        results[gt] = evaluate_bags([tmp_path / gt], ReplayConfig(gt_topic=topic), _NoisySource(pairs),
                                    progress=False)
    reference = results['disparity']
    assert reference.disparity is not None and reference.depth is not None
    assert 10 < reference.disparity.bad1 < 90 and 5 < reference.disparity.bad3 < 60  # not a trivial answer
    for gt in ('depth', 'depth-mm'):
        other = results[gt]
        assert other.disparity is not None and other.depth is not None
        assert other.disparity.valid_pixels == reference.disparity.valid_pixels
        assert other.disparity.epe == pytest.approx(reference.disparity.epe, rel=1e-5)
        for name in ('bad1', 'bad2', 'bad3', 'd1'):
            assert getattr(other.disparity, name) == getattr(reference.disparity, name), (gt, name)
        assert other.depth.abs_rel == pytest.approx(reference.depth.abs_rel, rel=1e-4)
        assert other.depth.rmse == pytest.approx(reference.depth.rmse, rel=1e-4)
        assert other.depth.completeness == reference.depth.completeness


def test_disparity_message_values_below_min_disparity_or_not_finite_are_invalid() -> None:
    values = np.array([[5.0, -2.0, np.nan, np.inf, -1.0]], dtype=np.float32)
    shift = disparity_message_to_shift(values, min_disparity=-1.0, principal_offset=3.0)
    np.testing.assert_array_equal(shift[0, [0, 4]], [8.0, 2.0])
    assert np.isnan(shift[0, 1:4]).all()


def test_depth_and_shift_conversions_invert_each_other_with_a_principal_offset() -> None:
    camera = _camera(doffs=-4.0)  # cx_right < cx_left: shift = d + 4
    depth = np.array([[1.0, 2.0, np.nan, 0.0, np.inf]], dtype=np.float32)
    shift = depth_to_shift(depth, camera)
    np.testing.assert_allclose(shift[0, :2], [40.0 + 4.0, 20.0 + 4.0])
    assert np.isnan(shift[0, 2:]).all()
    np.testing.assert_allclose(shift_to_depth(shift, camera)[0, :2], [1.0, 2.0])


def test_ground_truth_of_another_size_or_encoding_is_refused_with_the_reason() -> None:
    camera = _camera()
    small = image_message(np.ones((HEIGHT // 2, WIDTH // 2), np.float32), '32FC1', 0, 'f')
    with pytest.raises(GroundTruthError, match=f'ground truth is {WIDTH // 2}x{HEIGHT // 2} but the images are '
                                               f'{WIDTH}x{HEIGHT}'):
        decode_ground_truth(small, 'sensor_msgs/msg/Image', camera)
    colour = image_message(np.ones((HEIGHT, WIDTH, 3), np.uint8), 'rgb8', 0, 'f')
    with pytest.raises(GroundTruthError, match='encoding rgb8; a depth image is 32FC1'):
        decode_ground_truth(colour, 'sensor_msgs/msg/Image', camera)


def _write_raw(path: Path, frames: list[dict[str, tuple[Any, int]]], storage: str = 'mcap') -> None:
    """Write messages as given: topic -> (message, log time)."""
    with open_bag_writer(path, storage) as bag:  # type: ignore[arg-type]
        for frame in frames:
            for topic, (message, stamp) in frame.items():
                bag.write(topic, message, stamp)


def _inputs(camera: StereoCamera, stamps: tuple[int, int, int, int], left: Any = None) -> dict[str, tuple[Any, int]]:
    gray = np.zeros((camera.height, camera.width), np.uint8)
    left_info, _ = camera_info_messages(camera, stamps[2])
    _, right_info = camera_info_messages(camera, stamps[3])
    return {'/left/image_rect': (left if left is not None else image_message(gray, 'mono8', stamps[0], 'f'),
                                 stamps[0]),
            '/right/image_rect': (image_message(gray, 'mono8', stamps[1], 'f'), stamps[1]),
            '/left/camera_info': (left_info, stamps[2]), '/right/camera_info': (right_info, stamps[3])}


def test_pairs_are_synchronized_like_the_node_exact_or_approximate(tmp_path: Path) -> None:
    camera = _camera()
    base = 1_000_000_000
    # Right image and infos 3 ms after the left image: no exact pair, one approximate pair per frame.
    frames = [_inputs(camera, (base + i * 10**8, base + i * 10**8 + 3_000_000, base + i * 10**8 + 1_000_000,
                               base + i * 10**8 + 2_000_000)) for i in range(4)]
    _write_raw(tmp_path / 'bag', frames)
    with BagReplay(tmp_path / 'bag', ReplayConfig()) as replay:
        assert list(replay.frames()) == []
        assert replay.counters.unpaired_messages == replay.counters.input_messages == 16
    with BagReplay(tmp_path / 'bag', ReplayConfig(approximate_sync=True, sync_tolerance_s=0.005)) as replay:
        items = list(replay.frames())
        assert replay.counters.pairs == 4 and replay.counters.unpaired_messages == 0
    assert [item.stamp_ns for item in items] == [base + i * 10**8 for i in range(4)]
    assert all(isinstance(item, ReplayFrame) and item.spread_ns == 3_000_000 for item in items)
    assert _frames(tmp_path / 'bag', ReplayConfig(approximate_sync=True, sync_tolerance_s=0.002)) == []


def test_a_pair_whose_image_does_not_fit_its_camera_info_is_skipped_with_the_reason(tmp_path: Path) -> None:
    camera = _camera()
    wrong = image_message(np.zeros((HEIGHT, WIDTH + 2), np.uint8), 'mono8', 5, 'f')
    _write_raw(tmp_path / 'bag', [_inputs(camera, (5, 5, 5, 5), left=wrong), _inputs(camera, (9, 9, 9, 9))])
    items = _frames(tmp_path / 'bag', ReplayConfig())
    assert isinstance(items[0], SkippedPair) and isinstance(items[1], ReplayFrame)
    assert items[0].reason == f'left image is {WIDTH + 2}x{HEIGHT} (WxH) but camera_info says {WIDTH}x{HEIGHT}'


def test_ground_truth_is_matched_by_stamp_and_frames_without_it_say_so(tmp_path: Path) -> None:
    camera = _camera()
    pairs = _pairs(3, camera)
    pairs[1] = StereoPair('no-gt', pairs[1].left, pairs[1].right, camera, None)
    write_stereo_bag(tmp_path / 'bag', pairs)
    items = _frames(tmp_path / 'bag', ReplayConfig(gt_topic='ground_truth/disparity'))
    assert [isinstance(item, ReplayFrame) and item.ground_truth is not None for item in items] == [True, False, True]
    assert isinstance(items[1], ReplayFrame) and items[1].gt_note == 'no ground truth with this stamp'


def test_missing_topics_name_the_topics_the_bag_has(tmp_path: Path) -> None:
    write_stereo_bag(tmp_path / 'bag', _pairs(1, _camera()), gt='none')
    with pytest.raises(ReplayError, match=r'has no topic /cam/left \(left image\); the bag has: /left/camera_info '
                                          r'\(sensor_msgs/msg/CameraInfo\), /left/image_rect'):
        _frames(tmp_path / 'bag', ReplayConfig(left_topic='/cam/left'))
    with pytest.raises(ReplayError, match=r'topic /left/camera_info \(left image\) is sensor_msgs/msg/CameraInfo, '
                                          'expected sensor_msgs/msg/Image'):
        _frames(tmp_path / 'bag', ReplayConfig(left_topic='/left/camera_info', left_info_topic='/left/image_rect'))


@pytest.mark.parametrize('storage', STORAGES)
@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_a_corrupt_or_truncated_bag_is_a_replay_error(tmp_path: Path, storage: str, damage: str) -> None:
    write_stereo_bag(tmp_path / 'bag', _pairs(3, _camera()), storage=storage)  # type: ignore[arg-type]
    data_file = next(p for p in (tmp_path / 'bag').iterdir() if p.suffix in ('.mcap', '.db3'))
    data = bytearray(data_file.read_bytes())
    if damage == 'truncate':
        data = data[:len(data) * 2 // 3]
    else:
        data[64:] = bytes(b ^ 0x5A for b in data[64:])
    data_file.write_bytes(bytes(data))
    with pytest.raises(ReplayError, match=r'bag .* (cannot be opened \(corrupt, truncated|is corrupt or truncated)'):
        _frames(tmp_path / 'bag', ReplayConfig())


def test_a_missing_bag_and_bad_settings_are_replay_errors(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match='no such file or folder'):
        _frames(tmp_path / 'nothing', ReplayConfig())
    with pytest.raises(ReplayError, match='queue_size=0: must be an integer >= 1'):
        ReplayConfig(queue_size=0)
    with pytest.raises(ReplayError, match='topics must differ'):
        ReplayConfig(left_topic='a', right_topic='/a')
    with pytest.raises(ReplayError, match='sync_tolerance_s=-1.0'):
        ReplayConfig(sync_tolerance_s=-1.0)
    assert normalize_topic('left/image_rect') == '/left/image_rect'


def test_the_bag_file_itself_can_be_given_instead_of_its_folder(tmp_path: Path) -> None:
    write_stereo_bag(tmp_path / 'bag', _pairs(2, _camera()), storage='sqlite3')
    assert len(_frames(tmp_path / 'bag' / 'bag.db3', ReplayConfig())) == 2


def test_writing_refuses_an_existing_bag_and_removes_a_half_written_one(tmp_path: Path) -> None:
    (tmp_path / 'exists').mkdir()
    with pytest.raises(BagWriteError, match='exists already'):
        write_stereo_bag(tmp_path / 'exists', _pairs(1, _camera()))

    def failing() -> Any:
        yield _pairs(1, _camera())[0]
        raise MakeBagError('source broke')

    with pytest.raises(MakeBagError, match='source broke'):
        write_stereo_bag(tmp_path / 'half', failing())
    assert not (tmp_path / 'half').exists()
    with pytest.raises(MakeBagError, match='no stereo pairs'):
        write_stereo_bag(tmp_path / 'empty', [])
    assert not (tmp_path / 'empty').exists()


def test_disparity_message_values_of_a_ground_truth_keep_invalid_pixels_below_min_disparity() -> None:
    camera = _camera(doffs=-3.0)  # cx_left > cx_right: d = shift - 3 can be negative
    shift = np.array([[1.0, 10.0, np.inf]], dtype=np.float32)
    values, min_disparity = shift_to_disparity_message_values(shift, camera)
    assert min_disparity == -2.0
    np.testing.assert_allclose(values[0, :2], [-2.0, 7.0])
    assert values[0, 2] < min_disparity



# ---------------------------------------------------------------------------- compressed image topics

@pytest.mark.parametrize('storage', STORAGES)
def test_a_png_compressed_bag_gives_exactly_the_raw_bag_s_frames(tmp_path: Path, storage: str) -> None:
    pairs = _pairs(2, _camera(doffs=2.0))
    write_stereo_bag(tmp_path / 'raw', pairs, storage=storage)  # type: ignore[arg-type]
    write_stereo_bag(tmp_path / 'png', pairs, storage=storage, compression='png')  # type: ignore[arg-type]
    config = ReplayConfig(gt_topic='/ground_truth/disparity')  # the node's topic names, as for the raw bag
    with BagReplay(tmp_path / 'png', config) as replay:
        assert replay.topics['/left/image_rect/compressed'] == 'sensor_msgs/msg/CompressedImage'
        assert '/left/image_rect' not in replay.topics
        assert replay.input_topics[:2] == ('/left/image_rect/compressed', '/right/image_rect/compressed')
        assert replay.compressed == (True, True) and replay.expected_pairs == 2
        compressed = list(replay.frames())
    raw = _frames(tmp_path / 'raw', config)
    assert len(compressed) == len(raw) == 2
    for frame, reference in zip(compressed, raw, strict=True):
        assert isinstance(frame, ReplayFrame) and isinstance(reference, ReplayFrame)
        assert frame.stamp_ns == reference.stamp_ns and frame.camera == reference.camera
        assert frame.left.dtype == reference.left.dtype and frame.right.shape == reference.right.shape
        np.testing.assert_array_equal(frame.left, reference.left)  # mono8
        np.testing.assert_array_equal(frame.right, reference.right)  # rgb8 through bgr8 PNG
        assert frame.ground_truth is not None and reference.ground_truth is not None
        np.testing.assert_array_equal(frame.ground_truth.shift, reference.ground_truth.shift)


def test_a_jpeg_compressed_bag_gives_the_raw_frames_within_jpeg_s_loss(tmp_path: Path) -> None:
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH]
    smooth = (127 + 100 * np.sin(u / 5.0) * np.cos(v / 4.0)).astype(np.uint8)  # (H, W) what JPEG is made for
    pair = StereoPair('smooth', smooth, np.stack([smooth, smooth // 2, 255 - smooth], axis=2), _camera(), None)
    write_stereo_bag(tmp_path / 'bag', [pair], gt='none', compression='jpeg', jpeg_quality=95)
    (frame,) = _frames(tmp_path / 'bag', ReplayConfig())
    assert isinstance(frame, ReplayFrame) and frame.left.dtype == np.uint8 and frame.right.shape == (HEIGHT, WIDTH, 3)
    for decoded, original in ((frame.left, pair.left), (frame.right, pair.right)):
        error = np.abs(decoded.astype(np.int32) - original.astype(np.int32))
        assert 0 < error.mean() < 3.0  # lossy, and close: q95 errs about one level on such content


def test_a_bag_with_both_transports_is_read_raw_and_a_compressed_topic_can_be_named(tmp_path: Path) -> None:
    camera = _camera()
    pair = _pairs(1, camera)[0]
    stamp = 1_000_000_000
    messages = _inputs(camera, (stamp,) * 4, left=image_message(pair.left, 'mono8', stamp, 'f'))
    dark = np.zeros_like(pair.left)  # the compressed copy differs, so that the topic read shows
    messages['/left/image_rect/compressed'] = (compressed_image_message(dark, 'mono8', 'png', stamp, 'f'), stamp)
    _write_raw(tmp_path / 'bag', [messages])
    with BagReplay(tmp_path / 'bag', ReplayConfig()) as replay:
        assert replay.input_topics[0] == '/left/image_rect' and replay.compressed == (False, False)
        (frame,) = list(replay.frames())
    assert isinstance(frame, ReplayFrame)
    np.testing.assert_array_equal(frame.left, pair.left)
    (frame,) = _frames(tmp_path / 'bag', ReplayConfig(left_topic='/left/image_rect/compressed'))
    assert isinstance(frame, ReplayFrame)
    np.testing.assert_array_equal(frame.left, dark)


def test_a_compressed_image_that_cannot_be_decoded_skips_its_pair_with_the_reason(tmp_path: Path) -> None:
    camera = _camera()
    gray = np.full((HEIGHT, WIDTH), 90, np.uint8)
    frames = []
    for stamp in (5, 9):
        left = compressed_image_message(gray, 'mono8', 'png', stamp, 'f')
        if stamp == 5:
            left.data = left.data[:len(left.data) // 2]  # truncated in transit
        right = compressed_image_message(gray, 'mono8', 'png', stamp, 'f')
        left_info, right_info = camera_info_messages(camera, stamp)
        frames.append({'/left/image_rect/compressed': (left, stamp), '/right/image_rect/compressed': (right, stamp),
                       '/left/camera_info': (left_info, stamp), '/right/camera_info': (right_info, stamp)})
    _write_raw(tmp_path / 'bag', frames)
    items = _frames(tmp_path / 'bag', ReplayConfig())
    assert isinstance(items[0], SkippedPair) and isinstance(items[1], ReplayFrame)
    assert items[0].reason.startswith('png image (') and items[0].reason.endswith('cannot be decoded (corrupt or '
                                                                                  'truncated)')
    np.testing.assert_array_equal(items[1].left, gray)


def test_writing_compressed_refuses_an_unknown_codec_and_a_bad_quality(tmp_path: Path) -> None:
    pairs = _pairs(1, _camera())
    with pytest.raises(MakeBagError, match="compression must be one of png, jpeg, got 'webp'"):
        write_stereo_bag(tmp_path / 'a', pairs, compression='webp')  # type: ignore[arg-type]
    with pytest.raises(MakeBagError, match=r'JPEG quality must be an integer in \[1, 100\], got 101'):
        write_stereo_bag(tmp_path / 'b', pairs, compression='jpeg', jpeg_quality=101)
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()
