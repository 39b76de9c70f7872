"""Run an exported ``.onnx`` model (``stereonet-export``) with ONNX Runtime, as
:class:`~stereonet_ros.inference.Predictor` runs a checkpoint.

:meth:`Predictor.from_checkpoint <stereonet_ros.inference.Predictor.from_checkpoint>` hands a path ending in
``.onnx`` to :class:`OnnxPredictor`, so ``stereonet-infer --checkpoint model.onnx``, the node's
``checkpoint:=model.onnx`` and ``stereonet-eval-bag --checkpoint model.onnx`` run through it. The steps
around the network are the Predictor's own helpers: image checks, colour (float BT.601 luma for gray),
normalization by the contract the file carries in its metadata, test-time scale and ``max_pixels``,
edge padding to the pad multiple, crop, resize back. Only the network runs in ONNX Runtime.

Providers: ``device='cpu'`` the CPU; ``'auto'`` TensorRT, then CUDA, where this onnxruntime build has
them (``onnxruntime-gpu``), else the CPU; ``'cuda'`` refuses when neither GPU provider is there.

A file is refused (:class:`~stereonet_ros.model.checkpoint.CheckpointError`, one line) when its external
data lies outside its folder, when its graph is not the exported signature (inputs ``left``, ``right``,
float32 rank 4 with the contract's channels; first output ``disparity``), or when its metadata is missing
or does not validate.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# Torch-free imports only: a node that runs an .onnx model must not need PyTorch (issue 13).
from stereonet_ros.inference_common import (DEFAULT_MAX_PIXELS, CheckpointFacts, Inference, InputError, Precision,
                                            as_float_image, bilinear_array, check_inference_scale,
                                            check_local_search, checked_pair, fitted_scale, network_confidence_needed,
                                            padded_size, resize_array, scaled_size, searched, to_contract_color,
                                            warn_about_provenance)
from stereonet_ros.left_right_check import mirrored
from stereonet_ros.model.checkpoint import CheckpointError
from stereonet_ros.model.onnx_metadata import INPUT_NAMES, OnnxMetadata, read_metadata_map

GPU_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider')
"""ONNX Runtime providers that run on an NVIDIA GPU, preferred in this order."""

def _tensors(graph: Any) -> list[Any]:
    """Every TensorProto a graph holds: initializers and node attributes, subgraphs included."""
    found = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField('t'):
                found.append(attribute.t)
            found.extend(attribute.tensors)
            if attribute.HasField('g'):
                found.extend(_tensors(attribute.g))
            for subgraph in attribute.graphs:
                found.extend(_tensors(subgraph))
    return found


def check_external_data(model: Any, folder: Path, where: str) -> bool:
    """Refuse external data outside ``folder`` (absolute, ``..``, or a link leading out); True if there is any.

    Raises:
        CheckpointError: the first offending location, named.
    """
    root = folder.resolve()
    external = False
    for tensor in _tensors(model.graph):
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        external = True
        location = next((entry.value for entry in tensor.external_data if entry.key == 'location'), None)
        if not location:
            raise CheckpointError(f'{where}: tensor {tensor.name!r} has external data without a location')
        target = (root / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(root):
            raise CheckpointError(f'{where}: tensor {tensor.name!r} has external data at {location!r}, outside the '
                                  f"model's folder {root}: refused")
        if not target.is_file():
            raise CheckpointError(f'{where}: tensor {tensor.name!r}: external data file {location!r} not found')
    return external


def check_signature(session: Any, metadata: OnnxMetadata, where: str) -> None:
    """The graph's inputs and outputs (as ONNX Runtime's ``session`` lists them) are those
    ``stereonet-export`` writes for this metadata.

    Raises:
        CheckpointError: names the input or output and what it should be.
    """
    inputs = session.get_inputs()  # initializers are not inputs here
    names = [value.name for value in inputs]
    if names != list(INPUT_NAMES):
        raise CheckpointError(f'{where}: graph inputs {names}: expected {list(INPUT_NAMES)}')
    channels = metadata.contract.channels
    for value in inputs:
        dims = [dim if dim is not None else '?' for dim in (value.shape or [])]
        if len(dims) != 4 or value.type != 'tensor(float)' or dims[0] not in (1, '') or dims[1] != channels:
            raise CheckpointError(f'{where}: graph input {value.name!r} is {"x".join(map(str, dims)) or "rank 0"} of '
                                  f'element type {value.type}: expected float32 (1, {channels}, H, W)')
    outputs = session.get_outputs()
    if [value.name for value in outputs] != list(metadata.outputs):
        raise CheckpointError(f'{where}: graph outputs {[value.name for value in outputs]}: its metadata says '
                              f'{list(metadata.outputs)}')
    for value in outputs:
        if len(value.shape or []) != 4:
            raise CheckpointError(f'{where}: graph output {value.name!r} has rank {len(value.shape or [])}: '
                                  'expected 4')


@dataclass(frozen=True)
class OnnxDevice:
    """Where ONNX Runtime runs the graph, with the two things callers read of a ``torch.device``."""

    type: str
    """'cpu' or 'cuda'."""
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f'{self.type}:{self.index}'


class OnnxPredictor(CheckpointFacts):
    """An exported ONNX model ready to turn image pairs into left-view disparity; the public surface of
    :class:`~stereonet_ros.inference.Predictor` that the node, CLIs and evaluators use.

    Args:
        path: the ``.onnx`` file (external data, if any, inside its folder).
        device: 'auto', 'cpu', 'cuda' (or 'cuda:N': provider device N).
        precision: the model's own ('fp32', or 'fp16' for a ``--fp16`` export): fixed at export.
        threads: intra-op threads on the CPU; 0 = ONNX Runtime's default.

    Raises:
        CheckpointError: the file cannot be used (message says why).
        InputError: a device or precision this model or machine cannot run.
    """

    def __init__(self, path: str | os.PathLike[str], device: str = 'auto', precision: Precision = 'fp32',
                 threads: int = 0) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise CheckpointError(f'{path}: running .onnx models needs the onnxruntime package: {err}') from err
        self.path = Path(path)
        self.threads = threads
        """Intra-op threads of the CPU provider (0 = ONNX Runtime's default)."""
        where = str(self.path)
        model_bytes = self._model_bytes(where)
        available = onnxruntime.get_available_providers()
        kind, _, index = device.partition(':')
        if kind == 'cpu' and not index:
            providers: list[Any] = ['CPUExecutionProvider']
        elif kind in ('auto', 'cuda') and (kind == 'cuda' or not index):
            gpu = [name for name in GPU_PROVIDERS if name in available]
            if kind == 'cuda' and not gpu:
                raise InputError(f'device {device!r}: this onnxruntime has no GPU provider (it has '
                                 f'{", ".join(available)}); install onnxruntime-gpu')
            options = {'device_id': int(index)} if index.isdigit() else {}
            providers = [(name, options) for name in gpu] + ['CPUExecutionProvider']
        else:
            raise InputError(f"device {device!r} is not a device ('auto', 'cpu', 'cuda', 'cuda:N')")
        try:
            # From bytes, never from the path: external data reaches the session only through _model_bytes,
            # which checked where it lies.
            options = onnxruntime.SessionOptions()
            if threads > 0:  # 0: ONNX Runtime's default (a thread per physical core)
                options.intra_op_num_threads = threads
            self._session = onnxruntime.InferenceSession(model_bytes, sess_options=options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own classes for a graph it cannot run
            raise CheckpointError(f'{where}: ONNX Runtime cannot load it: {" ".join(str(err).split())[:300]}') from err
        metadata = read_metadata_map(self._session.get_modelmeta().custom_metadata_map, where)
        check_signature(self._session, metadata, where)
        self.checkpoint: OnnxMetadata = metadata
        """What the file says about itself: ``config``, ``contract``, ``provenance``, ``precision``."""
        if precision != metadata.precision:
            raise InputError(f'precision {precision!r}: the ONNX model {self.path.name} was exported in '
                             f'{metadata.precision}; pass {metadata.precision!r} or export it again')
        self.precision: Precision = precision
        active = self._session.get_providers()[0]
        if kind == 'cuda' and active not in GPU_PROVIDERS:
            raise InputError(f'device {device!r}: ONNX Runtime could not start a GPU provider (runs {active})')
        self.provider: str = active
        """The ONNX Runtime provider that runs the graph first (the CPU takes what it cannot)."""
        self.device = OnnxDevice('cuda' if active in GPU_PROVIDERS else 'cpu', int(index or 0)
                                 if active in GPU_PROVIDERS else None)
        """Where the network runs, as the Predictor's ``torch.device`` says it (``.type``; ``str()`` for reports)."""
        warn_about_provenance(metadata.provenance)
        self._normalization = {
            side: (np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1),
                   np.asarray(std, dtype=np.float32).reshape(-1, 1, 1))  # (C, 1, 1)
            for side, mean, std in (('left', metadata.contract.left_mean, metadata.contract.left_std),
                                    ('right', metadata.contract.right_mean, metadata.contract.right_std))}

    def _model_bytes(self, where: str) -> bytes:
        """The file's bytes for ONNX Runtime. With the ``onnx`` package the graph is parsed first, so that
        external data outside the model's folder is refused and the rest is brought in; without it (a robot
        with ONNX Runtime alone) the bytes go as they are, and a model with external data cannot load,
        since a session made from bytes has no folder to find it in.

        Raises:
            CheckpointError: a missing or unreadable file, or external data outside the folder.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as err:
            raise CheckpointError(f'cannot open ONNX model {where}: no such file') from err
        except OSError as err:
            raise CheckpointError(f'cannot open ONNX model {where}: {err.strerror or err}') from err
        try:
            import onnx
        except ImportError:
            return data
        try:
            model = onnx.load_from_string(data)
        except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and kin
            raise CheckpointError(f'{where}: not a readable ONNX model: {type(err).__name__}: {err}') from err
        if not check_external_data(model, self.path.parent, where):
            return data
        onnx.load_external_data_for_model(model, str(self.path.parent))
        return bytes(model.SerializeToString())

    @property
    def has_confidence(self) -> bool:
        """Whether the model has the ``confidence`` output (``stereonet-export --confidence``)."""
        return 'confidence' in self.checkpoint.outputs

    @property
    def captured_sizes(self) -> list[tuple[int, int]]:
        """None: ONNX Runtime keeps no CUDA graphs here (the Predictor's diagnostics field)."""
        return []

    def on_cpu(self) -> OnnxPredictor:
        """The same model on ONNX Runtime's CPU provider (the node's refuge when its accelerator fails)."""
        return OnnxPredictor(self.path, device='cpu', precision=self.precision, threads=self.threads)

    def reset_device_state(self) -> None:
        """Nothing to drop: the session holds no per-size state that a retry would need cleared."""

    def _network_input(self, image: npt.NDArray[Any], side: str, name: str) -> npt.NDArray[np.float32]:
        """A checked image -> ``(1, C, H, W)`` float32, normalized: the Predictor's steps 1-3 in NumPy."""
        mean, std = self._normalization[side]
        values = to_contract_color(as_float_image(image, name), self.contract.color)  # (C, H, W)
        return ((values - mean) / std)[np.newaxis]  # (1, C, H, W)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the graph runs at: the padding policy's, or the exported fixed size when larger.

        Raises:
            InputError: the pair needs more than a fixed-size model takes.
        """
        size = padded_size(height, width, self.contract, self.config)
        fixed = self.checkpoint.fixed_size
        if fixed is None:
            return size
        if size[0] > fixed[0] or size[1] > fixed[1]:
            raise InputError(f'the network would run at {size[1]}x{size[0]}, larger than the {fixed[1]}x{fixed[0]} '
                             f'the ONNX model {self.path.name} was exported for')
        # Padded further with edge values, right and below: no real pixel's candidates change, but the refiners'
        # align-corners resizes do (Motorcycle 360x240 in a 368x248 export: mean 0.16 px, max 4.1 px).
        return fixed

    def infer(self, left: npt.ArrayLike, right: npt.ArrayLike, *, scale: float = 1.0,
              with_confidence: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, local_search: int = 0,
              sgbm_fallback: bool = True, fill_occlusions: bool = True, left_right_check: bool = False) -> Inference:
        """:meth:`Predictor.infer <stereonet_ros.inference.Predictor.infer>` through ONNX Runtime: same
        arguments, same answer (within 0.01 px for an fp32 export). The steps after the network run on
        ``threads`` threads, as the session does (0: every usable CPU).

        Raises:
            InputError: as the Predictor's; also confidence asked of a model exported without it, or a pair
                larger than a fixed-size model takes.
        """
        scale = check_inference_scale(scale)
        local_search = check_local_search(local_search)
        if with_confidence and not self.has_confidence:
            raise InputError(f'the ONNX model {self.path.name} has no confidence output; export it with '
                             'stereonet-export --confidence')
        left_image, right_image = checked_pair(left, right)
        scale = fitted_scale(*left_image.shape[:2], scale, max_pixels)
        network_size = scaled_size(*left_image.shape[:2], scale)
        need_confidence = network_confidence_needed(with_confidence, local_search, sgbm_fallback, self.device.type,
                                                    self.has_confidence, fill_occlusions, left_right_check)
        inference = self._network(left_image, right_image, network_size, need_confidence, scale)

        def right_view() -> Inference:
            return self._network(mirrored(right_image), mirrored(left_image), network_size, need_confidence, scale)

        return searched(inference, left_image, right_image, local_search, self.device.type, max_pixels,
                        sgbm_fallback=sgbm_fallback, fill_occlusions=fill_occlusions,
                        with_confidence=with_confidence, threads=self.threads,
                        right_view=right_view if left_right_check else None)

    def _network(self, left_image: npt.NDArray[Any], right_image: npt.NDArray[Any], network_size: tuple[int, int],
                 need_confidence: bool, scale: float) -> Inference:
        """The network's answer for the checked pair, at the input's size and in its pixels."""
        height, width = left_image.shape[:2]
        padded = self.padded_size(*network_size)
        inputs = []
        for image, side in ((left_image, 'left'), (right_image, 'right')):
            values = self._network_input(image, side, side)  # (1, C, H, W)
            if network_size != (height, width):
                # Normalization is affine per channel and both resize rules are linear: as the Predictor.
                values = resize_array(values, network_size)  # (1, C, h, w)
            pad = ((0, 0), (0, 0), (0, padded[0] - network_size[0]), (0, padded[1] - network_size[1]))
            inputs.append(np.ascontiguousarray(np.pad(values, pad, mode='edge'), dtype=np.float32))
        names = ['disparity', 'confidence'] if need_confidence else ['disparity']
        outputs = self._session.run(names, dict(zip(INPUT_NAMES, inputs, strict=True)))
        cropped = [np.ascontiguousarray(value[:, :, :network_size[0], :network_size[1]], dtype=np.float32)
                   for value in outputs]  # (1, 1, h, w)
        ratio = width / network_size[1]  # disparity scales with the width
        if network_size != (height, width):
            cropped[0] = bilinear_array(cropped[0], (height, width)) * np.float32(ratio)
            if need_confidence:
                cropped[1] = bilinear_array(cropped[1], (height, width))
        confidence = np.clip(cropped[1], 0.0, 1.0)[0, 0] if need_confidence else None
        return Inference(disparity=np.ascontiguousarray(cropped[0][0, 0], dtype=np.float32),
                         confidence=None if confidence is None else np.ascontiguousarray(confidence, dtype=np.float32),
                         max_disparity=float(self.contract.max_disparity) * ratio, network_size=network_size,
                         scale=scale)

    def predict(self, left: npt.ArrayLike, right: npt.ArrayLike, scale: float = 1.0) -> npt.NDArray[np.float32]:
        """Left-view disparity ``(H, W)`` float32 in pixels of the input: :meth:`infer`'s ``disparity``."""
        return self.infer(left, right, scale=scale).disparity
