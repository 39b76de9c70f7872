"""Run a StereoNet checkpoint on image arrays: preprocess, pad, run, unpad.

Preprocessing follows the checkpoint's :class:`~stereonet_ros.model.checkpoint.InputContract`:

1. Values to 0..255 units: uint8 as is, uint16 times 255/65535, float arrays taken as 0..255.
2. Colour to what the weights want: RGB -> gray with ITU-R BT.601 luma (0.299 R + 0.587 G +
   0.114 B, what OpenCV and cv_bridge use); gray -> RGB by repeating the channel; RGBA drops alpha.
3. ``(x - mean) / std`` per view and channel.

One colour conversion everywhere: RGB becomes float32 luma (:func:`~stereonet_ros.image_codec.bt601_luma`),
never rounded to uint8. The training data (``stereonet_ros.data``) are made that way, and the node's
message decoding (:func:`~stereonet_ros.image_codec.to_model_input`) calls the same function, so an
``rgb8`` message and the same pixels read from a PNG give the network the same input bit for bit.

Test-time scale (:meth:`Predictor.infer`, ``scale`` in [:data:`MIN_INFERENCE_SCALE`,
:data:`MAX_INFERENCE_SCALE`]): the network runs on ``round(H * s) x round(W * s)`` images and the
answer comes back at the input size, in input pixels. One resize rule: shrinking averages the area each
output pixel covers (``area``: a box filter, so no aliasing of fine texture into false matches);
enlarging interpolates bilinearly (``area`` would repeat pixels, a staircase that moves edges by up to
half a pixel; bilinear moves a constant shift along unchanged and does not overshoot as bicubic does).
Both map pixel centres the same way (``align_corners=False``), so a shift ``d`` in the input is ``d * w / W``
in the resized pair; the network's disparity is resized back bilinearly and multiplied by ``W / w``
(disparity scales with the width ratio; ``w / W`` is ``s`` up to the rounding of ``w``).

Padding policy: the contract's ``pad_multiple`` (1 for seed checkpoints, which the seed ran at the
given size; 2^K for ours) pads bottom and right with edge values, so that every pyramid level has
an exact size; the output is cropped back. Left-view disparity only looks leftwards (x - d), so
padding on the right never changes a real pixel's candidates. Images smaller than 2^K are padded
up to it.

On the CPU the predictor stores the network channels-last with BatchNorm folded into the
convolutions and tunes glibc's allocator (:mod:`stereonet_ros.cpu_allocator`): measured 960x544,
about 0.6 s against 1.9 s for a plain NCHW forward of the same weights (``benchmarks/model_forward.py``).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from stereonet_ros.cpu_allocator import tune_allocator_for_inference
from stereonet_ros.image_codec import bt601_luma
from stereonet_ros.model.checkpoint import Checkpoint, InputContract, load_checkpoint
from stereonet_ros.model.stereonet import (StereoNet, StereoNetConfig, fold_batchnorm, matching_confidence,
                                           to_channels_last)
from stereonet_ros.precision import cpu_has_native_bf16

Precision = Literal['fp32', 'fp16', 'bf16']


DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / 'checkpoints' / 'stereonet_default.safetensors'
"""The bundled default checkpoint (trained by ``stereonet-train``; see the README)."""

PLACEHOLDER_CONFIG = StereoNetConfig(in_channels=1, max_disparity=192, disparity_grid='exact',
                                     cost_volume_border='replicate')
PLACEHOLDER_CONTRACT = InputContract(color='gray', left_mean=(127.5,), left_std=(127.5,), right_mean=(127.5,),
                                     right_std=(127.5,), max_disparity=192.0, pad_multiple=8)


MIN_INFERENCE_SCALE = 0.1
"""Smallest test-time scale: below it a typical 640x480 pair is smaller than the network's 2^K steps
allow to match much."""
MAX_INFERENCE_SCALE = 2.5
"""Largest test-time scale: 2.5 x 2.5 = 6.25 times the pixels (and about that much time and memory); the
cost volume's candidates then span 1/2.5 of the network's range in input pixels."""


class InputError(ValueError):
    """Images, device or precision that the predictor cannot use."""


class UntrainedPlaceholderWarning(UserWarning):
    """The predictor runs the untrained placeholder: its disparities are meaningless."""


class PreliminaryCheckpointWarning(UserWarning):
    """The checkpoint's provenance marks it preliminary (trained, but short of its accuracy goal)."""


def placeholder_checkpoint() -> Checkpoint:
    """Random weights (seed 0) in the default architecture: what runs while no trained default ships.

    It exercises the whole pipeline; its output is NOT depth. Marked ``placeholder`` in provenance.
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = StereoNet(PLACEHOLDER_CONFIG)
    finally:
        torch.random.set_rng_state(generator_state)
    return Checkpoint(config=PLACEHOLDER_CONFIG, contract=PLACEHOLDER_CONTRACT, state_dict=model.state_dict(),
                      provenance={'placeholder': True, 'trained': False,
                                  'note': 'UNTRAINED placeholder (random weights, seed 0); not depth'})


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; otherwise a torch device string ('cpu', 'cuda:1')."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise InputError(f"device {device!r} is not a device ('auto', 'cpu', 'cuda', 'cuda:N')") from err
    if resolved.type == 'cuda':
        if not torch.cuda.is_available():
            raise InputError(f'device {device!r}: CUDA is not available here')
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f'device {device!r}: only {torch.cuda.device_count()} CUDA device(s)')
    elif resolved.type != 'cpu':
        raise InputError(f"device {device!r}: only 'cpu' and 'cuda' are supported")
    return resolved


def as_float_image(image: npt.ArrayLike, name: str) -> npt.NDArray[np.float32]:
    """(H, W) or (H, W, C) in 0..255 units, float32; C in 1, 3, 4 (alpha dropped)."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[:, :, 0] if array.shape[2] == 1 else array[:, :, :3]
    elif array.ndim != 2:
        raise InputError(f'{name} image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f'{name} image is empty (shape {array.shape})')
    if array.dtype == np.uint8:
        return array.astype(np.float32)
    if array.dtype == np.uint16:
        return array.astype(np.float32) * np.float32(255.0 / 65535.0)
    if array.dtype in (np.float32, np.float64):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise InputError(f'{name} image has non-finite values')
        return values
    raise InputError(f'{name} image has dtype {array.dtype}; expected uint8, uint16 or float (0..255)')


def to_contract_color(image: npt.NDArray[np.float32], color: Literal['gray', 'rgb']) -> npt.NDArray[np.float32]:
    """(H, W) or (H, W, 3) float32 -> (C, H, W) in the contract's colour (gray: float BT.601 luma,
    :func:`~stereonet_ros.image_codec.bt601_luma`, unrounded)."""
    if color == 'gray':
        if image.ndim == 3:
            image = bt601_luma(image)  # (H, W)
        return image[np.newaxis]  # (1, H, W)
    if image.ndim == 2:
        return np.repeat(image[np.newaxis], 3, axis=0)  # (3, H, W)
    return np.ascontiguousarray(image.transpose(2, 0, 1))  # (3, H, W)


def check_inference_scale(scale: float) -> float:
    """``scale`` as a float if it is in [:data:`MIN_INFERENCE_SCALE`, :data:`MAX_INFERENCE_SCALE`] (ends included).

    Raises:
        InputError: not a finite number in that range (the message gives the value and the range).
    """
    try:
        value = float(scale)
    except (TypeError, ValueError) as err:
        raise InputError(f'inference scale {scale!r} is not a number') from err
    if not (math.isfinite(value) and MIN_INFERENCE_SCALE <= value <= MAX_INFERENCE_SCALE):
        raise InputError(f'inference scale {scale!r} is outside [{MIN_INFERENCE_SCALE}, {MAX_INFERENCE_SCALE}]')
    return value


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size the network runs at for an ``height`` x ``width`` input at ``scale``: each side rounded
    half to even, at least 1 (the padding policy then pads it)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, h, w)`` by the module's resize rule: ``area`` when shrinking, bilinear
    (``align_corners=False``) when enlarging; the same tensor when the size is unchanged.

    Sizes from :func:`scaled_size` never shrink one side and enlarge the other (``round(x * s)`` is
    ``<= x`` for ``s < 1`` and ``>= x`` for ``s > 1``); a side left unchanged is left unchanged by both
    rules.
    """
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image
    if size[0] <= height and size[1] <= width:
        return F.interpolate(image, size=size, mode='area')
    return F.interpolate(image, size=size, mode='bilinear', align_corners=False)


@dataclass(frozen=True)
class Inference:
    """The network's answer for one pair, at the input's size and in its pixels.

    Attributes:
        disparity: ``(H, W)`` float32 left-view image shift, pixels of the input.
        confidence: ``(H, W)`` float32 in [0, 1] (:func:`~stereonet_ros.model.stereonet.matching_confidence`),
            or ``None`` when not asked for.
        max_disparity: the largest shift the network can express, pixels of the input: the contract's
            ``max_disparity`` times ``W / w`` (= ``/ scale`` up to the rounding of ``w``).
        network_size: ``(h, w)`` the network ran at (before padding to the contract's multiple).
    """

    disparity: npt.NDArray[np.float32]
    confidence: npt.NDArray[np.float32] | None
    max_disparity: float
    network_size: tuple[int, int]


class Predictor:
    """A checkpoint ready to turn image pairs into left-view disparity.

    >>> predictor = Predictor.from_checkpoint()          # doctest: +SKIP
    >>> disparity = predictor.predict(left, right)       # doctest: +SKIP  (H, W) float32, pixels
    >>> answer = predictor.infer(left, right, scale=1.5, with_confidence=True)  # doctest: +SKIP
    """

    def __init__(self, checkpoint: Checkpoint, device: str = 'auto', precision: Precision = 'fp32') -> None:
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        if precision not in ('fp32', 'fp16', 'bf16'):
            raise InputError(f"precision {precision!r}: must be 'fp32', 'fp16' or 'bf16'")
        if precision == 'fp16' and self.device.type != 'cuda':
            raise InputError(f'precision {precision!r} needs a CUDA device; the CPU runs fp32 or bf16')
        if precision == 'bf16' and self.device.type == 'cpu' and not cpu_has_native_bf16():
            # Emulated bfloat16 is slower than float32: refuse rather than slow the robot down.
            raise InputError("precision 'bf16' on the CPU needs native bfloat16 (AVX512-BF16 or AMX), "
                             'which this CPU lacks; use fp32')
        self.precision: Precision = precision
        if checkpoint.config.in_channels != checkpoint.contract.channels:
            raise InputError(f'checkpoint model takes {checkpoint.config.in_channels} channel(s) but its input '
                             f'contract is {checkpoint.contract.color!r}')
        self.model: StereoNet = checkpoint.build_model()
        """The network with the checkpoint's weights (eval mode, CPU), as saved."""
        if self.device.type == 'cpu':
            tune_allocator_for_inference()
        # The network that runs: BatchNorm folded, channels-last, on the device.
        self._runner = to_channels_last(fold_batchnorm(self.model)).to(self.device)
        if checkpoint.provenance.get('placeholder'):
            warnings.warn('stereonet_ros: running the UNTRAINED placeholder network (random weights); '
                          'its disparities are meaningless. Pass a trained checkpoint.',
                          UntrainedPlaceholderWarning, stacklevel=2)
        elif checkpoint.provenance.get('preliminary'):
            note = checkpoint.provenance.get('note', 'see its provenance')
            warnings.warn(f'stereonet_ros: PRELIMINARY checkpoint: {note}', PreliminaryCheckpointWarning,
                          stacklevel=2)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str] | None = None, device: str = 'auto',
                        precision: Precision = 'fp32') -> Predictor:
        """Load ``path`` (ours or a seed ``.ckpt``); ``None`` = the bundled default checkpoint.

        While no trained default is bundled, ``None`` gives the untrained placeholder and warns.

        Raises:
            CheckpointError: the file cannot be used (message says why).
            InputError: bad device or precision.
        """
        if path is None:
            bundled = DEFAULT_CHECKPOINT.exists()
            checkpoint = load_checkpoint(DEFAULT_CHECKPOINT) if bundled else placeholder_checkpoint()
        else:
            checkpoint = load_checkpoint(path)
        return cls(checkpoint, device=device, precision=precision)

    @property
    def contract(self) -> InputContract:
        return self.checkpoint.contract

    @property
    def config(self) -> StereoNetConfig:
        return self.checkpoint.config

    @property
    def is_placeholder(self) -> bool:
        return bool(self.checkpoint.provenance.get('placeholder'))

    def preprocess(self, left: npt.ArrayLike, right: npt.ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Two images -> normalized ``(1, C, H, W)`` float32 tensors on the device, unpadded."""
        left_image = as_float_image(left, 'left')
        right_image = as_float_image(right, 'right')
        if left_image.shape[:2] != right_image.shape[:2]:
            raise InputError(f'left and right images differ in size: {left_image.shape[1]}x{left_image.shape[0]} '
                             f'vs {right_image.shape[1]}x{right_image.shape[0]}')
        contract = self.contract
        tensors = []
        for image, mean, std in ((left_image, contract.left_mean, contract.left_std),
                                 (right_image, contract.right_mean, contract.right_std)):
            planes = to_contract_color(image, contract.color)  # (C, H, W)
            mean_array = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
            std_array = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
            normalized = (planes - mean_array) / std_array
            tensors.append(torch.from_numpy(np.ascontiguousarray(normalized)).unsqueeze(0).to(self.device))
        return tensors[0], tensors[1]

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the network runs at for an ``height`` x ``width`` input (see the padding policy)."""
        multiple = self.contract.pad_multiple
        smallest = self.config.downsampling_factor
        padded_height = max(-(-height // multiple) * multiple, smallest)
        padded_width = max(-(-width // multiple) * multiple, smallest)
        return padded_height, padded_width

    def run(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Normalized ``(B, C, H, W)`` tensors -> ``(B, 1, H, W)`` float32 disparity: pads, runs, unpads."""
        disparity, _ = self._run(left, right, with_confidence=False)
        return disparity

    def run_with_confidence(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`run`, plus ``(B, 1, H, W)`` confidence in [0, 1]
        (:func:`~stereonet_ros.model.stereonet.matching_confidence` of the cost volume, resized bilinearly)."""
        disparity, confidence = self._run(left, right, with_confidence=True)
        assert confidence is not None
        return disparity, confidence

    def _run(self, left: torch.Tensor, right: torch.Tensor,
             with_confidence: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        height, width = left.shape[-2:]
        padded_height, padded_width = self.padded_size(height, width)
        padding = (0, padded_width - width, 0, padded_height - height)
        if any(padding):
            left = F.pad(left, padding, mode='replicate')
            right = F.pad(right, padding, mode='replicate')
        left = left.contiguous(memory_format=torch.channels_last)
        right = right.contiguous(memory_format=torch.channels_last)
        dtype = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[self.precision]
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=dtype,
                                                    enabled=self.precision != 'fp32'):
            if not with_confidence:
                return self._runner(left, right)[:, :, :height, :width].float(), None
            output = self._runner(left, right, with_pyramid=True)
            confidence = F.interpolate(matching_confidence(output.cost), size=left.shape[-2:], mode='bilinear',
                                       align_corners=self.config.align_corners)
        return output.disparity[:, :, :height, :width].float(), confidence[:, :, :height, :width].float()

    def infer(self, left: npt.ArrayLike, right: npt.ArrayLike, *, scale: float = 1.0,
              with_confidence: bool = False) -> Inference:
        """The one inference path (node, CLIs, evaluators): colour, scale, network, confidence, back to input pixels.

        Args:
            left, right: ``(H, W)`` gray or ``(H, W, 3|4)`` RGB(A), uint8, uint16, or float in 0..255;
                equal sizes.
            scale: run the network on the pair resized by this factor (the module doc's resize rule),
                in [:data:`MIN_INFERENCE_SCALE`, :data:`MAX_INFERENCE_SCALE`], ends included.
            with_confidence: also compute the matching confidence (at the network's size, resized back
                bilinearly).

        Raises:
            InputError: shapes, dtypes or sizes the predictor cannot use, or a scale out of range
                (message says which).
        """
        scale = check_inference_scale(scale)
        left_tensor, right_tensor = self.preprocess(left, right)  # (1, C, H, W) each
        height, width = left_tensor.shape[-2:]
        network_size = scaled_size(height, width, scale)
        # Normalization is per channel and affine, and both resize rules are linear and keep constants:
        # resizing after it equals resizing the raw images first.
        left_tensor, right_tensor = resize(left_tensor, network_size), resize(right_tensor, network_size)
        disparity, confidence = self._run(left_tensor, right_tensor, with_confidence)  # (1, 1, h, w) each
        ratio = width / network_size[1]  # disparity scales with the width
        if network_size != (height, width):
            disparity = F.interpolate(disparity, size=(height, width), mode='bilinear', align_corners=False) * ratio
            if confidence is not None:
                confidence = F.interpolate(confidence, size=(height, width), mode='bilinear', align_corners=False)
        disparity_array = np.ascontiguousarray(disparity[0, 0].cpu().numpy(), dtype=np.float32)  # (H, W)
        confidence_array = None
        if confidence is not None:
            confidence_array = np.ascontiguousarray(confidence[0, 0].clamp(0.0, 1.0).cpu().numpy(), dtype=np.float32)
        return Inference(disparity=disparity_array, confidence=confidence_array,
                         max_disparity=float(self.contract.max_disparity) * ratio, network_size=network_size)

    def predict(self, left: npt.ArrayLike, right: npt.ArrayLike, scale: float = 1.0) -> npt.NDArray[np.float32]:
        """Left-view disparity ``(H, W)`` float32 in pixels of the input: :meth:`infer`'s ``disparity``.

        Raises:
            InputError: as :meth:`infer`.
        """
        return self.infer(left, right, scale=scale).disparity
