"""What every backend shares, PyTorch or ONNX Runtime: the image checks, colour, scale and padding
rules, and the answer's form. Torch-free, so that a node running an ``.onnx`` model never imports PyTorch.

The rules themselves are written in :mod:`stereonet_ros.inference`'s module doc; the PyTorch
:class:`~stereonet_ros.inference.Predictor` applies them on its device, the ONNX Runtime
:class:`~stereonet_ros.onnx_backend.OnnxPredictor` with the NumPy functions here, tested equal.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from stereonet_ros.image_codec import bt601_luma
from stereonet_ros.model.architecture import StereoNetConfig
from stereonet_ros.model.checkpoint import InputContract

Precision = Literal['fp32', 'fp16', 'bf16']


DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / 'checkpoints' / 'stereonet_default.safetensors'
"""The bundled default checkpoint (trained by ``stereonet-train``; see the README)."""


MIN_INFERENCE_SCALE = 0.1
"""Smallest test-time scale: below it a typical 640x480 pair is smaller than the network's 2^K steps
allow to match much."""
MAX_INFERENCE_SCALE = 2.5
"""Largest test-time scale: 2.5 x 2.5 = 6.25 times the pixels (and about that much time and memory); the
cost volume's candidates then span 1/2.5 of the network's range in input pixels."""


DEFAULT_MAX_PIXELS = 4_000_000
"""Most pixels the network runs on (after the inference scale, before padding) unless told otherwise: a
size that fits a robot. Measured peak memory on the CPU path: 0.75 MP 841 MiB, 3 MP 1.9 GiB, 5.9 MP
6.5 GiB (issue 11); 4 MP takes about 3 GiB. The local search's threads beyond the first add at most
:data:`~stereonet_ros.local_search.EXTRA_WORKERS_MEMORY_BYTES` (512 MiB) to that. A larger pair is run at the
largest smaller scale that fits, or refused when even :data:`MIN_INFERENCE_SCALE` does not."""


class InputError(ValueError):
    """Images, device or precision that the predictor cannot use."""


class UntrainedPlaceholderWarning(UserWarning):
    """The predictor runs the untrained placeholder: its disparities are meaningless."""


class PreliminaryCheckpointWarning(UserWarning):
    """The checkpoint's provenance marks it preliminary (trained, but short of its accuracy goal)."""


class CheckpointFacts:
    """What a predictor tells about the weights it runs, read from its ``checkpoint`` (config, contract,
    provenance): one definition for the PyTorch :class:`~stereonet_ros.inference.Predictor` and the
    :class:`~stereonet_ros.onnx_backend.OnnxPredictor`."""

    checkpoint: Any

    @property
    def contract(self) -> InputContract:
        return self.checkpoint.contract  # type: ignore[no-any-return]

    @property
    def config(self) -> StereoNetConfig:
        return self.checkpoint.config  # type: ignore[no-any-return]

    @property
    def is_placeholder(self) -> bool:
        return bool(self.checkpoint.provenance.get('placeholder'))


def warn_about_provenance(provenance: dict[str, Any]) -> None:
    """What every predictor says when it opens weights: :class:`UntrainedPlaceholderWarning` for the
    placeholder, :class:`PreliminaryCheckpointWarning` (quoting the note) for a preliminary checkpoint. The
    warning points at whoever built the predictor."""
    if provenance.get('placeholder'):
        warnings.warn('stereonet_ros: running the UNTRAINED placeholder network (random weights); '
                      'its disparities are meaningless. Pass a trained checkpoint.',
                      UntrainedPlaceholderWarning, stacklevel=3)
    elif provenance.get('preliminary'):
        note = provenance.get('note', 'see its provenance')
        warnings.warn(f'stereonet_ros: PRELIMINARY checkpoint: {note}', PreliminaryCheckpointWarning, stacklevel=3)

def checked_image(image: npt.ArrayLike, name: str) -> npt.NDArray[Any]:
    """The image as it travels to the device, checked but not converted.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` (C in 1, 3, 4), C-contiguous: uint8 and uint16 as given, floats as
        float32 (0..255 units).

    Raises:
        InputError: another shape or dtype, an empty image, or non-finite float values.
    """
    array = np.asarray(image)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise InputError(f'{name} image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f'{name} image is empty (shape {array.shape})')
    if array.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(array)
    if array.dtype in (np.float32, np.float64):
        values = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(values).all():
            raise InputError(f'{name} image has non-finite values')
        return values
    raise InputError(f'{name} image has dtype {array.dtype}; expected uint8, uint16 or float (0..255)')


def checked_pair(left: npt.ArrayLike, right: npt.ArrayLike) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Both images as :func:`checked_image` gives them.

    Raises:
        InputError: as :func:`checked_image`, or the two differ in size.
    """
    left_image, right_image = checked_image(left, 'left'), checked_image(right, 'right')
    if left_image.shape[:2] != right_image.shape[:2]:
        raise InputError(f'left and right images differ in size: {left_image.shape[1]}x{left_image.shape[0]} '
                         f'vs {right_image.shape[1]}x{right_image.shape[0]}')
    return left_image, right_image


def padded_size(height: int, width: int, contract: InputContract, config: StereoNetConfig) -> tuple[int, int]:
    """The size the network runs at for an ``height`` x ``width`` input (the module doc's padding policy):
    each side up to the contract's ``pad_multiple``, and at least 2^K."""
    multiple = contract.pad_multiple
    smallest = config.downsampling_factor
    return max(-(-height // multiple) * multiple, smallest), max(-(-width // multiple) * multiple, smallest)


def as_float_image(image: npt.ArrayLike, name: str) -> npt.NDArray[np.float32]:
    """(H, W) or (H, W, C) in 0..255 units, float32; C in 1, 3, 4 (alpha dropped). NumPy, on the host.

    Raises:
        InputError: as :func:`checked_image`.
    """
    array = checked_image(image, name)
    if array.ndim == 3:
        array = array[:, :, 0] if array.shape[2] == 1 else array[:, :, :3]
    if array.dtype == np.uint8:
        return array.astype(np.float32)
    if array.dtype == np.uint16:
        return array.astype(np.float32) * np.float32(255.0 / 65535.0)
    return array  # float32 already


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


@dataclass(frozen=True)
class Inference:
    """The network's answer for one pair, at the input's size and in its pixels.

    Attributes:
        disparity: ``(H, W)`` float32 left-view image shift, pixels of the input.
        confidence: ``(H, W)`` float32 in [0, 1] (:func:`~stereonet_ros.model.stereonet.matching_confidence`;
            after the local search, times :func:`~stereonet_ros.local_search.photometric_agreement`), or ``None``
            when not asked for.
        max_disparity: the largest shift the network can express, pixels of the input: the contract's
            ``max_disparity`` times ``W / w`` (= ``/ scale`` up to the rounding of ``w``).
        network_size: ``(h, w)`` the network ran at (before padding to the contract's multiple).
        scale: the scale the network ran at: the one asked for, or less when ``max_pixels`` needed it.
    """

    disparity: npt.NDArray[np.float32]
    confidence: npt.NDArray[np.float32] | None
    max_disparity: float
    network_size: tuple[int, int]
    scale: float = 1.0


def check_local_search(reach: int) -> int:
    """``reach`` (px) if it is a whole number in [0, :data:`~stereonet_ros.local_search.MAX_REACH_PX`], or
    :data:`~stereonet_ros.local_search.AUTO` (-1: :func:`~stereonet_ros.local_search.reach_for` the device).

    Raises:
        InputError: otherwise (the message gives the value and the range).
    """
    from stereonet_ros.local_search import AUTO, MAX_REACH_PX

    if isinstance(reach, bool) or not isinstance(reach, (int, np.integer)) or not AUTO <= reach <= MAX_REACH_PX:
        raise InputError(f'local search {reach!r} px: must be a whole number in [0, {MAX_REACH_PX}], or {AUTO} '
                         'for the device\'s default')
    return int(reach)


def check_min_confidence(threshold: float) -> float:
    """``threshold`` as a float if it lies in [0, 1], the confidence's range (the node's ``min_confidence``).

    Raises:
        InputError: otherwise, NaN included (the message gives the value and the range).
    """
    value = float(threshold)
    if not 0.0 <= value <= 1.0:
        raise InputError(f'min confidence {threshold!r}: must be in [0, 1]')
    return value


def network_confidence_needed(with_confidence: bool, reach: int, sgbm_fallback: bool, device_type: str,
                              has_confidence: bool, fill_occlusions: bool = False,
                              left_right_check: bool = False) -> bool:
    """Whether a pass must compute the network's confidence: asked for, or for :func:`searched`'s
    :mod:`~stereonet_ros.sgbm_fallback`, :mod:`~stereonet_ros.occlusion_fill` or
    :mod:`~stereonet_ros.left_right_check` (which pick their pixels by it), when the model has one."""
    from stereonet_ros.local_search import reach_for

    return with_confidence or ((sgbm_fallback or fill_occlusions or left_right_check) and has_confidence
                               and reach_for(reach, device_type) > 0)


def searched(inference: Inference, left_image: npt.NDArray[Any], right_image: npt.NDArray[Any],
             reach: int, device_type: str, max_pixels: int, *, sgbm_fallback: bool = True,
             fill_occlusions: bool = True, with_confidence: bool = True, threads: int = 1,
             right_view: Callable[[], Inference] | None = None) -> Inference:
    """``inference`` after :func:`~stereonet_ros.local_search.local_search` within ``reach`` px (0: as it is;
    :data:`~stereonet_ros.local_search.AUTO`: as suits a network on ``device_type``), on the grey (BT.601 luma)
    images of the pair as given: the one place both backends apply it. The search runs at the input's size and
    holds ``2 reach + 1`` correlation maps of it, so a pair of more than ``max_pixels`` pixels (one the network
    ran smaller) is answered as the network gave it: the pixel budget bounds the memory of the whole step. A
    searched answer's confidence is the network's times the answer's
    :func:`~stereonet_ros.local_search.photometric_agreement`. With ``sgbm_fallback`` (and a confidence), the
    pixels the searched answer is unsure of then take SGBM's answer where :mod:`~stereonet_ros.sgbm_fallback`'s
    rules hold, and where any did the search runs again from that answer; the confidence is then the lesser of
    the first one and the network's times the new answer's agreement. With ``right_view`` (and a confidence), the
    left-right check (:mod:`~stereonet_ros.left_right_check`): ``right_view()`` is the network's answer on the
    mirrored pair (called only here, so only when these steps run), the same steps give the right view's answer,
    and the pixels whose match there disagrees are the unsure ones. With ``fill_occlusions`` (and a confidence),
    last, the pixels that answer says are hidden from the right camera (with the check: that disagree) and whose
    confidence is below 0.5 take their row's background (:mod:`~stereonet_ros.occlusion_fill`); then the check
    halves the disagreeing pixels' confidence. ``with_confidence=False`` drops the confidence from the result (a
    pass that computed it only for those steps). ``threads``: the CPU threads the network runs on (0 = every usable
    CPU), as many as the search computes its correlation maps on (fewer on a large input:
    :func:`~stereonet_ros.local_search.workers_within_memory`; the same answer for any number)."""
    from stereonet_ros.local_search import reach_for

    reach = reach_for(reach, device_type)
    result = inference
    if reach > 0 and inference.disparity.size <= max_pixels:
        left_grey, right_grey = (to_contract_color(as_float_image(image, name), 'gray')[0]
                                 for image, name in ((left_image, 'left'), (right_image, 'right')))
        workers = threads if threads > 0 else usable_cpus()
        disparity, confidence = _search_steps(inference, left_grey, right_grey, reach, sgbm_fallback, workers)
        if confidence is not None:
            disagrees = None
            if right_view is not None:
                from stereonet_ros.left_right_check import checked_confidence, mirrored, right_view_disagrees

                # The mirrored pair's left image is the right one: its answer, mirrored back, is the right view's.
                right_disparity, _ = _search_steps(right_view(), mirrored(right_grey), mirrored(left_grey), reach,
                                                   sgbm_fallback, workers)
                disagrees = right_view_disagrees(disparity, mirrored(right_disparity))
            if fill_occlusions:
                from stereonet_ros.occlusion_fill import background_where_hidden

                # By the confidence before the check's factor, which would put every disagreeing pixel below the
                # fill's threshold: filling them all was worse on Aloe (docs/depth_quality.md).
                disparity, _ = background_where_hidden(disparity, confidence, disagrees)
            if disagrees is not None:
                confidence = checked_confidence(confidence, disagrees)
        result = replace(inference, disparity=disparity, confidence=confidence)
    return result if with_confidence else replace(result, confidence=None)


def _search_steps(inference: Inference, left_grey: npt.NDArray[np.float32], right_grey: npt.NDArray[np.float32],
                  reach: int, sgbm_fallback: bool, workers: int
                  ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """(disparity, confidence | None) of :func:`searched`'s search and SGBM fallback on one view's grey pair."""
    from stereonet_ros.local_search import local_search, photometric_agreement

    disparity = local_search(inference.disparity, left_grey, right_grey, reach, inference.max_disparity,
                             workers=workers)
    confidence = inference.confidence
    if confidence is not None:
        agreement = photometric_agreement(disparity, left_grey, right_grey)
        confidence = confidence * agreement
        if sgbm_fallback:
            from stereonet_ros.sgbm_fallback import sgbm_fallback as fallback

            disparity, taken = fallback(disparity, confidence, agreement, left_grey, right_grey,
                                        inference.max_disparity)
            if taken.any():
                # SGBM's answers are starts the search has not seen: searching again carries them to the
                # neighbours SGBM left unanswered and refines them. The confidence only falls, so that every
                # answer from SGBM stays below the fallback's threshold (min_confidence 0.7 removes them all).
                disparity = local_search(disparity, left_grey, right_grey, reach, inference.max_disparity,
                                         workers=workers)
                confidence = np.minimum(confidence, inference.confidence
                                        * photometric_agreement(disparity, left_grey, right_grey))
    return disparity, confidence


def fitted_scale(height: int, width: int, scale: float, max_pixels: int) -> float:
    """``scale``, or the largest smaller one at which the network's ``h * w`` (:func:`scaled_size`) is at most
    ``max_pixels``: the most detail the pixel budget allows.

    Raises:
        InputError: ``max_pixels`` < 1, or even :data:`MIN_INFERENCE_SCALE` gives more than ``max_pixels``
            (the message gives the size, the scale it would need and the budget).
    """
    if max_pixels < 1:
        raise InputError(f'max_pixels {max_pixels}: must be >= 1')

    def pixels(factor: float) -> int:
        h, w = scaled_size(height, width, factor)
        return h * w

    if pixels(scale) <= max_pixels:
        return scale
    candidate = scale * math.sqrt(max_pixels / pixels(scale))
    while candidate >= MIN_INFERENCE_SCALE and pixels(candidate) > max_pixels:
        candidate *= 0.999  # rounding of the sides can leave a few pixels over
    if candidate < MIN_INFERENCE_SCALE:
        raise InputError(f'{width}x{height} image is too large: even at scale {MIN_INFERENCE_SCALE} the network would '
                         f'run on {pixels(MIN_INFERENCE_SCALE)} pixels, more than max_pixels {max_pixels}')
    return candidate


def resize_array(values: npt.NDArray[np.float32], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """:func:`stereonet_ros.inference.resize` in NumPy, for ``(B, C, H, W)`` float32 on the host: ``area``
    when shrinking, bilinear (``align_corners=False``) when enlarging; the same array when the size is
    unchanged. Each axis is resized on its own (both rules are separable)."""
    height, width = values.shape[-2:]
    if (height, width) == tuple(size):
        return values
    shrink = size[0] <= height and size[1] <= width
    axis_resize = _area_axis if shrink else _bilinear_axis
    return axis_resize(axis_resize(values, size[0], axis=-2), size[1], axis=-1)


def bilinear_array(values: npt.NDArray[np.float32], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Bilinear resize (``align_corners=False``, as ``torch.nn.functional.interpolate``) of ``(B, C, H, W)``
    float32, either way: how an answer goes back to the input size."""
    if tuple(values.shape[-2:]) == tuple(size):
        return values
    return _bilinear_axis(_bilinear_axis(values, size[0], axis=-2), size[1], axis=-1)


def _area_axis(values: npt.NDArray[np.float32], length: int, axis: int) -> npt.NDArray[np.float32]:
    # PyTorch's adaptive average: output i averages input [floor(i L / n), ceil((i + 1) L / n)).
    source = values.shape[axis]
    if source == length:
        return values
    index = np.arange(length)
    starts = (index * source) // length
    ends = -((-(index + 1) * source) // length)
    moved = np.moveaxis(values, axis, -1).astype(np.float64)
    sums = np.concatenate((np.zeros(moved.shape[:-1] + (1,)), np.cumsum(moved, axis=-1)), axis=-1)
    averaged = (sums[..., ends] - sums[..., starts]) / (ends - starts)
    return np.ascontiguousarray(np.moveaxis(averaged, -1, axis), dtype=np.float32)


def _bilinear_axis(values: npt.NDArray[np.float32], length: int, axis: int) -> npt.NDArray[np.float32]:
    # Pixel centres: output i samples input (i + 0.5) L / n - 0.5, clamped at 0 below (PyTorch's rule).
    source = values.shape[axis]
    if source == length:
        return values
    # In float32, as PyTorch computes it for float32 images: its rounding of the position shows (up to
    # 0.01 of 255 at 1292 columns) if this is done in float64.
    ratio = np.float32(np.float32(source) / np.float32(length))
    position = np.maximum(ratio * (np.arange(length, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                          np.float32(0.0))
    lower = np.minimum(np.floor(position).astype(np.int64), source - 1)
    upper = np.minimum(lower + 1, source - 1)
    weight = position - lower.astype(np.float32)
    shape = [1] * values.ndim
    shape[axis] = length
    low, high = np.take(values, lower, axis=axis), np.take(values, upper, axis=axis)
    return np.ascontiguousarray(low + (high - low) * weight.reshape(shape), dtype=np.float32)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, e.g. a container's limit), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def node_inference_threads(requested: int) -> int:
    """Threads the node's network runs on: ``requested``, or for 0 every usable CPU.

    The node pairs messages and runs DDS on its executor thread while the network runs on another. With
    every core computing, the executor falls behind under load and the subscriptions' queues overflow, so
    sets are lost before they pair; one core kept free pairs them all, at the cost of the network's speed.
    Measured on 2 cores, ONNX Runtime, 640x480 at 10 Hz for 4 minutes (``benchmarks/soak.py``): 2 threads
    paired 2,129 of 2,400 sets and answered 268 (latency p50 1.04 s); 1 thread paired all 2,400 and
    answered 167 (p50 1.51 s). The node answers the latest pair anyway, so more answers win there and 0
    keeps every core; ``inference_threads`` set to all CPUs but one trades speed for complete pairing.
    """
    if requested < 0:
        raise InputError(f'inference threads {requested}: must be >= 0 (0 = every usable CPU)')
    return requested if requested > 0 else usable_cpus()
