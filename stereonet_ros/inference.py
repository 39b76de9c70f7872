"""Run a StereoNet checkpoint on image arrays: preprocess, pad, run, unpad.

Preprocessing follows the checkpoint's :class:`~stereonet_ros.model.checkpoint.InputContract`:

1. Values to 0..255 units: uint8 as is, uint16 times 255/65535, float arrays taken as 0..255.
2. Colour to what the weights want: RGB -> gray with ITU-R BT.601 luma (0.299 R + 0.587 G +
   0.114 B, what OpenCV and cv_bridge use); gray -> RGB by repeating the channel; RGBA drops alpha.
3. ``(x - mean) / std`` per view and channel.

One colour conversion everywhere: RGB becomes float32 luma (:func:`~stereonet_ros.image_codec.bt601_luma`,
or the same operations on the device), never rounded to uint8. The training data (``stereonet_ros.data``)
are made that way, and the node hands the predictor a colour message's RGB pixels as they are
(:func:`~stereonet_ros.processing.decode_pair`), so an ``rgb8`` message and the same pixels read from a
PNG give the network the same input bit for bit.

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

Where the work happens: the images travel to the device as they came (uint8 stays uint8, a quarter of
float32's bytes; uint16 as its bits) and steps 1-3 run there, in float32, with the same operations in the
same order as :func:`as_float_image`, :func:`to_contract_color` and the normalization, so the network's input
is the one the NumPy steps give (tested). On CUDA:

- cuDNN picks its fastest algorithm per shape (``cudnn.benchmark``): the node's size never changes;
- ``fp32`` means float32 (no TF32 convolutions), so that it matches the CPU within 0.01 px;
- nothing in the pass waits for the host, so the second call at one input size (shape, dtype, scale,
  confidence) captures the whole pass, upload buffers to answer, as a CUDA graph that every later call
  at that size replays (:data:`MAX_CAPTURED_SIZES` kept); the first call at a size, and every call on
  the CPU, runs eagerly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from stereonet_ros.cpu_allocator import release_free_memory, tune_allocator_for_inference
from stereonet_ros.image_codec import BT601_WEIGHTS
# The backend-independent rules and types, re-exported: this module stays where callers import them from.
from stereonet_ros.inference_common import (DEFAULT_CHECKPOINT, DEFAULT_MAX_PIXELS, MAX_INFERENCE_SCALE,  # noqa: F401
                                            MIN_INFERENCE_SCALE, CheckpointFacts, Inference, InputError, Precision,
                                            PreliminaryCheckpointWarning, UntrainedPlaceholderWarning,
                                            as_float_image, check_inference_scale, check_local_search,
                                            check_min_confidence, checked_image, checked_pair, fitted_scale,
                                            network_confidence_needed, padded_size, scaled_size, searched,
                                            to_contract_color, warn_about_provenance)
from stereonet_ros.left_right_check import mirrored
from stereonet_ros.model.checkpoint import Checkpoint, InputContract, load_checkpoint
from stereonet_ros.model.stereonet import (StereoNet, StereoNetConfig, fold_batchnorm, matching_confidence,
                                           to_channels_last)
from stereonet_ros.precision import cpu_has_native_bf16

if TYPE_CHECKING:
    from stereonet_ros.onnx_backend import OnnxPredictor

PLACEHOLDER_CONFIG = StereoNetConfig(in_channels=1, max_disparity=192, disparity_grid='exact',
                                     cost_volume_border='replicate')
PLACEHOLDER_CONTRACT = InputContract(color='gray', left_mean=(127.5,), left_std=(127.5,), right_mean=(127.5,),
                                     right_std=(127.5,), max_disparity=192.0, pad_multiple=8)


MAX_CAPTURED_SIZES = 2
"""Input sizes whose CUDA graph a predictor keeps (the least recently used is dropped): the node runs one
size; an evaluator alternating two sizes keeps both."""


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


def without_refiners(checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint`` with no refiners: its answer is its soft argmin carried to the input size guided by the
    image (:func:`~stereonet_ros.model.stereonet.guided_to`).

    On a real camera the refiner is most of the time (two thirds at 741x500 on a CPU) and the coarse stage
    most of the accuracy: the coarse stage alone on the pair enlarged twice (``inference_scale`` 2) costs 1.4
    times what the whole network does at 1 and scores far better (README, accuracy against time).
    """
    from stereonet_ros.model.surgery import with_refiner_count

    config, state = with_refiner_count(checkpoint.config, checkpoint.state_dict, 0)
    provenance = {**checkpoint.provenance, 'refiners_removed': checkpoint.config.k_refinement_layers}
    return dataclasses.replace(checkpoint, config=config, state_dict=state, provenance=provenance)


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


def _to_device(array: npt.NDArray[Any], device: torch.device) -> torch.Tensor:
    """A :func:`checked_image` array on ``device``, in its own dtype (uint16 travels as its int16 bits:
    torch's uint16 lacks most kernels)."""
    tensor = torch.from_numpy(array.view(np.int16) if array.dtype == np.uint16 else array)
    return tensor.to(device, non_blocking=True)


def _image_on_device(raw: torch.Tensor, color: Literal['gray', 'rgb']) -> torch.Tensor:
    """Steps 1 and 2 of the module doc on the device: ``(H, W)`` or ``(H, W, C)`` uint8 / int16 (uint16 bits) /
    float32 -> ``(C', H, W)`` float32 in 0..255 units, C' the contract's channels.

    The operations and their order are :func:`as_float_image`'s and :func:`to_contract_color`'s (float32
    products and sums, luma summed left to right), so the values equal the NumPy ones.
    """
    if raw.dtype == torch.uint8:
        values = raw.float()
    elif raw.dtype == torch.int16:
        values = (raw.int() & 0xFFFF).float() * (255.0 / 65535.0)  # the uint16 value, then as as_float_image
    else:
        values = raw
    if values.dim() == 3:
        values = values[:, :, 0] if values.shape[2] == 1 else values[:, :, :3]  # alpha dropped
    if color == 'gray':
        if values.dim() == 3:
            red, green, blue = BT601_WEIGHTS
            values = red * values[:, :, 0] + green * values[:, :, 1] + blue * values[:, :, 2]  # (H, W)
        return values.unsqueeze(0)  # (1, H, W)
    if values.dim() == 2:
        return values.unsqueeze(0).expand(3, -1, -1)  # (3, H, W)
    return values.permute(2, 0, 1)  # (3, H, W)


_Answer = tuple[torch.Tensor, torch.Tensor | None]
_CaptureKey = tuple[Any, ...]


class CapturedPass:
    """One fixed-size pass captured as a CUDA graph: raw images in static device buffers, answer out.

    Calling it with host arrays copies them through pinned staging buffers (asynchronous copies on the
    stream the graph replays on), replays, and waits once, for the answer. :meth:`replay` alone reruns the
    pass on the images already in the device buffers (benchmarks time that).
    """

    def __init__(self, device_pass: Callable[[torch.Tensor, torch.Tensor], _Answer],
                 left: npt.NDArray[Any], right: npt.NDArray[Any], device: torch.device) -> None:
        self._device = device
        self._inputs = [_to_device(array, device).clone() for array in (left, right)]
        self._staging = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in self._inputs]
        # Warm-up on a side stream first, as the CUDA graph documentation asks (lazy initialization
        # must not happen during capture); cuDNN has chosen its algorithms in the eager call before.
        side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            device_pass(*self._inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            outputs = device_pass(*self._inputs)
        self._outputs = [t for t in outputs if t is not None]
        self._with_confidence = outputs[1] is not None
        self._host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in self._outputs]

    def __call__(self, left: npt.NDArray[Any], right: npt.NDArray[Any]) -> list[npt.NDArray[np.float32]]:
        stream = torch.cuda.current_stream(self._device)
        for array, staging, static in zip((left, right), self._staging, self._inputs, strict=True):
            staging.numpy()[...] = array.view(np.int16) if array.dtype == np.uint16 else array
            static.copy_(staging, non_blocking=True)
        self.replay()
        for host, output in zip(self._host, self._outputs, strict=True):
            host.copy_(output, non_blocking=True)
        stream.synchronize()  # the staging buffers are free again, the answer is on the host
        return [host[0, 0].numpy().copy() for host in self._host]

    def replay(self) -> None:
        """Run the captured pass again on the device buffers' images (asynchronous: nothing waits)."""
        self._graph.replay()


class Predictor(CheckpointFacts):
    """A checkpoint ready to turn image pairs into left-view disparity.

    >>> predictor = Predictor.from_checkpoint()          # doctest: +SKIP
    >>> disparity = predictor.predict(left, right)       # doctest: +SKIP  (H, W) float32, pixels
    >>> answer = predictor.infer(left, right, scale=1.5, with_confidence=True)  # doctest: +SKIP

    Args:
        checkpoint: the weights and their input contract.
        device: 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'.
        precision: 'fp32', 'bf16' (CUDA, or a CPU with native bfloat16), 'fp16' (CUDA).
        cuda_graphs: on CUDA, replay a captured graph from the second call at an input size on (the
            module doc); False runs every call eagerly (benchmarks compare the two).
    """

    def __init__(self, checkpoint: Checkpoint, device: str = 'auto', precision: Precision = 'fp32', *,
                 cuda_graphs: bool = True) -> None:
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
        self._last_pixels = 0  # network pixels of the previous pair (a much larger one is followed by a trim)
        if checkpoint.config.in_channels != checkpoint.contract.channels:
            raise InputError(f'checkpoint model takes {checkpoint.config.in_channels} channel(s) but its input '
                             f'contract is {checkpoint.contract.color!r}')
        self.model: StereoNet = checkpoint.build_model()
        """The network with the checkpoint's weights (eval mode, CPU), as saved."""
        if self.device.type == 'cpu':
            tune_allocator_for_inference()
        # The network that runs: BatchNorm folded, channels-last, on the device.
        self._runner = to_channels_last(fold_batchnorm(self.model)).to(self.device)
        contract = checkpoint.contract
        # (C, 1, 1) float32 on the device, made once: a host-to-device copy inside a pass would stall it.
        self._normalization = {
            side: (torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1).to(self.device),
                   torch.tensor(std, dtype=torch.float32).view(-1, 1, 1).to(self.device))
            for side, mean, std in (('left', contract.left_mean, contract.left_std),
                                    ('right', contract.right_mean, contract.right_std))}
        self.cuda_graphs = cuda_graphs and self.device.type == 'cuda'
        self._captured: OrderedDict[_CaptureKey, CapturedPass] = OrderedDict()
        self._previous_key: _CaptureKey | None = None
        self.capture_failures: dict[_CaptureKey, str] = {}
        """Input sizes whose capture failed (they run eagerly), with the error."""
        warn_about_provenance(checkpoint.provenance)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str] | None = None, device: str = 'auto',
                        precision: Precision = 'fp32', *, cuda_graphs: bool = True,
                        refine: bool = True) -> Predictor | OnnxPredictor:
        """Load ``path`` (ours or a seed ``.ckpt``); ``None`` = the bundled default checkpoint. A path ending in
        ``.onnx`` (``stereonet-export``) runs in ONNX Runtime instead: an
        :class:`~stereonet_ros.onnx_backend.OnnxPredictor`, with the same ``infer``.

        ``refine=False`` drops the refiners (:func:`without_refiners`): the answer is the cost volume's soft
        argmin carried to the input size guided by the image, for about a third of the time at a given size.

        While no trained default is bundled, ``None`` gives the untrained placeholder and warns.

        Raises:
            CheckpointError: the file cannot be used (message says why).
            InputError: bad device or precision, or ``refine=False`` with an ``.onnx`` file.
        """
        if path is not None and Path(path).suffix.lower() == '.onnx':
            if not refine:
                raise InputError(f'{path}: an ONNX model runs as it was exported; to run without refiners, pass '
                                 'the checkpoint, or export it with stereonet-export --no-refine')
            from stereonet_ros.onnx_backend import OnnxPredictor

            return OnnxPredictor(path, device=device, precision=precision)
        if path is None:
            bundled = DEFAULT_CHECKPOINT.exists()
            checkpoint = load_checkpoint(DEFAULT_CHECKPOINT) if bundled else placeholder_checkpoint()
        else:
            checkpoint = load_checkpoint(path)
        if not refine:
            checkpoint = without_refiners(checkpoint)
        return cls(checkpoint, device=device, precision=precision, cuda_graphs=cuda_graphs)

    @property
    def has_confidence(self) -> bool:
        """Whether :meth:`infer` can give confidence: always (an ONNX model only when exported with it)."""
        return True

    @property
    def captured_sizes(self) -> list[tuple[int, int]]:
        """``(H, W)`` of the inputs whose pass is replayed as a CUDA graph, oldest first."""
        return [key[0][:2] for key in self._captured]

    def on_cpu(self) -> Predictor:
        """The same checkpoint on the CPU (the node's refuge when its accelerator fails): float32, or bf16 where
        this predictor ran bf16 and the CPU computes it natively. Warns about nothing: this one did already."""
        precision: Precision = 'bf16' if self.precision == 'bf16' and cpu_has_native_bf16() else 'fp32'
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UntrainedPlaceholderWarning)
            warnings.simplefilter('ignore', PreliminaryCheckpointWarning)
            return Predictor(self.checkpoint, device='cpu', precision=precision)

    def reset_device_state(self) -> None:
        """Drop the captured graphs and (CUDA) the allocator's cached blocks: after a device error, the
        retry starts from eager calls and as much free memory as there is."""
        self._captured.clear()
        self._previous_key = None
        if self.device.type == 'cuda':
            with contextlib.suppress(RuntimeError):  # a lost device refuses this too; the retry will say so
                torch.cuda.empty_cache()

    def _device_settings(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type != 'cuda':
            return contextlib.nullcontext()
        # cuDNN autotuning per shape; TF32 convolutions only where the precision is reduced anyway.
        return torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False,
                                          allow_tf32=self.precision != 'fp32')

    def _check_pair(self, left: npt.ArrayLike, right: npt.ArrayLike) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        return checked_pair(left, right)

    def _normalized(self, raw: torch.Tensor, side: Literal['left', 'right']) -> torch.Tensor:
        """A raw image on the device -> ``(1, C, H, W)`` float32, normalized (step 3) for ``side``."""
        mean, std = self._normalization[side]
        return ((_image_on_device(raw, self.contract.color) - mean) / std).unsqueeze(0)

    def preprocess(self, left: npt.ArrayLike, right: npt.ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Two images -> normalized ``(1, C, H, W)`` float32 tensors on the device, unpadded.

        Raises:
            InputError: as :meth:`infer`.
        """
        left_image, right_image = self._check_pair(left, right)
        with torch.no_grad():
            return (self._normalized(_to_device(left_image, self.device), 'left'),
                    self._normalized(_to_device(right_image, self.device), 'right'))

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the network runs at for an ``height`` x ``width`` input (see the padding policy)."""
        return padded_size(height, width, self.contract, self.config)

    def run(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Normalized ``(B, C, H, W)`` tensors -> ``(B, 1, H, W)`` float32 disparity: pads, runs, unpads."""
        with self._device_settings():
            disparity, _ = self._run(left, right, with_confidence=False)
        return disparity

    def run_with_confidence(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`run`, plus ``(B, 1, H, W)`` confidence in [0, 1]
        (:func:`~stereonet_ros.model.stereonet.matching_confidence` of the cost volume, resized bilinearly)."""
        with self._device_settings():
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
        # No autocast weight cache: each weight is cast once per pass anyway, and a cache would outlive a
        # captured graph's pass.
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=dtype,
                                                    enabled=self.precision != 'fp32', cache_enabled=False):
            if not with_confidence:
                return self._runner(left, right)[:, :, :height, :width].float(), None
            output = self._runner(left, right, with_pyramid=True)
            confidence = F.interpolate(matching_confidence(output.cost), size=left.shape[-2:], mode='bilinear',
                                       align_corners=self.config.align_corners)
        return output.disparity[:, :, :height, :width].float(), confidence[:, :, :height, :width].float()

    def _device_pass(self, left_raw: torch.Tensor, right_raw: torch.Tensor, network_size: tuple[int, int],
                     with_confidence: bool) -> _Answer:
        """Raw images on the device -> ``(1, 1, H, W)`` disparity in input pixels (and confidence), on the
        device: normalization, resize to ``network_size``, network, resize back. Never waits for the host."""
        with torch.inference_mode():
            left, right = self._normalized(left_raw, 'left'), self._normalized(right_raw, 'right')
            height, width = left.shape[-2:]
            # Normalization is per channel and affine, and both resize rules are linear and keep constants:
            # resizing after it equals resizing the raw images first.
            left, right = resize(left, network_size), resize(right, network_size)
            disparity, confidence = self._run(left, right, with_confidence)  # (1, 1, h, w) each
            if network_size != (height, width):
                ratio = width / network_size[1]  # disparity scales with the width
                disparity = F.interpolate(disparity, size=(height, width), mode='bilinear',
                                          align_corners=False) * ratio
                if confidence is not None:
                    confidence = F.interpolate(confidence, size=(height, width), mode='bilinear', align_corners=False)
            return disparity, None if confidence is None else confidence.clamp(0.0, 1.0)

    def _answer(self, left: npt.NDArray[Any], right: npt.NDArray[Any], network_size: tuple[int, int],
                with_confidence: bool) -> list[npt.NDArray[np.float32]]:
        """[disparity, (confidence)] ``(H, W)`` float32 on the host: a captured graph's replay where there is
        one for this input size, else eagerly (and capture it when the previous call had the same size)."""
        key: _CaptureKey = (left.shape, left.dtype.str, right.shape, right.dtype.str, network_size, with_confidence)
        with self._device_settings():
            if self.cuda_graphs and key not in self.capture_failures:
                captured = self._captured.get(key)
                if captured is None and key == self._previous_key:
                    captured = self._capture(key, left, right, network_size, with_confidence)
                self._previous_key = key
                if captured is not None:
                    self._captured.move_to_end(key)
                    return captured(left, right)
            outputs = self._device_pass(_to_device(left, self.device), _to_device(right, self.device),
                                        network_size, with_confidence)
            return [np.ascontiguousarray(t[0, 0].cpu().numpy(), dtype=np.float32) for t in outputs if t is not None]

    def _capture(self, key: _CaptureKey, left: npt.NDArray[Any], right: npt.NDArray[Any],
                 network_size: tuple[int, int], with_confidence: bool) -> CapturedPass | None:
        def device_pass(left_raw: torch.Tensor, right_raw: torch.Tensor) -> _Answer:
            return self._device_pass(left_raw, right_raw, network_size, with_confidence)

        try:
            captured = CapturedPass(device_pass, left, right, self.device)
        except Exception as err:  # noqa: BLE001 - any capture failure leaves this size to the eager path
            self.capture_failures[key] = f'{type(err).__name__}: {err}'
            return None
        self._captured[key] = captured
        while len(self._captured) > MAX_CAPTURED_SIZES:
            self._captured.popitem(last=False)
        return captured

    def upload(self, left: npt.ArrayLike, right: npt.ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Two images, checked, on the device as they are (uint8 stays uint8): what :meth:`device_pass` takes.

        Raises:
            InputError: as :meth:`infer`.
        """
        left_image, right_image = self._check_pair(left, right)
        return _to_device(left_image, self.device), _to_device(right_image, self.device)

    def device_pass(self, left: torch.Tensor, right: torch.Tensor, *, scale: float = 1.0,
                    with_confidence: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`infer`'s work on :meth:`upload`'s tensors, eagerly, leaving the answer on the device (no wait):
        ``(1, 1, H, W)`` float32 disparity in input pixels, and confidence or None.

        Raises:
            InputError: a scale out of range.
        """
        network_size = scaled_size(left.shape[0], left.shape[1], check_inference_scale(scale))
        with self._device_settings():
            return self._device_pass(left, right, network_size, with_confidence)

    def capture(self, left: npt.ArrayLike, right: npt.ArrayLike, *, scale: float = 1.0,
                with_confidence: bool = False) -> CapturedPass:
        """:meth:`infer`'s pass for images of this size, run once eagerly (cuDNN chooses its algorithms
        there) and then captured as a CUDA graph; ``infer`` does this by itself on the second call at a size.

        Raises:
            InputError: not a CUDA predictor, or the images or scale cannot be used.
        """
        if self.device.type != 'cuda':
            raise InputError(f'capturing a pass needs a CUDA device; this predictor runs on {self.device}')
        left_image, right_image = self._check_pair(left, right)
        network_size = scaled_size(left_image.shape[0], left_image.shape[1], check_inference_scale(scale))

        def device_pass(left_raw: torch.Tensor, right_raw: torch.Tensor) -> _Answer:
            return self._device_pass(left_raw, right_raw, network_size, with_confidence)

        with self._device_settings():
            device_pass(_to_device(left_image, self.device), _to_device(right_image, self.device))
            return CapturedPass(device_pass, left_image, right_image, self.device)

    def infer(self, left: npt.ArrayLike, right: npt.ArrayLike, *, scale: float = 1.0,
              with_confidence: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, local_search: int = 0,
              sgbm_fallback: bool = True, fill_occlusions: bool = True, left_right_check: bool = False) -> Inference:
        """The one inference path (node, CLIs, evaluators): colour, scale, network, confidence, back to input
        pixels, then the local search and the SGBM fallback (on the host, on as many threads as PyTorch's on the
        CPU: ``torch.get_num_threads()``).

        Args:
            left, right: ``(H, W)`` gray or ``(H, W, 3|4)`` RGB(A), uint8, uint16, or float in 0..255;
                equal sizes.
            scale: run the network on the pair resized by this factor (the module doc's resize rule),
                in [:data:`MIN_INFERENCE_SCALE`, :data:`MAX_INFERENCE_SCALE`], ends included.
            with_confidence: also compute the matching confidence (at the network's size, resized back
                bilinearly; after the local search, times the answer's photometric agreement).
            max_pixels: most pixels the network may run on: a larger pair runs at the largest smaller
                scale that fits (:func:`fitted_scale`; ``Inference.scale`` says which).
            local_search: reach in input pixels of the photometric search around the network's answer
                (:mod:`stereonet_ros.local_search`); 0 = the network's answer as it is; -1 = the node's default
                for this device (:func:`~stereonet_ros.local_search.reach_for`).
            sgbm_fallback: with the local search, the pixels its answer is unsure of take SGBM's answer where the
                images and the network agree with it (:mod:`stereonet_ros.sgbm_fallback`); the network's
                confidence is then computed whether or not ``with_confidence`` asks for it.
            fill_occlusions: with the local search, last, the pixels the answer says are hidden from the right
                camera and is unsure of take their row's background (:mod:`stereonet_ros.occlusion_fill`).
            left_right_check: with the local search, the network and the same steps also answer for the right
                view (on the mirrored pair: about twice the time), and the pixels whose match there disagrees
                are unsure (:mod:`stereonet_ros.left_right_check`).

        Raises:
            InputError: shapes, dtypes or sizes the predictor cannot use, a scale or reach out of range, or a
                pair too large for ``max_pixels`` even at the smallest scale (message says which).
        """
        scale = check_inference_scale(scale)
        local_search = check_local_search(local_search)
        left_image, right_image = self._check_pair(left, right)
        height, width = left_image.shape[:2]
        scale = fitted_scale(height, width, scale, max_pixels)
        network_size = scaled_size(height, width, scale)
        need_confidence = network_confidence_needed(with_confidence, local_search, sgbm_fallback, self.device.type,
                                                    self.has_confidence, fill_occlusions, left_right_check)
        inference = self._network(left_image, right_image, network_size, need_confidence, scale)
        pixels = network_size[0] * network_size[1]
        if self.device.type == 'cpu' and pixels > 2 * self._last_pixels > 0:
            # A rare large frame grew the heap that the tuned allocator keeps: give its pages back now
            # rather than hold the peak for ever (issue 11: a 2000x1500 pair left RSS 1.0 GB, was 0.69 GB).
            release_free_memory()
        self._last_pixels = pixels

        def right_view() -> Inference:
            return self._network(mirrored(right_image), mirrored(left_image), network_size, need_confidence, scale)

        return searched(inference, left_image, right_image, local_search, self.device.type, max_pixels,
                        sgbm_fallback=sgbm_fallback, fill_occlusions=fill_occlusions,
                        with_confidence=with_confidence, threads=torch.get_num_threads(),
                        right_view=right_view if left_right_check else None)

    def _network(self, left_image: npt.NDArray[Any], right_image: npt.NDArray[Any], network_size: tuple[int, int],
                 with_confidence: bool, scale: float) -> Inference:
        """The network's answer for the checked pair, at the input's size and in its pixels."""
        answer = self._answer(left_image, right_image, network_size, with_confidence)
        ratio = left_image.shape[1] / network_size[1]  # disparity scales with the width
        return Inference(disparity=answer[0], confidence=answer[1] if with_confidence else None,
                         max_disparity=float(self.contract.max_disparity) * ratio, network_size=network_size,
                         scale=scale)

    def predict(self, left: npt.ArrayLike, right: npt.ArrayLike, scale: float = 1.0) -> npt.NDArray[np.float32]:
        """Left-view disparity ``(H, W)`` float32 in pixels of the input: :meth:`infer`'s ``disparity``.

        Raises:
            InputError: as :meth:`infer`.
        """
        return self.infer(left, right, scale=scale).disparity
