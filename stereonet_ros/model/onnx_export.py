"""Export a checkpoint to ONNX, with its input contract, and check the file against PyTorch before writing it.

The graph takes what :class:`~stereonet_ros.inference.Predictor` hands its network: the normalized pair,
padded bottom and right with edge values to the contract's ``pad_multiple`` (and at least 2^K):

- inputs ``left``, ``right``: ``(1, C, H, W)`` float32, C = the contract's channels;
- output ``disparity``: ``(1, 1, H, W)`` float32 left-view shift in pixels of that input;
- with ``confidence=True`` also ``confidence``: ``(1, 1, H, W)`` float32 in [0, 1]
  (:func:`~stereonet_ros.model.stereonet.matching_confidence`, resized bilinearly as the Predictor does).

H and W are dynamic unless fixed at export. BatchNorm is folded into the convolutions. Everything a
reader needs to feed the file (colour, mean and std, pad multiple, smallest size, the model config,
provenance, opset, precision) is JSON in the model's ``metadata_props`` under :data:`METADATA_KEY`
(:func:`read_metadata`), so the file alone says how to use it.

The cost volume is built here by one slice per candidate instead of ``unfold`` (which the TorchScript
ONNX exporter cannot express at a dynamic width); the values are the same differences
(:func:`~stereonet_ros.model.stereonet.difference_cost_volume`, left side), checked by the parity test
every export runs.

``fp16`` keeps the inputs and outputs float32 but runs the convolutions in float16; the soft argmin,
the confidence and the disparity additions stay float32 (as the Predictor's autocast does).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stereonet_ros.model.checkpoint import Checkpoint, InputContract
from stereonet_ros.model.onnx_metadata import (FORMAT, INPUT_NAMES, METADATA_KEY, OPSET,  # noqa: F401
                                               OnnxMetadata, file_sha256, read_metadata)
from stereonet_ros.model.stereonet import (StereoNet, StereoNetConfig, fold_batchnorm, guided_to,
                                          matching_confidence, refined_level, soft_argmin)

PARITY_TOLERANCE_PX = 0.01
"""Largest |ONNX Runtime - PyTorch| disparity (pixels) an fp32 export may show on the check pair."""
FP16_PARITY_TOLERANCE_PX = 0.25
"""The same for an fp16 export, against float32 PyTorch: half precision moves the disparity by hundredths of
a pixel (the default checkpoint on Motorcycle, ONNX Runtime CPU: 0.05 px at most)."""


class ExportError(Exception):
    """The model cannot be exported, or its export does not reproduce PyTorch."""


def _cost_volume(reference: torch.Tensor, target: torch.Tensor, num_candidates: int, border: str) -> torch.Tensor:
    """:func:`~stereonet_ros.model.stereonet.difference_cost_volume` for the left view, one slice per candidate.

    Args:
        reference, target: ``(B, F, h, w)`` left and right features.

    Returns:
        ``(B, F, D, h, w)``: ``[..., i, y, x] = reference[y, x] - target[y, x - i]`` ('replicate': the edge
        column where ``x - i < 0``; 'zero': a zero difference there).
    """
    extra = num_candidates - 1
    padded = F.pad(target, (extra, 0, 0, 0), mode='replicate' if border == 'replicate' else 'constant', value=0.0)
    width = reference.shape[-1]
    slices = []
    for shift in range(num_candidates):
        start = extra - shift
        difference = reference - padded[..., start:start + width]  # (B, F, h, w)
        if border == 'zero' and shift > 0:
            # The seed leaves the whole difference (not just the target) at zero outside the image.
            difference = torch.cat((torch.zeros_like(difference[..., :shift]), difference[..., shift:]), dim=-1)
        slices.append(difference)
    return torch.stack(slices, dim=2)  # (B, F, D, h, w)


class ExportGraph(nn.Module):
    """The folded network as ONNX sees it: padded normalized pair -> disparity (and confidence).

    The same steps as :meth:`StereoNet.forward` for the left view (and the Predictor's confidence);
    ``half`` runs the convolutions in float16 with the float32 steps noted in the module doc.
    """

    def __init__(self, model: StereoNet, with_confidence: bool, half: bool) -> None:
        super().__init__()
        self.net = model.half() if half else model
        self.with_confidence = with_confidence
        self.use_half = half

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> Any:
        config = self.net.config
        work = torch.float16 if self.use_half else torch.float32
        features = self.net.feature_extractor(torch.cat((left, right), dim=0).to(work))  # (2, F, h, w)
        left_features, right_features = features.chunk(2, dim=0)
        volume = _cost_volume(left_features, right_features, config.num_candidates, config.cost_volume_border)
        cost = self.net.cost_volumizer(volume).float()  # (1, D, h, w), float32 for the soft argmin
        candidates: torch.Tensor = self.net.candidates  # type: ignore[assignment]
        candidates = candidates.float()  # (D,), float32 even in a half network
        disparity = soft_argmin(cost, candidates)  # (1, 1, h, w)
        height, width = left.shape[2], left.shape[3]
        levels = config.k_refinement_layers
        for index, refiner in enumerate(self.net.refiners, start=1):
            size = (height // 2 ** (levels - index), width // 2 ** (levels - index))  # StereoNet.refinement_sizes
            disparity = refined_level(refiner, left, right, disparity, size, 'left', config.align_corners,
                                      dtype=work)  # (1, 1, h_i, w_i), float32
        # No refiners: the soft argmin carried to the input size as StereoNet.forward does.
        disparity = guided_to(disparity, left, config.downsampling_factor, config.align_corners)
        if not self.with_confidence:
            return disparity
        confidence = F.interpolate(matching_confidence(cost), size=(height, width), mode='bilinear',
                                   align_corners=config.align_corners)
        return disparity, confidence


def export_metadata(checkpoint: Checkpoint, *, precision: str, outputs: tuple[str, ...],
                    fixed_size: tuple[int, int] | None, source: str, source_sha256: str | None,
                    parity: dict[str, Any]) -> dict[str, Any]:
    """The JSON document stored under :data:`METADATA_KEY`."""
    return {
        'format': FORMAT,
        'inputs': {name: {'shape': [1, checkpoint.contract.channels, *(fixed_size or ('height', 'width'))],
                          'dtype': 'float32',
                          'meaning': f'{name} image: (value - mean) / std per channel, in the contract colour, '
                                     'padded bottom and right with edge values to pad_multiple (at least min_size)'}
                   for name in INPUT_NAMES},
        'outputs': list(outputs),
        'min_size': checkpoint.config.downsampling_factor,
        'fixed_size': list(fixed_size) if fixed_size else None,
        'input_contract': checkpoint.contract.to_dict(),
        'model_config': checkpoint.config.to_dict(),
        'provenance': checkpoint.provenance,
        'precision': precision,
        'opset': OPSET,
        'batchnorm_folded': True,
        'source_checkpoint': source,
        'source_sha256': source_sha256,
        'exporter': f'stereonet_ros onnx_export, torch {torch.__version__}',
        'parity': parity,
    }


def _check_size(name: str, value: int, contract: InputContract, config: StereoNetConfig) -> None:
    if value < config.downsampling_factor or value % contract.pad_multiple:
        raise ExportError(f'--{name} {value}: must be a multiple of the pad multiple {contract.pad_multiple} '
                          f'and at least {config.downsampling_factor}')


def _trace(checkpoint: Checkpoint, example: tuple[torch.Tensor, torch.Tensor], with_confidence: bool, half: bool,
           fixed: bool) -> bytes:
    graph = ExportGraph(fold_batchnorm(checkpoint.build_model()), with_confidence, half).eval()
    outputs = ['disparity', 'confidence'] if with_confidence else ['disparity']
    dynamic = None if fixed else {name: {2: 'height', 3: 'width'} for name in (*INPUT_NAMES, *outputs)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and about traced Python ints; the parity
        # check below is what tells whether the trace is right at other sizes.
        warnings.simplefilter('ignore')
        target: Any = buffer  # the TorchScript exporter writes to file objects too; its annotation names paths
        torch.onnx.export(graph, example, target, input_names=list(INPUT_NAMES), output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    return buffer.getvalue()


def _parity_pairs(checkpoint: Checkpoint, fixed_size: tuple[int, int] | None) -> list[tuple[str, Any, Any]]:
    """(name, left, right) image pairs the export is checked on: Motorcycle, and a crop of it whose sides are
    not multiples of the pad multiple (dynamic exports); a fixed export sees Motorcycle resized to its size."""
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    if fixed_size is not None:
        import cv2

        size = (fixed_size[1], fixed_size[0])
        return [('Motorcycle resized to fixed size', cv2.resize(sample.left, size, interpolation=cv2.INTER_AREA),
                 cv2.resize(sample.right, size, interpolation=cv2.INTER_AREA))]
    height, width = sample.left.shape[:2]
    odd_h, odd_w = height - 13, width - 29  # odd sides, not multiples of 2..64
    return [('Motorcycle', sample.left, sample.right),
            (f'Motorcycle crop {odd_w}x{odd_h}', sample.left[:odd_h, :odd_w], sample.right[:odd_h, :odd_w])]


def check_parity(model_bytes: bytes, checkpoint: Checkpoint, fixed_size: tuple[int, int] | None,
                 with_confidence: bool) -> dict[str, float]:
    """Largest |ONNX Runtime (CPU) - PyTorch Predictor| disparity (and confidence) over the check pairs, pixels.

    Both get the same padded, normalized input (the Predictor's ``preprocess``, edge padding); PyTorch is
    the Predictor's own float32 path on the CPU.
    """
    import onnxruntime

    from stereonet_ros.inference import Predictor, PreliminaryCheckpointWarning, UntrainedPlaceholderWarning

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', PreliminaryCheckpointWarning)
        warnings.simplefilter('ignore', UntrainedPlaceholderWarning)
        predictor = Predictor(checkpoint, device='cpu')
    session = onnxruntime.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    worst = {'disparity': 0.0, 'confidence': 0.0}
    for _, left_image, right_image in _parity_pairs(checkpoint, fixed_size):
        left, right = predictor.preprocess(left_image, right_image)  # (1, C, H, W) each
        height, width = left.shape[-2:]
        padded_height, padded_width = predictor.padded_size(height, width)
        padding = (0, padded_width - width, 0, padded_height - height)
        feeds = {name: F.pad(tensor, padding, mode='replicate').numpy()
                 for name, tensor in zip(INPUT_NAMES, (left, right), strict=True)}
        answer = session.run(None, feeds)
        if with_confidence:
            disparity, confidence = predictor.run_with_confidence(left, right)
            worst['confidence'] = max(worst['confidence'], float(np.abs(
                answer[1][:, :, :height, :width] - confidence.numpy()).max()))
        else:
            disparity = predictor.run(left, right)
        worst['disparity'] = max(worst['disparity'], float(np.abs(
            answer[0][:, :, :height, :width] - disparity.numpy()).max()))
    return worst if with_confidence else {'disparity': worst['disparity']}


def export_onnx(checkpoint: Checkpoint, out: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None,
                height: int | None = None, width: int | None = None, with_confidence: bool = False,
                fp16: bool = False) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` (ONNX), after checking it against PyTorch; returns the metadata written.

    Args:
        source: the checkpoint file (recorded, with its SHA-256, in the metadata).
        height, width: fix the input size (both or neither; multiples of ``pad_multiple``); None = dynamic.
        with_confidence: add the ``confidence`` output.
        fp16: float16 convolutions (for GPUs), checked within :data:`FP16_PARITY_TOLERANCE_PX`.

    Raises:
        ExportError: a bad size, a tracing failure, or ONNX Runtime and PyTorch differing by more than
            :data:`PARITY_TOLERANCE_PX` (fp16: :data:`FP16_PARITY_TOLERANCE_PX`) px; nothing is written then.
    """
    import onnx

    config, contract = checkpoint.config, checkpoint.contract
    if (height is None) != (width is None):
        raise ExportError('--height and --width go together: give both to fix the size, or neither')
    fixed_size = None
    if height is not None and width is not None:
        _check_size('height', height, contract, config)
        _check_size('width', width, contract, config)
        fixed_size = (height, width)
    example_size = fixed_size or (max(8, contract.pad_multiple, config.downsampling_factor) * 4,) * 2
    example = (torch.zeros(1, contract.channels, *example_size), torch.zeros(1, contract.channels, *example_size))
    try:
        model_bytes = _trace(checkpoint, example, with_confidence, fp16, fixed_size is not None)
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds; one line names it
        raise ExportError(f'tracing the network to ONNX failed: {type(err).__name__}: {err}') from err
    try:
        worst = check_parity(model_bytes, checkpoint, fixed_size, with_confidence)
    except Exception as err:  # noqa: BLE001 - ONNX Runtime cannot run what was traced (e.g. fp16 kernels)
        raise ExportError(f'ONNX Runtime cannot run the exported model on the CPU to check it: '
                          f'{type(err).__name__}: {" ".join(str(err).split())[:300]}') from err
    tolerance = FP16_PARITY_TOLERANCE_PX if fp16 else PARITY_TOLERANCE_PX
    if not all(np.isfinite(value) and value <= tolerance for value in worst.values()):
        shown = ', '.join(f'{name} {value:.4g}' for name, value in worst.items())
        raise ExportError(f'the ONNX model differs from PyTorch by more than {tolerance} px on Motorcycle ({shown}); '
                          'nothing written')
    outputs = ('disparity', 'confidence') if with_confidence else ('disparity',)
    source_path = Path(source) if source is not None else None
    parity = {'pairs': [name for name, _, _ in _parity_pairs(checkpoint, fixed_size)],
              'max_abs_difference': worst, 'tolerance_px': tolerance, 'against': 'PyTorch float32 Predictor, CPU'}
    document = export_metadata(checkpoint, precision='fp16' if fp16 else 'fp32', outputs=outputs,
                               fixed_size=fixed_size, source=source_path.name if source_path else 'in memory',
                               source_sha256=(file_sha256(source_path) if source_path and source_path.is_file()
                                              else None),
                               parity=parity)
    model = onnx.load_from_string(model_bytes)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(document, sort_keys=True)
    model.producer_name = 'stereonet_ros'
    onnx.checker.check_model(model)
    out_path = Path(out)
    # Written beside the target and renamed: a failed write leaves no half file.
    handle, staging = tempfile.mkstemp(dir=out_path.parent, prefix=f'.{out_path.name}.', suffix='.part')
    try:
        with os.fdopen(handle, 'wb') as stream:
            stream.write(model.SerializeToString())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(staging, out_path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return document

