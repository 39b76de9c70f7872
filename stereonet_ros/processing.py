"""What the node does with one synchronized stereo set, without ROS: arrays in, output arrays out.

:class:`StereoProcessor` turns decoded left/right images and the :class:`~stereonet_ros.camera.StereoCamera`
into the arrays behind every output topic, computing only those asked for (:class:`OutputSelection`).
The node only decodes messages with :func:`decode_pair`, calls :meth:`StereoProcessor.process` and
wraps the arrays into messages (``stereonet_ros.ros.messages``). The post-processing alone is the pure
:func:`postprocess`, which ``stereonet-eval-bag --write-bag`` also uses, so its bags hold what the node
would publish.

Validity (docs CONVENTIONS.md). The network predicts a left-view image *shift* ``s``; the published
disparity is ``d = s - (cx_left - cx_right)`` (:meth:`StereoCamera.shift_to_disparity`). A pixel
``(u, v)`` is valid when all of these hold:

1. ``d`` is finite, ``min_disparity <= d <= max_disparity`` (the DisparityImage field: what the network
   can express, capped at ``min_disparity + disparity_range - 1`` when ``disparity_range`` is set) and
   ``d > 0`` with ``f * T / d`` finite in float32 (a finite, positive depth);
2. ``u - s >= 0``: its match lies inside the right image (a point left of the right camera's view
   cannot be matched; the network's value there is a guess);
3. with ``min_confidence > 0``: ``confidence >= min_confidence``.

Invalid pixels are written as ``min_disparity - 1`` in the disparity (what stereo_image_proc writes:
OpenCV's ``minDisparity - 1``, so its consumers keep working), NaN in depth and NaN points.

``valid_window`` is the region where the network could see its whole candidate range: columns
``u >= max_shift`` (every candidate's match inside the right image), all rows. For an image
narrower than ``max_shift`` it is empty (``x_offset = width``, ``width = height = 0``).

Confidence is :func:`~stereonet_ros.model.stereonet.matching_confidence`: ``1 - H(p) / log(D)`` with
``p = softmax(-cost)`` the soft-argmin distribution over the ``D`` candidates at the cost-volume
resolution, resized bilinearly to the input: 1 = one candidate holds all the probability, 0 = the
distribution is uniform. After the local search (``local_search_px``) it is multiplied by the searched
answer's :func:`~stereonet_ros.local_search.photometric_agreement` (``(1 + ZNCC) / 2`` of its window: 0.5 for a
plain one), so that an answer the images contradict ranks low; where the SGBM fallback (``sgbm_fallback``) took
answers and the search ran again, it is the lesser of that and the network's times the final answer's agreement.
It ranks pixels by how decided the network was and how well the images agree; it is not a calibrated probability
of being correct.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from stereonet_ros.camera import StereoCamera, check_image_size
from stereonet_ros.cpu_allocator import tune_allocator_for_inference
from stereonet_ros.geometry import CloudBuffer, disparity_to_depth, pointcloud2_buffer, reproject_to_3d
from stereonet_ros.image_codec import ImageLike, canonical_encoding, to_model_input
from stereonet_ros.image_io import colorize_disparity
from stereonet_ros.inference_common import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from stereonet_ros.inference import Predictor
    from stereonet_ros.onnx_backend import OnnxPredictor
from stereonet_ros.node_config import NodeConfig

DEVICE_ERROR_MARKERS = ('CUDA error', 'CUDA out of memory', 'CUDA driver', 'CUDNN_STATUS', 'cuDNN error',
                        'CUBLAS_STATUS', 'device-side assert')
"""Texts by which a plain ``RuntimeError`` from torch says the accelerator failed (older torch raises
these as ``RuntimeError``; newer as ``torch.AcceleratorError``)."""


ColourSource = npt.NDArray[np.uint8] | Callable[[], npt.NDArray[np.uint8] | None] | None
"""Colours for the cloud: an ``(H, W, 3)`` uint8 array, a function returning one (or None), or None."""


class StereoInputError(ValueError):
    """A decoded stereo pair the processor cannot use (e.g. left and right sizes differ)."""


@dataclass(frozen=True)
class OutputSelection:
    """Which outputs to compute (the node sets a flag when the topic has a subscriber)."""

    disparity: bool = True
    depth: bool = True
    points: bool = True
    confidence: bool = True
    disparity_color: bool = True

    @property
    def any(self) -> bool:
        """Whether anything is wanted; when not, the model does not run."""
        return self.disparity or self.depth or self.points or self.confidence or self.disparity_color

    def describe(self) -> str:
        names = [name for name in ('disparity', 'depth', 'points', 'confidence', 'disparity_color')
                 if getattr(self, name)]
        return ', '.join(names) or 'nothing'


@dataclass(frozen=True)
class ValidWindow:
    """``DisparityImage.valid_window`` (a RegionOfInterest), pixels."""

    x_offset: int
    y_offset: int
    width: int
    height: int


@dataclass
class StereoOutputs:
    """The arrays of one processed pair; ``None`` for outputs not asked for.

    Attributes:
        disparity: ``(H, W)`` float32, pixels, DisparityImage convention; invalid = ``min_disparity - 1``.
        valid: ``(H, W)`` bool, the validity rule of the module doc.
        min_disparity, max_disparity, delta_d: the DisparityImage fields, pixels.
        valid_window: the DisparityImage field.
        depth: ``(H, W)`` float32 metres (REP 118), NaN invalid.
        cloud: stereo_image_proc's organized PointCloud2 layout (NaN points invalid).
        confidence: ``(H, W)`` float32 in [0, 1].
        disparity_color: ``(H, W, 3)`` uint8 RGB (turbo from min to max disparity, invalid black).
        timings: seconds per stage: ``model`` (preprocess + network + resize back), ``post`` (validity,
            depth, cloud, colour), and within ``post``: ``post_colours`` (fetching the cloud's colours),
            then :func:`postprocess`'s own ``post_validity``, ``post_depth``, ``post_cloud`` (reprojection
            and the PointCloud2 buffer) and ``post_colour_map`` (the stages computed).
    """

    disparity: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]
    min_disparity: float
    max_disparity: float
    delta_d: float
    valid_window: ValidWindow
    depth: npt.NDArray[np.float32] | None = None
    cloud: CloudBuffer | None = None
    confidence: npt.NDArray[np.float32] | None = None
    disparity_color: npt.NDArray[np.uint8] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    network_scale: float = 1.0
    """The scale the network ran at: ``inference_scale``, or less when ``max_pixels`` required it."""


def to_rgb8(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """``(H, W, 3)`` RGB of any decoded dtype -> uint8 for the cloud's ``rgb`` field.

    uint16 keeps the high byte (``x >> 8``, full scale to full scale); float (32FC1, taken in 0..255
    units as the predictor takes it) is rounded and clipped.
    """
    out: npt.NDArray[np.uint8]
    if image.dtype == np.uint8:
        out = image
    elif image.dtype == np.uint16:
        out = (image >> 8).astype(np.uint8)
    else:
        out = np.clip(np.rint(np.nan_to_num(image, nan=0.0)), 0, 255).astype(np.uint8)
    return out


ONE_CHANNEL_ENCODINGS = frozenset({'mono8', 'mono16', '32FC1'})
"""Encodings decoded to ``(H, W)``; every other supported one is colour, decoded to ``(H, W, 3)`` RGB."""


def decode_pair(left: ImageLike, right: ImageLike,
                want_rgb: bool) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[np.uint8] | None]:
    """Decode the two images into what the predictor takes, and the left colours if wanted.

    Converted as little as possible on the host: one-channel encodings stay ``(H, W)`` and colour ones
    become ``(H, W, 3)`` RGB, each in its dtype (uint8 stays uint8), whatever the checkpoint's colour.
    :class:`~stereonet_ros.inference.Predictor` converts them on its device with the package's one BT.601
    luma, so the node and ``stereonet-infer`` give the network the same input for the same pixels.

    Args:
        left, right: image messages (any supported encoding).
        want_rgb: also return the left image as ``(H, W, 3)`` uint8 RGB (for ``points2``'s rgb).

    Raises:
        ImageCodecError: an unsupported encoding or a malformed message (the message says which).
    """
    left_array, right_array = _decoded(left), _decoded(right)
    rgb = None
    if want_rgb:
        rgb = to_rgb8(left_array if left_array.ndim == 3 else np.repeat(left_array[:, :, np.newaxis], 3, axis=2))
    return left_array, right_array, rgb


def _decoded(image: ImageLike) -> npt.NDArray[Any]:
    one_channel = canonical_encoding(str(image.encoding)) in ONE_CHANNEL_ENCODINGS
    return to_model_input(image, 'gray' if one_channel else 'rgb')


def decode_colours(image: ImageLike) -> npt.NDArray[np.uint8]:
    """An image message (any supported encoding) as ``(H, W, 3)`` uint8 RGB, the cloud's colours.

    Raises:
        ImageCodecError: an unsupported encoding or a malformed message.
    """
    return to_rgb8(to_model_input(image, 'rgb'))


class StereoProcessor:
    """A predictor plus the post-processing of the node; see the module doc for validity.

    Args:
        predictor: the loaded network (device and precision chosen there).
        fallback_reason: why this processor replaced one on a failed device (:class:`DeviceGuard`), or None.
    """

    def __init__(self, predictor: Predictor | OnnxPredictor, fallback_reason: str | None = None) -> None:
        self.predictor = predictor
        self.fallback_reason = fallback_reason
        # Post-processing allocates a dozen frame-sized arrays per pair on the host whatever runs the network
        # (CUDA, ONNX Runtime): without the allocator's reuse each is fresh pages from the kernel. 960x540,
        # every output: 62.6 ms untuned, 32.0 ms tuned (cpu_allocator's module doc says what it costs).
        tune_allocator_for_inference()

    def infer(self, left: npt.ArrayLike, right: npt.ArrayLike, scale: float = 1.0, with_confidence: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS, local_search: int = 0, sgbm_fallback: bool = True,
              fill_occlusions: bool = True, left_right_check: bool = False
              ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None, float]:
        """:meth:`Predictor.infer <stereonet_ros.inference.Predictor.infer>` as a tuple:
        ``(shift, confidence | None, max_shift)``, all at the input's size and in its pixels.

        ``shift`` is the ``(H, W)`` float32 left-view image shift; ``max_shift`` the largest shift the
        network can express. Scaling, colour conversion, confidence, the local search and the SGBM fallback are the
        predictor's: the node, the CLIs and the evaluators run the same code.

        Raises:
            InputError: the images cannot be used (shapes, dtypes, sizes differ), or ``scale`` is out of range.
        """
        answer = self.predictor.infer(left, right, scale=scale, with_confidence=with_confidence, max_pixels=max_pixels,
                                      local_search=local_search, sgbm_fallback=sgbm_fallback,
                                      fill_occlusions=fill_occlusions, left_right_check=left_right_check)
        return answer.disparity, answer.confidence, answer.max_disparity

    def process(self, left: npt.ArrayLike, right: npt.ArrayLike, camera: StereoCamera, config: NodeConfig,
                outputs: OutputSelection, rgb: ColourSource = None) -> StereoOutputs:
        """One pair -> the selected outputs' arrays.

        Args:
            left, right: decoded images (``decode_pair``), ``(H, W)`` or ``(H, W, 3)``.
            camera: the pair's camera model; its size must equal the images'.
            config: the node's parameters (``min_disparity``, ``min_confidence``, ``inference_scale``,
                ``local_search_px``, ``sgbm_fallback``, ``fill_occlusions``, ``left_right_check``, ``max_pixels``,
                ``use_color``,
                ``avoid_point_cloud_padding`` are used).
            outputs: which outputs to compute.
            rgb: ``(H, W, 3)`` uint8 left colours for the cloud, or ``None`` (no rgb field), or a function
                returning either, called only when the cloud takes colour and only after the network ran
                (so that a colour image published beside the pair has had time to arrive).

        Raises:
            StereoInputError: left and right sizes differ.
            CameraModelError: the images' size differs from the camera infos'.
            InputError: the predictor refuses the images.
        """
        left_array, right_array = np.asarray(left), np.asarray(right)
        if left_array.shape[:2] != right_array.shape[:2]:
            raise StereoInputError(f'left image is {left_array.shape[1]}x{left_array.shape[0]} but right is '
                                   f'{right_array.shape[1]}x{right_array.shape[0]} (WxH)')
        height, width = left_array.shape[:2]
        check_image_size(camera, height, width)
        start = time.perf_counter()
        want_confidence = outputs.confidence or config.min_confidence > 0.0
        answer = self.predictor.infer(left_array, right_array, scale=config.inference_scale,
                                      with_confidence=want_confidence, max_pixels=config.max_pixels,
                                      local_search=config.local_search_px, sgbm_fallback=config.sgbm_fallback,
                                      fill_occlusions=config.fill_occlusions,
                                      left_right_check=config.left_right_check)
        shift, confidence, max_shift = answer.disparity, answer.confidence, answer.max_disparity
        model_done = time.perf_counter()

        colours = rgb
        if callable(colours):  # asked for only now, and only when the cloud takes colour
            colours = colours() if outputs.points and config.use_color else None
        colours_done = time.perf_counter()
        result = postprocess(shift, confidence, max_shift, camera, config, outputs, colours)
        result.timings.update(model=model_done - start, post=time.perf_counter() - model_done,
                              post_colours=colours_done - model_done)
        result.network_scale = answer.scale
        return result


def confident(confidence: npt.NDArray[np.float32], min_confidence: float) -> npt.NDArray[np.bool_]:
    """The pixels ``min_confidence`` keeps (the node's rule): every one at 0, else those whose confidence reaches
    it."""
    if min_confidence <= 0.0:
        return np.ones(confidence.shape, bool)
    return confidence >= np.float32(min_confidence)


def with_confident_only(shift: npt.NDArray[np.float32], confidence: npt.NDArray[np.float32] | None,
                        min_confidence: float) -> npt.NDArray[np.float32]:
    """``shift`` with a hole (NaN) wherever :func:`confident` drops the pixel, as the evaluators score the node's
    ``min_confidence`` (``stereonet-evaluate`` and ``stereonet-eval-bag --min-confidence``); as it is without a
    confidence."""
    if confidence is None:
        return shift
    return np.where(confident(confidence, min_confidence), shift, np.float32(np.nan)).astype(np.float32)


def postprocess(shift: npt.NDArray[np.float32], confidence: npt.NDArray[np.float32] | None, max_shift: float,
                camera: StereoCamera, config: NodeConfig, outputs: OutputSelection,
                rgb: npt.NDArray[np.uint8] | None = None) -> StereoOutputs:
    """The node's post-processing of one network answer: validity, DisparityImage fields, depth, cloud, colour.

    Pure (no model, no ROS): the node and ``stereonet-eval-bag --write-bag`` both publish what this returns,
    so a bag written offline holds what the node would have published with the same parameters.

    Args:
        shift: ``(H, W)`` float32 left-view image shift, input pixels; NaN = no value.
        confidence: ``(H, W)`` float32 in [0, 1], or ``None`` (then ``min_confidence`` is not applied).
        max_shift: the largest shift the network can express, input pixels.
        camera: the pair's camera model (its size must equal ``shift``'s).
        config: the node's parameters (``min_disparity``, ``min_confidence``, ``use_color``,
            ``avoid_point_cloud_padding`` are used).
        outputs: which outputs to compute (``timings`` gets the ``post_*`` stages computed).
        rgb: ``(H, W, 3)`` uint8 left colours for the cloud, or ``None`` (no rgb field).

    Raises:
        StereoInputError: ``rgb`` is not the size of ``shift``.
    """
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:  # seconds since the last lap, under post_<stage>
        nonlocal clock
        now = time.perf_counter()
        timings[f'post_{stage}'], clock = now - clock, now

    height, width = shift.shape
    disparity = camera.shift_to_disparity(shift)  # (H, W) float32, DisparityImage convention
    columns = np.arange(width, dtype=np.float32)[np.newaxis, :]  # (1, W)
    max_disparity = max_shift - camera.principal_offset
    if config.disparity_range > 0:  # stereo_image_proc's search range: its largest is min + range - 1
        max_disparity = min(max_disparity, config.min_disparity + config.disparity_range - 1.0)
    with np.errstate(invalid='ignore', over='ignore', divide='ignore'):
        valid = (np.isfinite(disparity) & (disparity >= np.float32(config.min_disparity)) & (disparity > 0.0)
                 & (disparity <= np.float32(max_disparity)) & (columns - shift >= 0.0))
        if confidence is not None:
            valid &= confident(confidence, config.min_confidence)
        # A depth f*T/d past float32 (d tiny but > 0), or a point's X or Y past it (a far principal
        # point), would be published as inf: not a measurement.
        depth = np.float32(camera.focal * camera.baseline) / disparity  # (H, W) float32
        x_per_z = (columns - np.float32(camera.cx)) / np.float32(camera.fx)  # (1, W)
        y_per_z = (np.arange(height, dtype=np.float32)[:, np.newaxis] - np.float32(camera.cy)) / np.float32(camera.fy)
        valid &= np.isfinite(depth) & np.isfinite(depth * x_per_z) & np.isfinite(depth * y_per_z)
    invalid_value = np.float32(config.min_disparity - 1.0)
    published = np.where(valid, disparity, invalid_value).astype(np.float32)
    x_offset = min(int(math.ceil(max_shift)), width)
    window = ValidWindow(x_offset, 0, width - x_offset, height if x_offset < width else 0)
    result = StereoOutputs(
        disparity=published, valid=valid, min_disparity=float(config.min_disparity),
        max_disparity=float(max_disparity),
        # The values are continuous (soft argmin, refinement, bilinear resize): the only step is
        # float32's, taken at the largest disparity (where it is coarsest).
        delta_d=float(np.spacing(np.float32(max(abs(max_disparity), 1.0)))),
        valid_window=window,
        confidence=confidence if outputs.confidence else None, timings=timings)
    masked = None
    if outputs.depth or outputs.points or outputs.disparity_color:
        masked = np.where(valid, disparity, np.float32(np.nan))  # (H, W), NaN invalid
    lap('validity')
    if masked is not None and outputs.depth:
        result.depth = disparity_to_depth(masked, camera.focal, camera.baseline, config.min_disparity)
        lap('depth')
    if masked is not None and outputs.points:
        points = reproject_to_3d(masked, camera, config.min_disparity)  # (H, W, 3)
        colours = rgb if config.use_color else None
        if colours is not None and colours.shape[:2] != (height, width):
            raise StereoInputError(f'colour image is {colours.shape[1]}x{colours.shape[0]}, '
                                   f'the pair {width}x{height}')
        result.cloud = pointcloud2_buffer(points, colours, config.avoid_point_cloud_padding)
        lap('cloud')
    if masked is not None and outputs.disparity_color:
        # From the smallest disparity the node can publish: a negative floor (stereo_image_proc's range)
        # would spend the colour map on values that are never valid here (d <= 0 has no depth).
        floor = max(config.min_disparity, 0.0)
        result.disparity_color = colorize_disparity(masked, vmin=floor, vmax=max(max_disparity, floor))
        lap('colour_map')
    return result


def is_device_error(error: BaseException) -> bool:
    """Whether ``error`` is the accelerator failing (out of memory, a faulted or lost device, a driver or
    cuDNN error), which a retry or another device may get past, rather than a problem with the input."""
    torch = sys.modules.get('torch')
    if torch is None:  # an ONNX Runtime node never loads PyTorch, so no PyTorch error can have happened
        return False

    if isinstance(error, torch.OutOfMemoryError):  # torch.cuda.OutOfMemoryError is this class
        return True
    accelerator_error = getattr(torch, 'AcceleratorError', None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in DEVICE_ERROR_MARKERS)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0] if lines else ""}'


class DeviceGuard:
    """Carries the node's processing through accelerator failures; it never lets one stop the node.

    A device error (:func:`is_device_error`) on a pair: a warning (``warn``, which the node throttles),
    the predictor's device state reset (:meth:`~stereonet_ros.inference.Predictor.reset_device_state`:
    captured graphs dropped, cached memory freed) and the pair tried once more. When the retry fails
    with a device error too, processing moves to the CPU (:meth:`~stereonet_ros.inference.Predictor.on_cpu`)
    for good: ``report`` says so once (the node logs an ERROR), and the new processor carries the reason in
    ``fallback_reason`` (the node's diagnostics turn ERROR). Other errors are the caller's: a bad input
    is not retried.

    Args:
        warn: ``warn(kind, text)``, for each failure that is retried.
        report: ``report(text)``, once per move to the CPU.
    """

    def __init__(self, warn: Callable[[str, str], None], report: Callable[[str], None]) -> None:
        self._warn = warn
        self._report = report
        self.retries = 0
        """Pairs tried again after a device error."""

    def process(self, processor: StereoProcessor, *args: Any, **kwargs: Any) -> tuple[StereoOutputs, StereoProcessor]:
        """``processor.process(*args, **kwargs)`` through device errors.

        Returns:
            The outputs, and the processor that made them: ``processor``, or after a move to the CPU the
            CPU one, which the caller uses from then on.

        Raises:
            Whatever :meth:`StereoProcessor.process` raises that is not a device error; a device error
            when the failing device is the CPU already.
        """
        try:
            return processor.process(*args, **kwargs), processor
        except Exception as err:  # noqa: BLE001 - sorted here: device errors are retried, the rest re-raised
            if not is_device_error(err):
                raise
            first = err
        device = processor.predictor.device
        self.retries += 1
        self._warn('device-error', f'{device} failed on a pair ({_first_line(first)}); trying the pair once more')
        processor.predictor.reset_device_state()
        try:
            return processor.process(*args, **kwargs), processor
        except Exception as err:  # noqa: BLE001 - as above
            if not is_device_error(err) or device.type == 'cpu':
                raise
            second = err
        reason = (f'{device} failed twice in a row ({_first_line(second)}); moved to the CPU at '
                  f'{time.strftime("%Y-%m-%d %H:%M:%S")}, much slower: fix the device, then set the device '
                  'parameter again to move back')
        self._report(reason)
        fallback = StereoProcessor(processor.predictor.on_cpu(), fallback_reason=reason)
        return fallback.process(*args, **kwargs), fallback
