"""StereoProcessor without ROS: the node's arrays from a real (small, random) network."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stereonet_ros.camera import CameraModelError, StereoCamera
from stereonet_ros.geometry import project_to_pixel
from stereonet_ros.image_codec import array_to_image_fields
from stereonet_ros.inference import Predictor
from stereonet_ros.model.checkpoint import Checkpoint, InputContract
from stereonet_ros.model.stereonet import StereoNet, StereoNetConfig
from stereonet_ros.node_config import NodeConfig
from stereonet_ros.processing import OutputSelection, StereoInputError, StereoProcessor, decode_pair, to_rgb8
from test_image_codec import FakeImage, from_fields  # the Image-like stand-in the codec tests use

HEIGHT, WIDTH = 32, 96
CAMERA = StereoCamera(width=WIDTH, height=HEIGHT, fx=100.0, fy=110.0, cx=50.0, cy=15.5, cx_right=47.0, focal=100.0,
                      baseline=0.2, frame_id='left_optical')


@pytest.fixture(scope='module')
def processor() -> StereoProcessor:
    config = StereoNetConfig(in_channels=1, k_downsampling_layers=2, k_refinement_layers=2, feature_channels=4,
                             cost_filter_channels=4, refiner_channels=4, max_disparity=31, disparity_grid='exact',
                             cost_volume_border='replicate')
    torch.manual_seed(3)
    contract = InputContract(color='gray', left_mean=(127.5,), left_std=(127.5,), right_mean=(127.5,),
                             right_std=(127.5,), max_disparity=31.0, pad_multiple=4)
    checkpoint = Checkpoint(config=config, contract=contract, state_dict=StereoNet(config).state_dict())
    return StereoProcessor(Predictor(checkpoint, device='cpu'))


@pytest.fixture(scope='module')
def pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (HEIGHT, WIDTH + 6, 3), dtype=np.uint8)
    left_rgb = np.ascontiguousarray(scene[:, 6:])
    right_rgb = np.ascontiguousarray(scene[:, :WIDTH])
    gray = (left_rgb @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
    right_gray = (right_rgb @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
    return gray, right_gray, left_rgb


def expected_valid(shift: np.ndarray, min_disparity: float) -> np.ndarray:
    disparity = shift - CAMERA.principal_offset
    columns = np.arange(WIDTH)[np.newaxis, :]
    return (disparity >= min_disparity) & (disparity > 0) & (columns - shift >= 0)


def test_disparity_is_the_network_shift_minus_the_principal_offset_and_invalid_is_min_minus_one(
        processor: StereoProcessor, pair: Any) -> None:
    left, right, rgb = pair
    config = NodeConfig(min_disparity=2.0)
    out = processor.process(left, right, CAMERA, config, OutputSelection(), rgb)
    shift = processor.predictor.predict(left, right)
    valid = expected_valid(shift, 2.0)
    assert valid.any() and (~valid).any()
    assert np.array_equal(out.valid, valid)
    np.testing.assert_array_equal(out.disparity[valid], (shift - 3.0)[valid])
    assert np.all(out.disparity[~valid] == np.float32(1.0))
    assert out.disparity.dtype == np.float32 and out.disparity.shape == (HEIGHT, WIDTH)
    assert (out.min_disparity, out.max_disparity) == (2.0, 31.0 - 3.0)
    assert out.valid_window.x_offset == 31 and out.valid_window.width == WIDTH - 31
    assert (out.valid_window.y_offset, out.valid_window.height) == (0, HEIGHT)
    assert out.delta_d == float(np.spacing(np.float32(28.0)))


def test_depth_and_points_follow_the_camera_and_are_nan_where_invalid(processor: StereoProcessor, pair: Any) -> None:
    left, right, rgb = pair
    out = processor.process(left, right, CAMERA, NodeConfig(), OutputSelection(), rgb)
    valid = out.valid
    assert out.depth is not None and out.cloud is not None
    np.testing.assert_allclose(out.depth[valid], 100.0 * 0.2 / out.disparity[valid], rtol=1e-6)
    assert np.isnan(out.depth[~valid]).all()
    assert out.cloud.point_step == 32 and [f.name for f in out.cloud.fields] == ['x', 'y', 'z', 'rgb']
    records = np.frombuffer(out.cloud.data, dtype=np.float32).reshape(HEIGHT, WIDTH, 8)  # 32-byte points
    xyz = records[:, :, :3]
    assert np.isnan(xyz[~valid]).all()
    pixels = project_to_pixel(xyz[valid], CAMERA)  # a point reprojects to its pixel
    rows, columns = np.nonzero(valid)
    np.testing.assert_allclose(pixels[:, 0], columns, atol=1e-3)
    np.testing.assert_allclose(pixels[:, 1], rows, atol=1e-3)
    bits = records[:, :, 4].view(np.uint32)
    assert np.array_equal(bits, (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
                          | rgb[..., 2])


def test_only_the_selected_outputs_are_computed(processor: StereoProcessor, pair: Any) -> None:
    left, right, rgb = pair
    out = processor.process(left, right, CAMERA, NodeConfig(), OutputSelection(depth=False, points=False,
                                                                                confidence=False,
                                                                                disparity_color=False))
    assert out.depth is None and out.cloud is None and out.confidence is None and out.disparity_color is None
    assert not OutputSelection(False, False, False, False, False).any
    # Timed are the stages that ran, and they are parts of post
    assert set(out.timings) == {'model', 'post', 'post_colours', 'post_validity'}


def test_post_is_timed_by_stage_and_the_stages_are_parts_of_it(processor: StereoProcessor, pair: Any) -> None:
    left, right, rgb = pair
    fetched: list[float] = []

    def colours() -> np.ndarray:
        fetched.append(time.perf_counter())
        time.sleep(0.02)  # a slow colour fetch is counted under post_colours, not under a postprocess stage
        return rgb
    out = processor.process(left, right, CAMERA, NodeConfig(), OutputSelection(), rgb=colours)
    stages = ('post_colours', 'post_validity', 'post_depth', 'post_cloud', 'post_colour_map')
    assert set(out.timings) == {'model', 'post', *stages} and len(fetched) == 1
    assert out.timings['post_colours'] >= 0.02 and all(out.timings[stage] >= 0.0 for stage in stages)
    assert sum(out.timings[stage] for stage in stages) <= out.timings['post']


def test_cloud_layout_follows_use_color_and_avoid_point_cloud_padding(processor: StereoProcessor, pair: Any) -> None:
    left, right, rgb = pair
    steps = {}
    for use_color in (True, False):
        for avoid in (False, True):
            config = NodeConfig(use_color=use_color, avoid_point_cloud_padding=avoid)
            cloud = processor.process(left, right, CAMERA, config, OutputSelection(), rgb).cloud
            assert cloud is not None
            steps[(use_color, avoid)] = cloud.point_step
    assert steps == {(True, False): 32, (True, True): 16, (False, False): 16, (False, True): 12}


def test_min_confidence_invalidates_undecided_pixels(processor: StereoProcessor, pair: Any) -> None:
    left, right, rgb = pair
    everything = processor.process(left, right, CAMERA, NodeConfig(), OutputSelection())
    assert everything.confidence is not None
    assert everything.confidence.min() >= 0.0 and everything.confidence.max() <= 1.0
    threshold = float(np.median(everything.confidence))
    strict = processor.process(left, right, CAMERA, NodeConfig(min_confidence=threshold), OutputSelection())
    assert np.array_equal(strict.valid, everything.valid & (everything.confidence >= np.float32(threshold)))
    assert strict.valid.sum() < everything.valid.sum()


def test_a_smaller_inference_scale_runs_the_network_smaller_and_rescales_the_values(
        processor: StereoProcessor, pair: Any) -> None:
    left, right, _ = pair
    shift, _, max_shift = processor.infer(left, right, scale=0.5)
    small_left, small_right = (F.interpolate(t, size=(HEIGHT // 2, WIDTH // 2), mode='area')
                               for t in processor.predictor.preprocess(left, right))
    small = processor.predictor.run(small_left, small_right)  # (1, 1, H/2, W/2)
    expected = F.interpolate(small, size=(HEIGHT, WIDTH), mode='bilinear', align_corners=False)[0, 0].numpy() * 2.0
    np.testing.assert_allclose(shift, expected, rtol=1e-6)
    assert max_shift == 62.0
    out = processor.process(left, right, CAMERA, NodeConfig(inference_scale=0.5), OutputSelection())
    assert out.max_disparity == 62.0 - 3.0 and out.valid_window.x_offset == 62


@pytest.mark.parametrize('scale', [0.5, 1.37, 2.5])
def test_the_processor_infers_through_the_predictor_at_any_scale(processor: StereoProcessor, pair: Any,
                                                                 scale: float) -> None:
    left, right, _ = pair
    shift, confidence, max_shift = processor.infer(left, right, scale, with_confidence=True)
    answer = processor.predictor.infer(left, right, scale=scale, with_confidence=True)
    assert np.array_equal(shift, answer.disparity) and max_shift == answer.max_disparity
    assert confidence is not None and answer.confidence is not None
    assert np.array_equal(confidence, answer.confidence)
    out = processor.process(left, right, CAMERA, NodeConfig(inference_scale=scale), OutputSelection())
    width = answer.network_size[1]
    assert out.max_disparity == pytest.approx(31.0 * WIDTH / width - 3.0)  # input pixels, principal offset removed
    assert out.valid_window.x_offset == math.ceil(31.0 * WIDTH / width)


def test_an_image_narrower_than_the_disparity_range_has_an_empty_valid_window(processor: StereoProcessor) -> None:
    camera = StereoCamera(width=24, height=8, fx=10.0, fy=10.0, cx=12.0, cy=4.0, cx_right=12.0, focal=10.0,
                          baseline=0.1)
    image = np.full((8, 24), 100, np.uint8)
    window = processor.process(image, image, camera, NodeConfig(), OutputSelection()).valid_window
    assert (window.x_offset, window.width, window.height) == (24, 0, 0)


def test_bad_pairs_raise_named_errors(processor: StereoProcessor, pair: Any) -> None:
    left, right, _ = pair
    with pytest.raises(StereoInputError, match=r'left image is 96x32 but right is 90x32'):
        processor.process(left, right[:, :90], CAMERA, NodeConfig(), OutputSelection())
    with pytest.raises(CameraModelError, match=r'image is 48x32 \(WxH\) but camera_info says 96x32'):
        processor.process(left[:, :48], right[:, :48], CAMERA, NodeConfig(), OutputSelection())


def as_message(array: np.ndarray, encoding: str) -> FakeImage:
    return from_fields(array_to_image_fields(array, encoding))


def test_decode_pair_keeps_the_pixels_raw_for_the_device_and_gives_the_left_colours_when_asked(pair: Any) -> None:
    _, _, rgb = pair
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    left, right, colours = decode_pair(as_message(rgb, 'rgb8'), as_message(bgr, 'bgr8'), want_rgb=True)
    # Colour stays uint8 RGB: the predictor converts it to gray on its device.
    assert left.dtype == np.uint8 and left.shape == (HEIGHT, WIDTH, 3) and np.array_equal(left, rgb)
    assert np.array_equal(right, rgb)
    assert colours is not None and np.array_equal(colours, rgb)
    assert decode_pair(as_message(rgb, 'rgb8'), as_message(rgb, 'rgb8'), want_rgb=False)[2] is None
    mono16 = (np.arange(HEIGHT * WIDTH, dtype=np.uint16).reshape(HEIGHT, WIDTH) * 20)
    left16, _, colours16 = decode_pair(as_message(mono16, 'mono16'), as_message(mono16, 'mono16'), True)
    assert left16.dtype == np.uint16 and np.array_equal(left16, mono16)
    assert colours16 is not None and np.array_equal(colours16[..., 1], (mono16 >> 8).astype(np.uint8))


def test_to_rgb8_scales_each_dtype_to_bytes() -> None:
    assert to_rgb8(np.array([[[0, 65535, 256]]], np.uint16)).tolist() == [[[0, 255, 1]]]
    assert to_rgb8(np.array([[[-3.0, 254.6, np.nan]]], np.float32)).tolist() == [[[0, 255, 0]]]


# ---------------------------------------------------------------------------- node path == CLI path


@pytest.fixture(scope='module')
def default_processor() -> StereoProcessor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the bundled checkpoint is marked preliminary
        # As the node opens it (its default precision, auto: on a CPU the bundled default runs in ONNX Runtime in
        # fp32, or in PyTorch in bf16 where the CPU has it natively), and as stereonet-infer does.
        from stereonet_ros.backends import open_predictor

        return StereoProcessor(open_predictor(device='cpu', precision=NodeConfig().precision))


@pytest.mark.parametrize('kind', ['rgb', 'gray'])
def test_the_node_and_stereonet_infer_give_the_same_disparity_for_the_same_pixels(
        default_processor: StereoProcessor, kind: str, tmp_path: Path) -> None:
    """Motorcycle with the bundled checkpoint: messages decoded as the node decodes them, through the node's
    processing, against ``stereonet-infer`` reading the same pixels from PNG files."""
    from stereonet_ros.cli.infer import main as infer_main
    from stereonet_ros.image_io import write_png
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    left, right = sample.left, sample.right  # (500, 741, 3) uint8 RGB
    if kind == 'rgb':  # the right camera sends bgr8: the node must reorder it
        left_msg, right_msg = as_message(left, 'rgb8'), as_message(np.ascontiguousarray(right[:, :, ::-1]), 'bgr8')
    else:
        left, right = ((image @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8) for image in (left, right))
        left_msg, right_msg = as_message(left, 'mono8'), as_message(right, 'mono8')
    height, width = left.shape[:2]
    camera = StereoCamera(width=width, height=height, fx=500.0, fy=500.0, cx=370.0, cy=250.0, cx_right=370.0,
                          focal=500.0, baseline=0.1)

    node_left, node_right, _ = decode_pair(left_msg, right_msg, False)
    node = default_processor.process(node_left, node_right, camera, NodeConfig(), OutputSelection())

    write_png(tmp_path / 'left.png', left)
    write_png(tmp_path / 'right.png', right)
    assert infer_main([str(tmp_path / 'left.png'), str(tmp_path / 'right.png'), '--out', str(tmp_path / 'd.npy'),
                       '--device', 'cpu']) == 0
    cli = np.load(tmp_path / 'd.npy')

    # The node publishes the shift where valid (offset 0 here) and min_disparity - 1 elsewhere.
    columns = np.arange(width)[np.newaxis, :]
    assert np.array_equal(node.valid, (cli > 0) & (columns - cli >= 0))
    assert node.valid.mean() > 0.9
    assert np.abs(node.disparity[node.valid] - cli[node.valid]).max() <= 1e-4
    if kind == 'rgb':
        # What the node did once: gray rounded to uint8 first. The test sees the difference.
        rounded = [np.rint(image @ np.array([0.299, 0.587, 0.114])).astype(np.uint8) for image in (left, right)]
        before = default_processor.predictor.predict(*rounded)
        assert np.abs(before - cli).max() > 1e-2


def test_disparities_above_the_published_maximum_or_with_unrepresentable_depth_are_invalid() -> None:
    # Issue 11: 32FC1 input of -1e6 gave a disparity of 251.7 px published as valid above max_disparity 192;
    # a tiny positive disparity gives a depth f*T/d beyond float32 (inf), which must not be published as valid.
    from stereonet_ros.processing import postprocess

    max_shift = 31.0
    shift = np.full((HEIGHT, WIDTH), 20.0, dtype=np.float32)
    shift[:, 60] = max_shift  # exactly the maximum: valid
    shift[:, 61] = np.nextafter(np.float32(max_shift), np.float32(np.inf))  # just above: invalid
    shift[:, 62] = CAMERA.principal_offset + 1e-38  # d = 1e-38 > 0, but Z = 20 / 1e-38 is inf in float32
    outputs = postprocess(shift, None, max_shift, CAMERA, NodeConfig(), OutputSelection())
    assert outputs.max_disparity == pytest.approx(max_shift - CAMERA.principal_offset)  # 34 px
    assert outputs.valid[:, 60].all() and not outputs.valid[:, 61:63].any()
    assert (outputs.disparity[:, 61:63] == np.float32(-1.0)).all()  # min_disparity - 1
    assert outputs.depth is not None and np.isnan(outputs.depth[:, 61:63]).all()
    valid_depth = outputs.depth[outputs.valid]
    assert np.isfinite(valid_depth).all() and (valid_depth > 0).all()
    assert (outputs.disparity[outputs.valid] <= np.float32(outputs.max_disparity)).all()


def test_points_whose_x_would_overflow_float32_are_invalid() -> None:
    from stereonet_ros.processing import postprocess

    far = StereoCamera(width=WIDTH, height=HEIGHT, fx=1.0, fy=1.0, cx=3e38, cy=15.5, cx_right=3e38, focal=1.0,
                       baseline=1e3)  # every constant finite; X = (u - cx) * Z / fx is not, for Z >= 2
    shift = np.full((HEIGHT, WIDTH), 20.0, dtype=np.float32)
    shift[:, 50] = 1000.0 / 0.5e3  # d = 2 px: Z = 500, X = -3e38 * 500 = -inf
    outputs = postprocess(shift, None, 1e4, far, NodeConfig(), OutputSelection())
    assert not outputs.valid.any()


# ---------------------------------------------------------------------------- device errors: retry, then the CPU

CUDA_ERRORS = [
    torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)'),
    RuntimeError('CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously '
                 'reported at some other API call'),
    RuntimeError('CUDA error: device-side assert triggered'),
    RuntimeError('CUDA driver error: unspecified launch failure'),
    RuntimeError('cuDNN error: CUDNN_STATUS_INTERNAL_ERROR'),
    RuntimeError('CUDA error: unspecified launch failure'),
]


def test_device_errors_are_told_from_input_errors() -> None:
    from stereonet_ros.inference import InputError
    from stereonet_ros.processing import is_device_error

    assert all(is_device_error(error) for error in CUDA_ERRORS)
    if hasattr(torch, 'AcceleratorError'):
        assert issubclass(torch.AcceleratorError, RuntimeError)
    for error in (InputError('left and right images differ in size'), StereoInputError('left image is 96x32'),
                  RuntimeError('Given groups=1, weight of size [4, 1, 5, 5], expected input to have 1 channels'),
                  ValueError('CUDA error'), KeyError('x')):
        assert not is_device_error(error)


class FailingOnDevice:
    """A predictor's infer that raises the given errors (as CUDA raises them), then runs the real one."""

    def __init__(self, real: Predictor, errors: list[BaseException]) -> None:
        self.real, self.errors, self.calls = real.infer, list(errors), 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.real(*args, **kwargs)


def cuda_like_processor(processor: StereoProcessor, errors: list[BaseException],
                        precision: str = 'fp32') -> tuple[StereoProcessor, FailingOnDevice, list[Any]]:
    """A processor whose predictor says it runs on CUDA and whose infer raises ``errors`` first."""
    predictor = Predictor(processor.predictor.checkpoint, device='cpu')
    predictor.device = torch.device('cuda', 0)
    predictor.precision = precision  # type: ignore[assignment]
    failing = FailingOnDevice(processor.predictor, errors)  # when it does not fail, the real CPU network answers
    predictor.infer = failing  # type: ignore[method-assign]
    resets: list[Any] = []
    predictor.reset_device_state = lambda: resets.append(True)  # type: ignore[method-assign]
    return StereoProcessor(predictor), failing, resets


@pytest.mark.parametrize('error', CUDA_ERRORS, ids=lambda e: str(e)[:30])
def test_a_device_error_is_warned_and_the_pair_tried_once_more_on_the_same_device(
        processor: StereoProcessor, pair: Any, error: BaseException) -> None:
    from stereonet_ros.processing import DeviceGuard

    left, right, _ = pair
    flaky, failing, resets = cuda_like_processor(processor, [error])
    warnings_: list[tuple[str, str]] = []
    reports: list[str] = []
    guard = DeviceGuard(warn=lambda kind, text: warnings_.append((kind, text)), report=reports.append)
    out, used = guard.process(flaky, left, right, CAMERA, NodeConfig(), OutputSelection())
    assert used is flaky and failing.calls == 2 and resets == [True] and guard.retries == 1
    assert np.array_equal(out.disparity, processor.process(left, right, CAMERA, NodeConfig(),
                                                           OutputSelection()).disparity)
    assert [kind for kind, _ in warnings_] == ['device-error'] and reports == []
    assert f'cuda:0 failed on a pair ({type(error).__name__}: {str(error).splitlines()[0]})' in warnings_[0][1]


def test_a_device_error_that_repeats_moves_processing_to_the_cpu_with_the_reason(processor: StereoProcessor,
                                                                                  pair: Any) -> None:
    from stereonet_ros.processing import DeviceGuard

    left, right, _ = pair
    lost = RuntimeError('CUDA error: an illegal memory access was encountered')
    broken, failing, _ = cuda_like_processor(processor, [torch.cuda.OutOfMemoryError('CUDA out of memory.'), lost,
                                                         lost], precision='fp16')
    warnings_: list[tuple[str, str]] = []
    reports: list[str] = []
    guard = DeviceGuard(warn=lambda kind, text: warnings_.append((kind, text)), report=reports.append)
    out, used = guard.process(broken, left, right, CAMERA, NodeConfig(), OutputSelection())
    assert used is not broken and used.predictor.device == torch.device('cpu') and used.predictor.precision == 'fp32'
    assert failing.calls == 2 and len(warnings_) == 1 and len(reports) == 1
    assert used.fallback_reason == reports[0] and broken.fallback_reason is None
    assert reports[0].startswith('cuda:0 failed twice in a row (RuntimeError: CUDA error: an illegal memory access '
                                 'was encountered); moved to the CPU')
    assert np.array_equal(out.disparity, processor.process(left, right, CAMERA, NodeConfig(),
                                                           OutputSelection()).disparity)
    again, still = guard.process(used, left, right, CAMERA, NodeConfig(), OutputSelection())  # and it stays there
    assert still is used and np.array_equal(again.disparity, out.disparity)


def test_bad_input_is_not_retried_and_a_device_error_on_the_cpu_is_raised_after_one_retry(
        processor: StereoProcessor, pair: Any) -> None:
    from stereonet_ros.inference import InputError
    from stereonet_ros.processing import DeviceGuard

    left, right, _ = pair
    warnings_: list[Any] = []
    guard = DeviceGuard(warn=lambda kind, text: warnings_.append(kind), report=warnings_.append)
    bad, failing, resets = cuda_like_processor(processor, [InputError('left image has non-finite values')])
    with pytest.raises(InputError, match='non-finite'):
        guard.process(bad, left, right, CAMERA, NodeConfig(), OutputSelection())
    assert failing.calls == 1 and resets == [] and warnings_ == []
    on_cpu, failing, _ = cuda_like_processor(processor, [torch.cuda.OutOfMemoryError('out of memory')] * 2)
    on_cpu.predictor.device = torch.device('cpu')
    with pytest.raises(torch.cuda.OutOfMemoryError):
        guard.process(on_cpu, left, right, CAMERA, NodeConfig(), OutputSelection())
    assert failing.calls == 2 and warnings_ == ['device-error']
