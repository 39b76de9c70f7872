"""What an exported ONNX file says about itself: the layout ``stereonet-export`` writes and its reader.

Torch-free: the ONNX Runtime backend reads it without PyTorch (the export side,
:mod:`stereonet_ros.model.onnx_export`, needs PyTorch).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stereonet_ros.model.architecture import StereoNetConfig
from stereonet_ros.model.checkpoint import CheckpointError, InputContract, config_from_metadata

OPSET = 17
"""ONNX opset of every export (ONNX Runtime and TensorRT 8.6+ read it)."""

METADATA_KEY = 'stereonet_ros'
"""``metadata_props`` key whose value is the JSON document of :func:`export_metadata`."""

FORMAT = 'stereonet_ros.onnx/1'
"""Version of that document's layout."""

INPUT_NAMES = ('left', 'right')


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about itself (:func:`read_metadata`)."""

    config: StereoNetConfig
    contract: InputContract
    provenance: dict[str, Any]
    precision: str
    """'fp32' or 'fp16' (the convolutions'; inputs and outputs are float32 either way)."""
    outputs: tuple[str, ...]
    fixed_size: tuple[int, int] | None
    """``(H, W)`` the graph was fixed to, or None when dynamic."""
    opset: int
    source_sha256: str | None = None
    """SHA-256 of the checkpoint file it was exported from, when the exporter knew the file."""


def read_metadata(model: Any, where: str) -> OnnxMetadata:
    """The :data:`METADATA_KEY` document of an ``onnx.ModelProto``, checked.

    Raises:
        CheckpointError: missing, not JSON, or a contract or config that does not validate (message names it).
    """
    return read_metadata_map({prop.key: prop.value for prop in model.metadata_props}, where)


def read_metadata_map(props: Mapping[str, str], where: str) -> OnnxMetadata:
    """:func:`read_metadata` from the model's metadata as a key -> value map (what ONNX Runtime's
    ``session.get_modelmeta().custom_metadata_map`` gives, without the ``onnx`` package).

    Raises:
        CheckpointError: as :func:`read_metadata`.
    """
    if METADATA_KEY not in props:
        raise CheckpointError(f'{where}: no {METADATA_KEY!r} metadata: not exported by stereonet-export, so its input '
                              'contract is unknown')
    try:
        document = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f'{where}: {METADATA_KEY!r} metadata is not JSON: {err}') from err
    found = document.get('format') if isinstance(document, dict) else None
    if not isinstance(document, dict) or found != FORMAT:
        raise CheckpointError(f'{where}: {METADATA_KEY!r} metadata has format {found!r}; expected {FORMAT!r}')
    contract = InputContract.from_dict(document.get('input_contract'))
    config = config_from_metadata(document.get('model_config'), where=f'{where}: model_config')
    provenance = document.get('provenance')
    precision = document.get('precision')
    outputs = document.get('outputs')
    fixed = document.get('fixed_size')
    if not isinstance(provenance, dict):
        raise CheckpointError(f'{where}: metadata provenance must be a JSON object')
    if precision not in ('fp32', 'fp16'):
        raise CheckpointError(f"{where}: metadata precision {precision!r}: must be 'fp32' or 'fp16'")
    if not (isinstance(outputs, list) and outputs and outputs[0] == 'disparity'
            and set(outputs) <= {'disparity', 'confidence'}):
        raise CheckpointError(f"{where}: metadata outputs {outputs!r}: expected ['disparity'] or "
                              "['disparity', 'confidence']")
    if fixed is not None and not (isinstance(fixed, list) and len(fixed) == 2
                                  and all(isinstance(v, int) and v > 0 for v in fixed)):
        raise CheckpointError(f'{where}: metadata fixed_size {fixed!r}: expected null or [height, width]')
    return OnnxMetadata(config=config, contract=contract, provenance=provenance, precision=precision,
                        outputs=tuple(outputs), fixed_size=(fixed[0], fixed[1]) if fixed else None,
                        opset=int(document.get('opset', 0)), source_sha256=_sha256_field(document))


def _sha256_field(document: dict[str, Any]) -> str | None:
    value = document.get('source_sha256')
    return value if isinstance(value, str) and len(value) == 64 else None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks: what an export records of its source checkpoint."""
    digest = hashlib.sha256()
    with Path(path).open('rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def read_recorded_source(path: str | os.PathLike[str]) -> tuple[str | None, int | None]:
    """The ``source_sha256`` an exported file records and the refiner count of the network it holds (0 for a
    ``--no-refine`` export), read by ONNX Runtime (no ``onnx`` package needed); None for what the file does not
    say or when it cannot be loaded."""
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(Path(path).read_bytes(), providers=['CPUExecutionProvider'])
        document = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    except Exception:  # noqa: BLE001 - unreadable, no metadata, not JSON: nothing recorded
        return None, None
    if not isinstance(document, dict):
        return None, None
    config = document.get('model_config')
    refiners = config.get('k_refinement_layers') if isinstance(config, dict) else None
    return _sha256_field(document), refiners if isinstance(refiners, int) and not isinstance(refiners, bool) else None
