"""Predictor: seed numbers through the array API, colour/bit-depth conversion, padding policy, errors."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stereonet_ros.image_codec import BT601_WEIGHTS
from stereonet_ros import inference
from stereonet_ros.inference import (InputError, Predictor, UntrainedPlaceholderWarning,
                                     placeholder_checkpoint, resolve_device, to_contract_color)
from stereonet_ros.model.checkpoint import Checkpoint, load_checkpoint


@pytest.fixture(scope='module')
def seed_predictor(seed_checkpoint_path: Path) -> Predictor:
    return Predictor.from_checkpoint(seed_checkpoint_path, device='cpu')


@pytest.mark.parametrize('tag', ['96x160', '100x170'])
def test_predict_reproduces_the_seed_from_uint8_images(seed_predictor: Predictor,
                                                       seed_reference: dict[str, np.ndarray], tag: str) -> None:
    left = seed_reference[f'left_{tag}'].astype(np.uint8)
    right = seed_reference[f'right_{tag}'].astype(np.uint8)
    disparity = seed_predictor.predict(left, right)
    assert disparity.dtype == np.float32 and disparity.shape == left.shape
    assert np.abs(disparity - seed_reference[f'disparity_{tag}'][0, 0]).max() <= 1e-3


def test_preprocess_applies_the_per_view_normalization(seed_predictor: Predictor,
                                                       seed_reference: dict[str, np.ndarray]) -> None:
    left_tensor, right_tensor = seed_predictor.preprocess(seed_reference['left_96x160'].astype(np.uint8),
                                                          seed_reference['right_96x160'].astype(np.uint8))
    expected = seed_reference['input_96x160']
    assert np.abs(left_tensor.numpy() - expected[:, :1]).max() < 1e-6
    assert np.abs(right_tensor.numpy() - expected[:, 1:]).max() < 1e-6


def test_color_gray_and_bit_depth_inputs_agree(seed_predictor: Predictor) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(48, 64), dtype=np.uint8)
    other = np.roll(gray, -3, axis=1)
    reference = seed_predictor.predict(gray, other)
    # The same content as 16 bit (x * 257 = x * 65535 / 255), as HxWx1, and as equal-channel RGB/RGBA.
    assert np.abs(seed_predictor.predict(gray.astype(np.uint16) * 257, other.astype(np.uint16) * 257)
                  - reference).max() < 1e-3
    assert np.array_equal(seed_predictor.predict(gray[..., None], other[..., None]), reference)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 7)])
    rgba_other = np.dstack([other, other, other, np.zeros_like(other)])
    assert np.abs(seed_predictor.predict(rgba, rgba_other) - reference).max() < 1e-3


def test_rgb_to_gray_uses_bt601_luma() -> None:
    pixel = np.array([[[200.0, 100.0, 50.0]]], dtype=np.float32)
    gray = to_contract_color(pixel, 'gray')
    assert gray.shape == (1, 1, 1)
    assert gray[0, 0, 0] == pytest.approx(BT601_WEIGHTS[0] * 200 + BT601_WEIGHTS[1] * 100 + BT601_WEIGHTS[2] * 50)
    rgb = to_contract_color(np.full((2, 3), 9.0, dtype=np.float32), 'rgb')
    assert rgb.shape == (3, 2, 3) and np.all(rgb == 9.0)


def test_padding_policy_pads_to_the_contract_multiple_and_crops_back(seed_checkpoint_path: Path) -> None:
    seed = load_checkpoint(seed_checkpoint_path)
    padded = Checkpoint(config=seed.config, contract=dataclasses.replace(seed.contract, pad_multiple=8),
                        state_dict=seed.state_dict)
    predictor = Predictor(padded, device='cpu')
    assert predictor.padded_size(37, 51) == (40, 56)
    assert predictor.padded_size(3, 5) == (8, 8)  # never below 2^K
    rng = np.random.default_rng(1)
    left = rng.integers(0, 256, size=(37, 51), dtype=np.uint8)
    right = rng.integers(0, 256, size=(37, 51), dtype=np.uint8)
    disparity = predictor.predict(left, right)
    assert disparity.shape == (37, 51)
    # Equal to running the network on the edge-padded images and cropping.
    left_padded = np.pad(left, ((0, 3), (0, 5)), mode='edge')
    right_padded = np.pad(right, ((0, 3), (0, 5)), mode='edge')
    unpadded_predictor = Predictor(seed, device='cpu')
    assert np.abs(unpadded_predictor.predict(left_padded, right_padded)[:37, :51] - disparity).max() < 1e-4


def test_default_is_the_bundled_checkpoint_else_the_clearly_marked_placeholder(
        tmp_path: Path, seed_checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stereonet_ros.inference as inference
    monkeypatch.setattr(inference, 'DEFAULT_CHECKPOINT', tmp_path / 'none_bundled.safetensors')
    with pytest.warns(UntrainedPlaceholderWarning, match='UNTRAINED placeholder'):
        predictor = Predictor.from_checkpoint(device='cpu')
    assert predictor.is_placeholder
    monkeypatch.setattr(inference, 'DEFAULT_CHECKPOINT', seed_checkpoint_path)
    bundled = Predictor.from_checkpoint(device='cpu')
    assert not bundled.is_placeholder and bundled.contract.left_mean == (111.5684,)
    assert predictor.checkpoint.provenance['trained'] is False
    # Deterministic: the placeholder does not depend on (or disturb) the global torch seed.
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    again = placeholder_checkpoint()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(again.state_dict[k], v) for k, v in predictor.checkpoint.state_dict.items())


def test_predictor_model_is_the_checkpoints_network(seed_predictor: Predictor, seed_checkpoint_path: Path) -> None:
    assert isinstance(seed_predictor.model, torch.nn.Module)
    saved = load_checkpoint(seed_checkpoint_path).state_dict
    assert all(torch.equal(seed_predictor.model.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize('left, right, message', [
    (np.zeros((10, 12), np.uint8), np.zeros((10, 13), np.uint8), r'differ in size: 12x10 vs 13x10'),
    (np.zeros((10, 12), np.int32), np.zeros((10, 12), np.int32), r'dtype int32'),
    (np.zeros((10, 12, 2), np.uint8), np.zeros((10, 12, 2), np.uint8), r'HxWx3 or HxWx4, got shape \(10, 12, 2\)'),
    (np.zeros((0, 12), np.uint8), np.zeros((0, 12), np.uint8), r'empty'),
    (np.full((10, 12), np.nan, np.float32), np.zeros((10, 12), np.float32), r'non-finite'),
])
def test_bad_images_are_refused_with_the_reason(seed_predictor: Predictor, left: np.ndarray, right: np.ndarray,
                                                message: str) -> None:
    with pytest.raises(InputError, match=message):
        seed_predictor.predict(left, right)


def test_bad_device_and_precision_are_refused() -> None:
    assert resolve_device('cpu') == torch.device('cpu')
    with pytest.raises(InputError, match="device 'gpu0' is not a device"):
        resolve_device('gpu0')
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match='CUDA is not available'):
            resolve_device('cuda')
        assert resolve_device('auto') == torch.device('cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UntrainedPlaceholderWarning)
        with pytest.raises(InputError, match="precision 'fp16' needs a CUDA device"):
            Predictor(placeholder_checkpoint(), device='cpu', precision='fp16')
        with pytest.raises(InputError, match="precision 'fp8'"):
            Predictor(placeholder_checkpoint(), device='cpu', precision='fp8')  # type: ignore[arg-type]


def test_cpu_bf16_is_refused_where_emulated_and_close_to_fp32_where_native(
        monkeypatch: pytest.MonkeyPatch, seed_checkpoint_path: Path, seed_reference: dict[str, np.ndarray]) -> None:
    monkeypatch.setattr(inference, 'cpu_has_native_bf16', lambda: False)
    with pytest.raises(InputError, match="precision 'bf16' on the CPU needs native bfloat16"):
        Predictor.from_checkpoint(seed_checkpoint_path, device='cpu', precision='bf16')
    # Where it is native it is fast; elsewhere autocast emulates it, slowly but with the same numbers.
    monkeypatch.setattr(inference, 'cpu_has_native_bf16', lambda: True)
    reduced = Predictor.from_checkpoint(seed_checkpoint_path, device='cpu', precision='bf16')
    full = Predictor.from_checkpoint(seed_checkpoint_path, device='cpu')
    left_tensor, right_tensor = full.preprocess(seed_reference['left_96x160'].astype(np.uint8),
                                                seed_reference['right_96x160'].astype(np.uint8))
    bf16, fp32 = reduced.run(left_tensor, right_tensor), full.run(left_tensor, right_tensor)
    assert bf16.dtype == torch.float32  # the disparity itself is never rounded to bfloat16
    # Random seed weights: a scale for "close" is the disparity's own spread.
    assert (bf16 - fp32).abs().mean() < 0.05 * fp32.std()


@pytest.mark.cuda
def test_gpu_matches_cpu(seed_checkpoint_path: Path, seed_reference: dict[str, np.ndarray]) -> None:
    predictor = Predictor.from_checkpoint(seed_checkpoint_path, device='cuda')
    disparity = predictor.predict(seed_reference['left_100x170'].astype(np.uint8),
                                  seed_reference['right_100x170'].astype(np.uint8))
    assert np.abs(disparity - seed_reference['disparity_100x170'][0, 0]).max() <= 1e-3


def test_run_with_confidence_gives_the_same_disparity_and_a_full_size_confidence(seed_predictor: Predictor) -> None:
    rng = np.random.default_rng(2)
    left = rng.integers(0, 256, size=(45, 70), dtype=np.uint8)
    right = np.roll(left, -4, axis=1)
    left_tensor, right_tensor = seed_predictor.preprocess(left, right)
    disparity, confidence = seed_predictor.run_with_confidence(left_tensor, right_tensor)
    assert torch.equal(disparity, seed_predictor.run(left_tensor, right_tensor))
    assert confidence.shape == (1, 1, 45, 70)
    assert float(confidence.min()) >= 0.0 and float(confidence.max()) <= 1.0


def test_a_checkpoint_marked_preliminary_warns_with_its_note(seed_checkpoint_path: Path) -> None:
    from stereonet_ros.inference import PreliminaryCheckpointWarning
    seed = load_checkpoint(seed_checkpoint_path)
    marked = Checkpoint(config=seed.config, contract=seed.contract, state_dict=seed.state_dict,
                        provenance={'preliminary': True, 'note': '500 steps; Motorcycle EPE 5.7 px'})
    with pytest.warns(PreliminaryCheckpointWarning, match='PRELIMINARY checkpoint: 500 steps; Motorcycle EPE 5.7'):
        Predictor(marked, device='cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        Predictor(seed, device='cpu')  # an ordinary checkpoint warns about nothing


# ---------------------------------------------------------------------------- one inference path, test-time scale


@pytest.fixture(scope='module')
def small_predictor() -> Predictor:
    """A small random network: exact arithmetic checks of the scaling path, independent of training."""
    from stereonet_ros.model.checkpoint import InputContract
    from stereonet_ros.model.stereonet import StereoNet, StereoNetConfig

    config = StereoNetConfig(in_channels=1, k_downsampling_layers=2, k_refinement_layers=2, feature_channels=4,
                             cost_filter_channels=4, refiner_channels=4, max_disparity=31, disparity_grid='exact',
                             cost_volume_border='replicate')
    torch.manual_seed(3)
    contract = InputContract(color='gray', left_mean=(127.5,), left_std=(127.5,), right_mean=(127.5,),
                             right_std=(127.5,), max_disparity=31.0, pad_multiple=4)
    return Predictor(Checkpoint(config=config, contract=contract, state_dict=StereoNet(config).state_dict()),
                     device='cpu')


@pytest.mark.parametrize(('scale', 'size', 'mode'), [
    (0.5, (16, 48), 'area'),
    (1.37, (44, 132), 'bilinear'),  # 32 * 1.37 = 43.84, 96 * 1.37 = 131.52: fractional sizes round
    (2.5, (80, 240), 'bilinear'),
])
def test_infer_resizes_by_the_rule_runs_and_returns_input_size_in_input_pixels(
        small_predictor: Predictor, scale: float, size: tuple[int, int], mode: str) -> None:
    import torch.nn.functional as F

    rng = np.random.default_rng(4)
    left = rng.integers(0, 256, (32, 96, 3), dtype=np.uint8)
    right = rng.integers(0, 256, (32, 96, 3), dtype=np.uint8)
    answer = small_predictor.infer(left, right, scale=scale, with_confidence=True)
    assert answer.network_size == size
    extra = {} if mode == 'area' else {'align_corners': False}
    small = [F.interpolate(t, size=size, mode=mode, **extra) for t in small_predictor.preprocess(left, right)]
    shift, confidence = small_predictor.run_with_confidence(*small)  # (1, 1, h, w) each
    ratio = 96 / size[1]
    expected = F.interpolate(shift, size=(32, 96), mode='bilinear', align_corners=False)[0, 0].numpy() * ratio
    np.testing.assert_allclose(answer.disparity, expected, rtol=1e-6, atol=1e-6)
    assert answer.disparity.shape == (32, 96) and answer.disparity.dtype == np.float32
    assert answer.confidence is not None and answer.confidence.shape == (32, 96)
    np.testing.assert_allclose(answer.confidence, F.interpolate(confidence, size=(32, 96), mode='bilinear',
                                                                align_corners=False)[0, 0].clamp(0, 1).numpy(),
                               atol=1e-6)
    assert answer.max_disparity == pytest.approx(31.0 * ratio)  # network max / s, s = w / W
    assert np.array_equal(small_predictor.predict(left, right, scale=scale), answer.disparity)


def test_infer_at_scale_one_is_the_network_on_the_input_unresized(small_predictor: Predictor) -> None:
    rng = np.random.default_rng(5)
    left = rng.integers(0, 256, (30, 70), dtype=np.uint8)
    right = rng.integers(0, 256, (30, 70), dtype=np.uint8)
    answer = small_predictor.infer(left, right)
    assert answer.network_size == (30, 70) and answer.max_disparity == 31.0 and answer.confidence is None
    expected = small_predictor.run(*small_predictor.preprocess(left, right))[0, 0].numpy()
    assert np.array_equal(answer.disparity, expected)


def test_resize_shrinks_by_area_and_enlarges_bilinearly_and_keeps_a_constant() -> None:
    ramp = torch.arange(8, dtype=torch.float32).reshape(1, 1, 1, 8).expand(1, 1, 2, 8)
    assert torch.equal(inference.resize(ramp, (2, 4))[0, 0, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))  # pair means
    # Enlarged x2 with pixel centres aligned: sample j sits at input x = (j + 0.5) / 2 - 0.5, clamped at the ends.
    assert torch.allclose(inference.resize(ramp, (2, 16))[0, 0, 0],
                          torch.clamp((torch.arange(16) + 0.5) / 2 - 0.5, 0, 7))
    constant = torch.full((1, 1, 7, 9), 3.25)
    for size in ((3, 4), (7, 9), (10, 13), (18, 23)):
        resized = inference.resize(constant, size)
        assert resized.shape == (1, 1, *size) and torch.allclose(resized, torch.tensor(3.25))
    assert inference.resize(constant, (7, 9)) is constant


@pytest.mark.parametrize(('scale', 'accepted'), [(2.5, True), (2.5001, False), (0.1, True), (0.0999, False),
                                                  (float('nan'), False), (float('inf'), False), (-1.0, False)])
def test_the_scale_range_ends_are_included_and_beyond_is_refused_naming_the_range(
        small_predictor: Predictor, scale: float, accepted: bool) -> None:
    image = np.full((40, 40), 128, np.uint8)
    if accepted:
        answer = small_predictor.infer(image, image, scale=scale)
        assert answer.disparity.shape == (40, 40)
        assert answer.network_size == (round(40 * scale),) * 2
    else:
        with pytest.raises(InputError, match=rf'inference scale {scale!r} is outside \[0.1, 2.5\]'):
            small_predictor.infer(image, image, scale=scale)


@pytest.fixture(scope='module')
def default_predictor() -> Predictor:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the bundled checkpoint is marked preliminary
        return Predictor.from_checkpoint(device='cpu')


@pytest.mark.parametrize('scale', [0.5, 1.0, 1.37, 2.5])
def test_a_constant_shift_comes_back_in_input_pixels_at_every_scale(default_predictor: Predictor,
                                                                    scale: float) -> None:
    """Known answer: the right view is the left moved by 24 px, so every pixel's disparity is 24.

    The texture is a real one (a Motorcycle crop). 24 px puts the shift the network sees (12 at 0.5,
    60 at 2.5) inside its training range. Tolerance: the bundled (preliminary) checkpoint's own error
    here, measured, is at most 0.52 px in the median and 0.92 px mean at any of these scales; a scale
    not divided back would be off by 12 px (0.5), 8.9 px (1.37) or 36 px (2.5).
    """
    from stereonet_ros.samples import motorcycle

    shift = 24
    texture = motorcycle().left
    left = texture[300:396, 300:556]  # (96, 256, 3)
    right = texture[300:396, 300 + shift:556 + shift]  # right(x) = left(x + 24): left x is at x - 24 on the right
    answer = default_predictor.infer(left, right, scale=scale)
    assert answer.disparity.shape == (96, 256)
    inner = answer.disparity[8:-8, shift + 16:-8]  # away from the borders and from pixels without a match
    assert abs(float(np.median(inner)) - shift) <= 1.0
    assert float(np.abs(inner - shift).mean()) <= 1.5
    assert answer.max_disparity == pytest.approx(192.0 * 256 / round(256 * scale))
    assert answer.max_disparity == pytest.approx(192.0 / scale, rel=2e-3)


# ---------------------------------------------------------------------------- images to the device as they came


def numpy_path(predictor: Predictor, left: np.ndarray, right: np.ndarray,
               with_confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The pre-upload path, kept as the reference: float32 on the host (as_float_image, to_contract_color,
    normalization in NumPy), then the network on float32 tensors."""
    contract = predictor.contract
    tensors = []
    for image, name, mean, std in ((left, 'left', contract.left_mean, contract.left_std),
                                   (right, 'right', contract.right_mean, contract.right_std)):
        planes = to_contract_color(inference.as_float_image(image, name), contract.color)  # (C, H, W)
        normalized = (planes - np.asarray(mean, np.float32).reshape(-1, 1, 1)) / np.asarray(std, np.float32).reshape(-1, 1, 1)
        tensors.append(torch.from_numpy(np.ascontiguousarray(normalized)).unsqueeze(0))
    if with_confidence:
        disparity, confidence = predictor.run_with_confidence(*tensors)
        return disparity[0, 0].numpy(), confidence[0, 0].clamp(0, 1).numpy()
    return predictor.run(*tensors)[0, 0].numpy(), None


@pytest.fixture(scope='module')
def rgb_predictor() -> Predictor:
    from stereonet_ros.model.checkpoint import InputContract
    from stereonet_ros.model.stereonet import StereoNet, StereoNetConfig

    config = StereoNetConfig(in_channels=3, k_downsampling_layers=2, k_refinement_layers=2, feature_channels=4,
                             cost_filter_channels=4, refiner_channels=4, max_disparity=31, disparity_grid='exact',
                             cost_volume_border='replicate')
    torch.manual_seed(6)
    contract = InputContract(color='rgb', left_mean=(120.0, 110.0, 100.0), left_std=(60.0, 61.0, 62.0),
                             right_mean=(121.0, 111.0, 101.0), right_std=(59.0, 60.0, 61.0), max_disparity=31.0,
                             pad_multiple=4)
    return Predictor(Checkpoint(config=config, contract=contract, state_dict=StereoNet(config).state_dict()),
                     device='cpu')


def test_uint8_uploaded_and_converted_on_the_device_equals_the_float_numpy_path(default_predictor: Predictor) -> None:
    """Motorcycle with the bundled checkpoint, the inputs the node and the CLIs send: RGB and gray uint8,
    RGBA, 16 bit. Limit 1e-4 px; the network input itself is equal bit for bit."""
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    left, right = sample.left[:200, :320], sample.right[:200, :320]  # (200, 320, 3) uint8
    gray = [np.rint(image @ np.array(BT601_WEIGHTS)).astype(np.uint8) for image in (left, right)]
    cases = {
        'rgb8': (left, right),
        'mono8': tuple(gray),
        'rgba8': tuple(np.dstack([image, np.full(image.shape[:2], 9, np.uint8)]) for image in (left, right)),
        'mono16': tuple(image.astype(np.uint16) * 257 + 100 for image in gray),
        'rgb16': tuple(image.astype(np.uint16) * 250 for image in (left, right)),
    }
    for name, (left_image, right_image) in cases.items():
        answer = default_predictor.infer(left_image, right_image, with_confidence=True)
        reference, confidence = numpy_path(default_predictor, left_image, right_image, with_confidence=True)
        assert np.abs(answer.disparity - reference).max() <= 1e-4, name
        assert answer.confidence is not None and confidence is not None
        assert np.abs(answer.confidence - confidence).max() <= 1e-5, name
        uploaded = default_predictor.preprocess(left_image, right_image)
        contract = default_predictor.contract
        planes = to_contract_color(inference.as_float_image(left_image, 'left'), 'gray')
        expected = (planes - np.float32(contract.left_mean[0])) / np.float32(contract.left_std[0])
        assert np.array_equal(uploaded[0][0].numpy(), expected), name


def test_an_rgb_network_gets_the_same_input_from_the_device_path(rgb_predictor: Predictor) -> None:
    rng = np.random.default_rng(7)
    left = rng.integers(0, 256, (36, 60, 3), dtype=np.uint8)
    right = np.roll(left, -3, axis=1)
    for left_image, right_image in ((left, right), (left[:, :, 0], right[:, :, 0]),
                                    (left.astype(np.float64) * 0.9, right.astype(np.float32))):
        answer = rgb_predictor.infer(left_image, right_image)
        reference, _ = numpy_path(rgb_predictor, left_image, right_image)
        assert np.abs(answer.disparity - reference).max() <= 1e-4


# ---------------------------------------------------------------------------- when a captured pass is used


class EagerStandIn:
    """Stands in for the CUDA graph (CPU here): runs the pass it was given eagerly, counting calls."""

    made: list[tuple[tuple[int, ...], bool]] = []

    def __init__(self, device_pass: Any, left: np.ndarray, right: np.ndarray, device: torch.device) -> None:
        if left.shape[0] == 13:
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
        self.device_pass, self.device, self.calls = device_pass, device, 0
        EagerStandIn.made.append((left.shape, True))

    def __call__(self, left: np.ndarray, right: np.ndarray) -> list[np.ndarray]:
        self.calls += 1
        outputs = self.device_pass(inference._to_device(left, self.device), inference._to_device(right, self.device))
        return [t[0, 0].numpy().copy() for t in outputs if t is not None]


def test_the_second_call_at_a_size_captures_later_ones_replay_and_a_new_size_runs_eagerly(
        small_predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, 'CapturedPass', EagerStandIn)
    predictor = Predictor(small_predictor.checkpoint, device='cpu')
    predictor.cuda_graphs = True  # what a CUDA device sets
    EagerStandIn.made = []
    rng = np.random.default_rng(8)
    pairs = {size: (rng.integers(0, 256, size, dtype=np.uint8), rng.integers(0, 256, size, dtype=np.uint8))
             for size in ((32, 48), (24, 40), (16, 32), (13, 32))}
    eager = {size: small_predictor.infer(*pair, with_confidence=True) for size, pair in pairs.items()}

    def run(size: tuple[int, int]) -> None:
        answer = predictor.infer(*pairs[size], with_confidence=True)
        assert np.array_equal(answer.disparity, eager[size].disparity)
        expected = eager[size].confidence
        assert answer.confidence is not None and expected is not None
        assert np.array_equal(answer.confidence, expected)

    run((32, 48))
    assert predictor.captured_sizes == []  # the first call at a size is the warm-up (cuDNN chooses there)
    run((32, 48))
    run((32, 48))
    assert predictor.captured_sizes == [(32, 48)] and len(EagerStandIn.made) == 1
    run((24, 40))  # a new size: eager, the captured one kept
    run((32, 48))
    assert predictor.captured_sizes == [(32, 48)]
    run((24, 40))
    run((24, 40))
    run((16, 32))
    run((16, 32))  # a third size: the least recently used one goes
    assert predictor.captured_sizes == [(24, 40), (16, 32)]
    run((13, 32))
    run((13, 32))  # its capture fails (out of memory): eager from then on, the reason kept
    assert predictor.captured_sizes == [(24, 40), (16, 32)]
    assert ['CUDA out of memory' in reason for reason in predictor.capture_failures.values()] == [True]
    run((13, 32))
    predictor.reset_device_state()
    assert predictor.captured_sizes == []
    # Scale and confidence are part of the size key: another scale is another pass.
    predictor.infer(*pairs[(24, 40)], scale=0.5)
    predictor.infer(*pairs[(24, 40)], scale=0.5)
    assert predictor.captured_sizes == [(24, 40)] and EagerStandIn.made[-1][0] == (24, 40)
    assert not Predictor(small_predictor.checkpoint, device='cpu').cuda_graphs  # never on the CPU


def test_device_pass_on_uploaded_images_is_infer_without_the_copy_back(small_predictor: Predictor) -> None:
    rng = np.random.default_rng(9)
    left, right = rng.integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    left_raw, right_raw = small_predictor.upload(left, right)
    assert left_raw.dtype == torch.uint8 and left_raw.shape == (24, 40, 3)
    disparity, confidence = small_predictor.device_pass(left_raw, right_raw, scale=0.5, with_confidence=True)
    answer = small_predictor.infer(left, right, scale=0.5, with_confidence=True)
    assert np.array_equal(disparity[0, 0].numpy(), answer.disparity)
    assert confidence is not None and answer.confidence is not None
    assert np.array_equal(confidence[0, 0].numpy(), answer.confidence)
    with pytest.raises(InputError, match='capturing a pass needs a CUDA device; this predictor runs on cpu'):
        small_predictor.capture(left, right)


def test_auto_picks_cuda_when_torch_sees_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert resolve_device('auto') == torch.device('cuda')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert resolve_device('auto') == torch.device('cpu')
