"""Loading and saving StereoNet checkpoints without running pickled code.

Two formats are read:

- **Ours**: a safetensors file (tensors only, no pickle) whose header metadata holds JSON under
  ``stereonet_ros``: the model config, the input contract and the provenance. One file.
- **Seed** (andrewlstewart/StereoNet_PyTorch) PyTorch Lightning ``.ckpt`` files, both generations:
  the newest code (Lightning 2.x; ``functools.partial`` of RMSprop / ExponentialLR pickled in
  ``hyper_parameters``) and commit 9c0260f (Lightning 1.4.x; no ``in_channels`` hyper-parameter;
  ``callbacks`` keyed by the ``ModelCheckpoint`` class object). They are opened with
  ``torch.load(weights_only=True)`` plus inert stand-ins registered for exactly those few globals
  (:data:`SEED_STAND_INS`): no Lightning import, nothing pickled is executed. Any other global is
  refused with a :class:`CheckpointError` that names it.

The seed's state_dict keys equal ours (``stereonet_ros.model.stereonet`` keeps its module names),
so only the hyper-parameters need translating.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch

from stereonet_ros.model.stereonet import ModelConfigError, StereoNet, StereoNetConfig

FORMAT_NAME = 'stereonet_ros'
FORMAT_VERSION = 1
METADATA_KEY = 'stereonet_ros'  # key of our JSON in the safetensors header's __metadata__

Color = Literal['gray', 'rgb']


class CheckpointError(Exception):
    """A checkpoint cannot be opened: missing, unreadable, unsafe, or not a StereoNet."""


@dataclass(frozen=True)
class InputContract:
    """What the weights expect of their inputs: recorded with them, applied by the Predictor.

    Images are taken in 0..255 units (uint16 scaled by 255/65535), converted to ``color`` (gray:
    ITU-R BT.601 luma of RGB), then normalized per view and channel: ``(x - mean) / std``.
    """

    color: Color
    """'gray' (1 channel) or 'rgb' (3 channels, R, G, B order)."""
    left_mean: tuple[float, ...]
    left_std: tuple[float, ...]
    right_mean: tuple[float, ...]
    right_std: tuple[float, ...]
    max_disparity: float
    """Largest disparity (input pixels) the weights can output."""
    pad_multiple: int = 1
    """Inputs are padded (bottom/right, edge values) to a multiple of this; 1 = run at the given size."""

    def __post_init__(self) -> None:
        channels = self.channels
        for name in ('left_mean', 'left_std', 'right_mean', 'right_std'):
            values = getattr(self, name)
            if len(values) != channels:
                raise CheckpointError(f'input contract {name}={values!r}: needs {channels} value(s) for {self.color!r}')
        if self.color not in ('gray', 'rgb'):
            raise CheckpointError(f"input contract color={self.color!r}: must be 'gray' or 'rgb'")
        if min(self.left_std + self.right_std) <= 0:
            raise CheckpointError('input contract std values must be > 0')
        if self.pad_multiple < 1:
            raise CheckpointError(f'input contract pad_multiple={self.pad_multiple!r}: must be >= 1')

    @property
    def channels(self) -> int:
        return 1 if self.color == 'gray' else 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> InputContract:
        try:
            return cls(color=values['color'],
                       left_mean=tuple(float(v) for v in values['left_mean']),
                       left_std=tuple(float(v) for v in values['left_std']),
                       right_mean=tuple(float(v) for v in values['right_mean']),
                       right_std=tuple(float(v) for v in values['right_std']),
                       max_disparity=float(values['max_disparity']),
                       pad_multiple=int(values.get('pad_multiple', 1)))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f'malformed input contract {dict(values)!r}: {err}') from err


# The seed families' normalizations (the seed's README).
KEYSTONE_GRAY_CONTRACT = InputContract(
    color='gray', left_mean=(111.5684,), left_std=(61.9625,), right_mean=(113.6528,), right_std=(62.0313,),
    max_disparity=256.0)
"""Grayscale KeystoneDepth checkpoint (``epoch=21-step=696366.ckpt``) and the fixture."""
SCENEFLOW_RGB_CONTRACT = InputContract(
    color='rgb', left_mean=(127.5,) * 3, left_std=(127.5,) * 3, right_mean=(127.5,) * 3, right_std=(127.5,) * 3,
    max_disparity=256.0)
"""RGB SceneFlow checkpoint (``epoch=20-step=744533.ckpt``): ``(x / 255 - 0.5) * 2`` = ``(x - 127.5) / 127.5``."""


@dataclass(frozen=True)
class Checkpoint:
    """Weights with everything needed to use them."""

    config: StereoNetConfig
    contract: InputContract
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)
    """Where the weights come from: data, steps, git SHA, source file, ``trained`` flag."""

    def build_model(self) -> StereoNet:
        """A StereoNet (eval mode, CPU) holding these weights; every key must match."""
        model = StereoNet(self.config)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(self.state_dict))
        unexpected = sorted(set(self.state_dict) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f'weights do not fit the model config: missing {missing[:5]}'
                                  f'{"..." if len(missing) > 5 else ""}, unexpected {unexpected[:5]}'
                                  f'{"..." if len(unexpected) > 5 else ""}')
        for key, tensor in expected.items():
            if tuple(self.state_dict[key].shape) != tuple(tensor.shape):
                raise CheckpointError(f'weight {key} has shape {tuple(self.state_dict[key].shape)}, '
                                      f'the model config needs {tuple(tensor.shape)}')
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


# --- our format -----------------------------------------------------------------------------------

def _safetensors() -> Any:
    """The ``safetensors.torch`` module; a clear CheckpointError where it is not installed.

    rosdep has no key for it, so a ROS install from package.xml alone lacks it: say how to get it.
    """
    try:
        import safetensors.torch
    except ImportError as err:
        raise CheckpointError('reading and writing .safetensors checkpoints needs the safetensors package, '
                              f'which is not installed ({err}): pip install safetensors') from err
    return safetensors.torch


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` as safetensors with our JSON metadata in the header."""
    save_file = _safetensors().save_file

    metadata = {
        'format': FORMAT_NAME,
        'format_version': FORMAT_VERSION,
        'model_config': checkpoint.config.to_dict(),
        'input_contract': checkpoint.contract.to_dict(),
        'provenance': checkpoint.provenance,
    }
    # safetensors refuses shared or non-contiguous storage; a clone per tensor is cheap at our size.
    tensors = {key: value.detach().to('cpu').contiguous().clone() for key, value in checkpoint.state_dict.items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def _read_safetensors_metadata(path: Path) -> dict[str, str]:
    with path.open('rb') as stream:
        head = stream.read(8)
        if len(head) < 8:
            raise CheckpointError(f'{path}: truncated safetensors header')
        (length,) = struct.unpack('<Q', head)
        if length > 100_000_000:
            raise CheckpointError(f'{path}: implausible safetensors header length {length}')
        raw = stream.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f'{path}: malformed safetensors header: {err}') from err
    metadata = header.get('__metadata__') or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f'{path}: malformed safetensors metadata')
    return {str(k): str(v) for k, v in metadata.items()}


def _load_ours(path: Path) -> Checkpoint:
    load_file = _safetensors().load_file
    from safetensors import SafetensorError

    metadata_text = _read_safetensors_metadata(path).get(METADATA_KEY)
    if metadata_text is None:
        raise CheckpointError(f'{path}: a safetensors file without stereonet_ros metadata '
                              '(model config and input contract); convert it with stereonet-convert')
    try:
        metadata = json.loads(metadata_text)
        if metadata.get('format') != FORMAT_NAME:
            raise CheckpointError(f'{path}: metadata format {metadata.get("format")!r} is not {FORMAT_NAME!r}')
        if int(metadata.get('format_version', 0)) > FORMAT_VERSION:
            raise CheckpointError(f'{path}: format version {metadata["format_version"]} is newer than this '
                                  f'stereonet_ros reads ({FORMAT_VERSION}); update stereonet_ros')
        config = StereoNetConfig.from_dict(metadata['model_config'])
        contract = InputContract.from_dict(metadata['input_contract'])
        provenance = dict(metadata.get('provenance', {}))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, ModelConfigError) as err:
        raise CheckpointError(f'{path}: malformed stereonet_ros metadata: {err}') from err
    try:
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f'{path}: unreadable safetensors data: {err}') from err
    return Checkpoint(config=config, contract=contract, state_dict=state_dict, provenance=provenance)


# --- seed Lightning checkpoints ----------------------------------------------------------------------

class _PickledReference:
    """Inert stand-in for a class or function named in a seed checkpoint: it records the name only."""

    qualified_name = ''

    def __repr__(self) -> str:
        return f'<pickled reference {self.qualified_name}>'


def _reference(qualified_name: str) -> type[_PickledReference]:
    # A class per name, so that e.g. the Lightning 1.4 callbacks dict (keyed by the class object) keeps
    # its keys distinct and readable.
    return type(qualified_name.rsplit('.', 1)[-1], (_PickledReference,), {'qualified_name': qualified_name})


class _PartialStandIn:
    """Inert stand-in for ``functools.partial``: keeps ``func``, ``args``, ``keywords``; never calls."""

    def __init__(self, func: object = None, *args: object) -> None:
        self.func = func
        self.args: tuple[object, ...] = args
        self.keywords: dict[str, object] = {}

    def __setstate__(self, state: object) -> None:
        # functools.partial pickles its state as (func, args, keywords, __dict__).
        if isinstance(state, tuple) and len(state) == 4:
            func, args, keywords, _ = state
            self.func = func
            self.args = tuple(args) if isinstance(args, tuple) else ()
            self.keywords = dict(keywords) if isinstance(keywords, dict) else {}

    def describe(self) -> str:
        name = getattr(self.func, 'qualified_name', repr(self.func))
        arguments = [repr(a) for a in self.args] + [f'{k}={v!r}' for k, v in sorted(self.keywords.items())]
        return f'functools.partial({name}, {", ".join(arguments)})'


SEED_STAND_INS: dict[str, type] = {
    'functools.partial': _PartialStandIn,
    'torch.optim.rmsprop.RMSprop': _reference('torch.optim.rmsprop.RMSprop'),
    'torch.optim.lr_scheduler.ExponentialLR': _reference('torch.optim.lr_scheduler.ExponentialLR'),
    'pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint':
        _reference('pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint'),
}
"""Globals a seed checkpoint may name beyond PyTorch's tensor rebuilders, each mapped to an inert stand-in."""

_UNSUPPORTED_GLOBAL = re.compile(r'GLOBAL ([\w.]+)')  # torch words it two ways; both name it so


def _torch_load_seed(path: Path) -> dict[str, Any]:
    stand_ins: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (stand_in, name) for name, stand_in in SEED_STAND_INS.items()]
    try:
        with torch.serialization.safe_globals(stand_ins):
            loaded = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        match = _UNSUPPORTED_GLOBAL.search(str(err))
        if match:
            name = match.group(1)
            raise CheckpointError(f'{path}: refused: it names the global {name!r}, which is not one of the '
                                  f'known seed checkpoint globals; nothing in it was executed') from err
        raise CheckpointError(f'{path}: refused: not loadable as weights only ({str(err).splitlines()[0]})') from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f'{path}: unreadable PyTorch checkpoint: {str(err).splitlines()[0]}') from err
    if not isinstance(loaded, dict):
        raise CheckpointError(f'{path}: a PyTorch file holding {type(loaded).__name__}, not a Lightning checkpoint')
    return loaded


def _describe_hyper_parameter(value: object) -> object:
    if isinstance(value, _PartialStandIn):
        return value.describe()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def _seed_config(path: Path, hyper: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> StereoNetConfig:
    first_conv = state_dict.get('feature_extractor.net.segment_0_conv_0.weight')
    if first_conv is None or first_conv.dim() != 4:
        raise CheckpointError(f'{path}: no feature_extractor.net.segment_0_conv_0.weight: not a StereoNet checkpoint')
    in_channels = int(first_conv.shape[1])  # commit 9c0260f has no in_channels hyper-parameter (always 3)
    if 'in_channels' in hyper and int(hyper['in_channels']) != in_channels:
        raise CheckpointError(f'{path}: hyper-parameter in_channels={hyper["in_channels"]} but the first '
                              f'convolution takes {in_channels} channels')
    try:
        return StereoNetConfig(
            in_channels=in_channels,
            k_downsampling_layers=int(hyper.get('k_downsampling_layers', 3)),
            k_refinement_layers=int(hyper.get('k_refinement_layers', 3)),
            feature_channels=int(hyper.get('feature_extractor_filters', 32)),
            cost_filter_channels=int(hyper.get('cost_volumizer_filters', 32)),
            refiner_channels=32,  # hard-coded in the seed
            max_disparity=int(hyper.get('candidate_disparities', 256)),
            disparity_grid='seed_linspace', cost_volume_border='zero', align_corners=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f'{path}: unusable seed hyper-parameters {dict(hyper)!r}: {err}') from err


def _load_seed(path: Path) -> Checkpoint:
    loaded = _torch_load_seed(path)
    state_dict = loaded.get('state_dict')
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f'{path}: no state_dict: not a Lightning checkpoint (keys {sorted(loaded)[:8]})')
    hyper = loaded.get('hyper_parameters') or {}
    if not isinstance(hyper, Mapping):
        raise CheckpointError(f'{path}: hyper_parameters is a {type(hyper).__name__}, expected a dict')
    tensors = {str(key): value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    config = _seed_config(path, hyper, tensors)
    base = KEYSTONE_GRAY_CONTRACT if config.in_channels == 1 else SCENEFLOW_RGB_CONTRACT
    contract = dataclasses.replace(base, max_disparity=float(config.max_disparity))
    generation = 'lightning-1.x (seed commit 9c0260f)' if 'in_channels' not in hyper else 'lightning-2.x (seed)'
    provenance = {
        'source': 'andrewlstewart/StereoNet_PyTorch',
        'seed_format': generation,
        'pytorch_lightning_version': str(loaded.get('pytorch-lightning_version', 'unknown')),
        'epoch': loaded.get('epoch'),
        'global_step': loaded.get('global_step'),
        'seed_hyper_parameters': {str(k): _describe_hyper_parameter(v) for k, v in hyper.items()},
        'converted_from': path.name,
        'converted_from_sha256': _sha256(path),
    }
    return Checkpoint(config=config, contract=contract, state_dict=tensors, provenance=provenance)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


# --- entry points -----------------------------------------------------------------------------------

def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a checkpoint of either format, told by its structure (not by its name or first byte).

    Raises:
        CheckpointError: missing or unreadable file, an unknown format, a refused pickle global
            (named in the message), or weights that are not a StereoNet.
    """
    path = Path(path)
    try:
        with path.open('rb') as stream:
            head = stream.read(9)
            size = os.fstat(stream.fileno()).st_size
            is_safetensors = _has_safetensors_header(stream, head, size)
    except OSError as err:
        raise CheckpointError(f'cannot open checkpoint {path}: {err.strerror}') from err
    # Safetensors first: its first byte is the header length's lowest, 0x80 for 1 header in 32 (the
    # header is padded to a multiple of 8), the same first byte as a pickle's.
    if is_safetensors:
        return _load_ours(path)
    if head.startswith(b'PK\x03\x04') or head[:1] == b'\x80':
        return _load_seed(path)  # a zip (torch >= 1.6) or legacy pickle written by torch.save
    raise CheckpointError(f'{path}: neither a stereonet_ros safetensors file nor a PyTorch Lightning checkpoint')


def _has_safetensors_header(stream: BinaryIO, head: bytes, size: int) -> bool:
    """Safetensors by structure: an 8-byte little-endian length, then that many bytes of JSON object,
    all inside the file (``stream`` is positioned after ``head``)."""
    if len(head) < 9 or head[8:9] != b'{':
        return False
    (length,) = struct.unpack('<Q', head[:8])
    if length > min(size - 8, 100_000_000):
        return False
    raw = head[8:] + stream.read(length - 1)
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False


def convert_checkpoint(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Checkpoint:
    """Read any supported checkpoint and write it in our safetensors format. Returns what was written."""
    checkpoint = load_checkpoint(source)
    checkpoint.build_model()  # refuse weights that do not fit before writing anything
    save_checkpoint(destination, checkpoint)
    return checkpoint
