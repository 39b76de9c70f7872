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

Every file is untrusted input. :func:`load_checkpoint` refuses, with a one-line
:class:`CheckpointError` naming the file, anything that is not a regular file (a FIFO or a device
would block or never end), files over :data:`MAX_FILE_BYTES`, and then, before a network is built:
metadata that breaks the schema (types taken from the :class:`StereoNetConfig` and
:class:`InputContract` fields; every number finite), a contract the model does not match, a model
over :data:`MAX_PARAMETERS` or :data:`MAX_ACTIVATION_BYTES_PER_MEGAPIXEL`, and weights with
non-finite values or negative BatchNorm variances. (:meth:`Checkpoint.build_model` refuses weights
whose keys or shapes do not fit the config.) The format is told from the file's structure, not from
one byte (a safetensors header length of 128 modulo 256 starts with 0x80, as a pickle does).
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import pickle
import re
import reprlib
import stat
import struct
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from stereonet_ros.model.architecture import ModelConfigError, StereoNetConfig

if TYPE_CHECKING:
    import torch

    from stereonet_ros.model.stereonet import StereoNet

# PyTorch is imported where tensors are read or built, not here: the metadata side of this module
# (InputContract, config_from_metadata) serves the ONNX Runtime backend, which runs without PyTorch.

FORMAT_NAME = 'stereonet_ros'
FORMAT_VERSION = 1
METADATA_KEY = 'stereonet_ros'  # key of our JSON in the safetensors header's __metadata__

MAX_FILE_BYTES = 1 << 30
"""Largest checkpoint file read (1 GiB): :data:`MAX_PARAMETERS` float32 weights are 200 MB, a seed
``.ckpt`` with its optimizer state about three times that."""
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
"""Largest safetensors JSON header accepted (the safetensors library's own limit)."""
MAX_PARAMETERS = 50_000_000
"""Largest network built, in parameters (200 MB of float32). The shipped default has 0.6 M, the seed
SceneFlow/KeystoneDepth networks (32 channels, K 3-4) under 0.7 M: about 80 times headroom."""
MAX_ACTIVATION_BYTES_PER_MEGAPIXEL = 4 << 30
"""Largest :func:`activation_bytes_per_megapixel` estimate accepted (4 GiB per megapixel of input).
The shipped default estimates 0.4 GiB, the seed networks (max_disparity 256, K 3-4) at most the same."""
MAX_PAD_MULTIPLE = 256
"""Largest input contract ``pad_multiple`` (2^K is at most 64)."""
_MAX_INTEGER = 2**31 - 1  # no integer of a checkpoint's metadata needs more; keeps every product below bounded

Color = Literal['gray', 'rgb']


class CheckpointError(Exception):
    """A checkpoint cannot be opened: missing, unreadable, unsafe, or not a StereoNet.

    The message is always one line (line breaks of a wrapped cause are joined), as CLIs and the node
    print it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(' '.join(part.strip() for part in str(message).splitlines() if part.strip()))


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 6, 6, 3


def _show(value: object) -> str:
    """``repr`` cut short: a message quotes what a file holds, which may be huge."""
    return _SHORT.repr(value)


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


@dataclass(frozen=True)
class InputContract:
    """What the weights expect of their inputs: recorded with them, applied by the Predictor.

    Images are taken in 0..255 units (uint16 scaled by 255/65535), converted to ``color`` (gray:
    ITU-R BT.601 luma of RGB), then normalized per view and channel: ``(x - mean) / std``.
    """

    color: Color
    """'gray' (1 channel) or 'rgb' (3 channels, R, G, B order)."""
    left_mean: tuple[float, ...]
    """Per channel, finite."""
    left_std: tuple[float, ...]
    """Per channel, finite, > 0."""
    right_mean: tuple[float, ...]
    right_std: tuple[float, ...]
    max_disparity: float
    """Largest disparity (input pixels) the weights can output: finite, > 0, at most the model's."""
    pad_multiple: int = 1
    """Inputs are padded (bottom/right, edge values) to a multiple of this, 1..MAX_PAD_MULTIPLE;
    1 = run at the given size."""

    def __post_init__(self) -> None:
        if self.color not in ('gray', 'rgb'):
            raise CheckpointError(f"input_contract.color={_show(self.color)}: must be 'gray' or 'rgb'")
        channels = self.channels
        for name in ('left_mean', 'left_std', 'right_mean', 'right_std'):
            values = getattr(self, name)
            if len(values) != channels:
                raise CheckpointError(f'input_contract.{name}={_show(values)}: needs {channels} value(s) '
                                      f'for {self.color!r}')
            for index, value in enumerate(values):
                if not _is_finite_number(value):
                    raise CheckpointError(f'input_contract.{name}[{index}]={_show(value)}: must be a finite number')
                if name.endswith('std') and value <= 0:
                    raise CheckpointError(f'input_contract.{name}[{index}]={_show(value)}: must be > 0')
        if not _is_finite_number(self.max_disparity) or self.max_disparity <= 0:
            raise CheckpointError(f'input_contract.max_disparity={_show(self.max_disparity)}: must be a finite '
                                  'number > 0')
        if isinstance(self.pad_multiple, bool) or not isinstance(self.pad_multiple, int) \
                or not 1 <= self.pad_multiple <= MAX_PAD_MULTIPLE:
            raise CheckpointError(f'input_contract.pad_multiple={_show(self.pad_multiple)}: must be in '
                                  f'1..{MAX_PAD_MULTIPLE}')

    @property
    def channels(self) -> int:
        return 1 if self.color == 'gray' else 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: object) -> InputContract:
        """From its JSON form, checked as a whole: JSON types here, values in ``__post_init__``.

        Raises:
            CheckpointError: names the key (``input_contract.left_std[0]``) and the value.
        """
        mapping = _json_object('input_contract', values)
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise CheckpointError(f'input_contract: unknown key(s) {_show(unknown)}; known: {sorted(known)}')
        missing = sorted(name for name in known - {'pad_multiple'} if name not in mapping)
        if missing:
            raise CheckpointError(f'input_contract: missing key(s) {missing}')
        color = mapping['color']
        if color not in ('gray', 'rgb'):
            raise CheckpointError(f"input_contract.color={_show(color)}: must be 'gray' or 'rgb'")
        arrays: dict[str, tuple[float, ...]] = {}
        for name in ('left_mean', 'left_std', 'right_mean', 'right_std'):
            values_of_name = mapping[name]
            if not isinstance(values_of_name, list):
                raise CheckpointError(f'input_contract.{name}={_show(values_of_name)}: must be a list of numbers')
            arrays[name] = tuple(_number(f'input_contract.{name}[{index}]', value)
                                 for index, value in enumerate(values_of_name))
        return cls(color=typing.cast(Color, color), **arrays,
                   max_disparity=_number('input_contract.max_disparity', mapping['max_disparity']),
                   pad_multiple=_integer('input_contract.pad_multiple', mapping.get('pad_multiple', 1)))


# --- the metadata schema ----------------------------------------------------------------------------

def _json_object(where: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f'{where}: expected a JSON object, got {type(value).__name__}')
    return value


def _integer(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f'{where}={_show(value)}: must be an integer')
    if abs(value) > _MAX_INTEGER:
        raise CheckpointError(f'{where}={_show(value)}: out of range (at most {_MAX_INTEGER} in magnitude)')
    return value


def _number(where: str, value: object) -> float:
    if not _is_finite_number(value):
        raise CheckpointError(f'{where}={_show(value)}: must be a finite number')
    return float(value)  # type: ignore[arg-type]


def _typed(where: str, value: object, hint: object) -> object:
    """``value`` checked against a dataclass field's type ``hint``: what JSON can hold, finite numbers."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if not any(type(value) is type(option) and value == option for option in allowed):
            raise CheckpointError(f'{where}={_show(value)}: must be one of {", ".join(map(repr, allowed))}')
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (item for item in options if item is not type(None)):
            try:
                return _typed(where, value, option)
            except CheckpointError as err:
                errors.append(str(err))
        raise CheckpointError('; '.join(errors))
    if hint is bool:
        if not isinstance(value, bool):
            raise CheckpointError(f'{where}={_show(value)}: must be true or false')
        return value
    if hint is int:
        return _integer(where, value)
    if hint is float:
        return _number(where, value)
    if hint is str:
        if not isinstance(value, str):
            raise CheckpointError(f'{where}={_show(value)}: must be a string')
        return value
    raise CheckpointError(f'{where}: a field of type {hint!r}, which the checkpoint schema does not check yet')


def config_from_metadata(values: object, config_class: type[StereoNetConfig] = StereoNetConfig,
                         where: str = 'model_config') -> StereoNetConfig:
    """A model config from its JSON form: each value checked against its dataclass field's type
    (int, float (finite), bool, str, Literal, optional), then the config's own range checks.

    The field list comes from ``config_class``: a field added to :class:`StereoNetConfig` is checked
    by its type without a change here.

    Raises:
        CheckpointError: names the key (``model_config.feature_channels``) and the value.
    """
    mapping = _json_object(where, values)
    hints = typing.get_type_hints(config_class)
    known = [item.name for item in dataclasses.fields(config_class)]
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise CheckpointError(f'{where}: unknown key(s) {_show(unknown)}; known: {sorted(known)}')
    checked = {name: _typed(f'{where}.{name}', mapping[name], hints[name]) for name in known if name in mapping}
    try:
        return config_class.from_dict(checked)
    except (ModelConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f'{where}: {err}') from err


def activation_bytes_per_megapixel(config: StereoNetConfig) -> int:
    """A rough float32 inference-memory estimate per megapixel of input: the largest of the stages'
    live tensors (input and output of one layer), not a sum; a bound for refusing absurd configs.

    - feature extractor: both views (a batch of 2), first layer at 1/2: ``2 * 2 * F * P / 4``;
    - cost volume and 3-D filter at 1/2^K: ``(F + 2 * C) * D * P / 4^K``;
    - refiners, the last at full size: ``3 * R_c * P`` (input, output, residual), when R > 0.
    """
    pixels = 1_000_000
    feature = 2 * 2 * config.feature_channels * pixels // 4
    cost = (config.feature_channels + 2 * config.cost_filter_channels) * config.num_candidates * pixels \
        // config.downsampling_factor ** 2
    refine = 3 * config.refiner_channels * pixels if config.k_refinement_layers > 0 else 0
    return 4 * max(feature, cost, refine)


def state_size(config: StereoNetConfig) -> int:
    """Numbers in a StereoNet's state_dict (weights, biases, BatchNorm statistics), from the config alone.

    Counted from the architecture (``stereonet_ros.model.stereonet``'s module doc), without building
    anything, so that an absurd config is refused before memory is touched; a test holds it equal to
    the built model's count.
    """
    features, cost, refiner = config.feature_channels, config.cost_filter_channels, config.refiner_channels

    def residual_blocks(channels: int) -> int:  # six blocks: two bias-free 3x3 convs and two BatchNorms each
        return 6 * (2 * 9 * channels * channels + 2 * (4 * channels + 1))

    extractor = (25 * config.in_channels * features + features  # first 5x5 stride-2 convolution
                 + (config.k_downsampling_layers - 1) * (25 * features * features + features)
                 + residual_blocks(features) + 9 * features * features + features)
    cost_filter = (sum(27 * channels_in * cost + cost + 4 * cost + 1 for channels_in in [features] + [cost] * 3)
                   + 27 * cost + 1)
    refiners = config.k_refinement_layers * (9 * (config.refiner_guide_channels + 1) * refiner + refiner
                                             + residual_blocks(refiner) + 9 * refiner + 1)
    return extractor + cost_filter + refiners


def check_model_size(config: StereoNetConfig) -> None:
    """Refuse a config whose network would exceed :data:`MAX_PARAMETERS` (counted by :func:`state_size`)
    or :data:`MAX_ACTIVATION_BYTES_PER_MEGAPIXEL`, before anything is allocated.

    Raises:
        CheckpointError: 'model too large to build', with the figure and the limit.
    """
    parameters = state_size(config)
    if parameters > MAX_PARAMETERS:
        raise CheckpointError(f'model too large to build: {parameters:.3g} parameters (limit {MAX_PARAMETERS:.3g}) '
                              f'for feature_channels={config.feature_channels}, cost_filter_channels='
                              f'{config.cost_filter_channels}, refiner_channels={config.refiner_channels}')
    activations = activation_bytes_per_megapixel(config)
    if activations > MAX_ACTIVATION_BYTES_PER_MEGAPIXEL:
        raise CheckpointError(
            f'model too large to build: about {activations / 2**30:.3g} GiB of activations per megapixel (limit '
            f'{MAX_ACTIVATION_BYTES_PER_MEGAPIXEL / 2**30:g} GiB) for max_disparity={config.max_disparity}, '
            f'feature_channels={config.feature_channels}, cost_filter_channels={config.cost_filter_channels}, '
            f'refiner_channels={config.refiner_channels}, k_downsampling_layers={config.k_downsampling_layers}')


def check_contract_fits(config: StereoNetConfig, contract: InputContract) -> None:
    """The contract and the model describe one network: channels agree, contract max_disparity <= the model's."""
    if contract.channels != config.in_channels:
        raise CheckpointError(f'input_contract.color={contract.color!r} gives {contract.channels} channel(s) but '
                              f'model_config.in_channels={config.in_channels}')
    if contract.max_disparity > config.max_disparity:
        raise CheckpointError(f"input_contract.max_disparity={contract.max_disparity!r}: more than the model's "
                              f'max_disparity={config.max_disparity}')


def check_weights(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Weights hold usable numbers: floating-point values finite, BatchNorm variances >= 0 (a negative
    one gives NaN everywhere once folded), no complex or boolean tensors. (That they fit the config is
    checked where the model is built, :meth:`Checkpoint.build_model`.)

    Raises:
        CheckpointError: the first offending key and why.
    """
    import torch

    for key, tensor in state_dict.items():
        if tensor.is_floating_point():
            if not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f'weight {key} has non-finite values (NaN or inf)')
            if key.endswith('running_var') and bool((tensor < 0).any()):
                raise CheckpointError(f'weight {key}: a BatchNorm running_var has negative values')
        elif tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise CheckpointError(f'weight {key} has dtype {tensor.dtype}; expected floating point')


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
        """A StereoNet (eval mode, CPU) holding these weights; every key must match.

        Raises:
            CheckpointError: a model over the size bounds (checked before anything is allocated), or
                weights that do not fit it or hold non-finite values.
        """
        from stereonet_ros.model.stereonet import StereoNet

        check_model_size(self.config)
        check_weights(self.state_dict)
        model = StereoNet(self.config)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(self.state_dict))
        unexpected = sorted(set(self.state_dict) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f'weights do not fit the model config: missing {missing[:5]}'
                                  f'{"..." if len(missing) > 5 else ""}, unexpected {_show(unexpected[:5])}'
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


def _safetensors_header(data: bytes) -> tuple[dict[str, Any] | None, str]:
    """The JSON header of a safetensors file, told by structure: an 8-byte little-endian length, then
    that many bytes of JSON object, all inside the file. ``(None, why not)`` for anything else."""
    if len(data) < 10:
        return None, 'shorter than a safetensors header'
    (length,) = struct.unpack('<Q', data[:8])
    if length > min(len(data) - 8, MAX_SAFETENSORS_HEADER_BYTES):
        return None, f'header length {length} does not fit the {len(data)}-byte file'
    raw = data[8:8 + length]
    if raw[:1] != b'{':
        return None, 'the header is not a JSON object'
    try:
        header = json.loads(raw)
    except RecursionError:
        return None, 'the JSON header is nested too deeply'
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, f'malformed JSON header ({err})'
    if not isinstance(header, dict):
        return None, 'the header is not a JSON object'
    return header, ''


def _metadata_document(header: Mapping[str, Any]) -> object | None:
    """Our JSON document (parsed) from a safetensors header; None where the file has none."""
    metadata = header.get('__metadata__')
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise CheckpointError(f'malformed safetensors metadata: expected a JSON object, got {type(metadata).__name__}')
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    if not isinstance(text, str):
        raise CheckpointError(f'malformed safetensors metadata: {METADATA_KEY} is a {type(text).__name__}, '
                              'not a string')
    try:
        document: object = json.loads(text)
    except RecursionError as err:
        raise CheckpointError('malformed stereonet_ros metadata: JSON nested too deeply') from err
    except ValueError as err:
        raise CheckpointError(f'malformed stereonet_ros metadata: not JSON ({err})') from err
    return document


def parse_metadata(document: object) -> tuple[StereoNetConfig, InputContract, dict[str, Any]]:
    """Our metadata document checked as a whole against the schema, before anything is built.

    Returns:
        The model config, the input contract (checked against each other) and the provenance.

    Raises:
        CheckpointError: 'malformed stereonet_ros metadata: <key>=<value>: <requirement>'.
    """
    try:
        if not isinstance(document, dict):
            raise CheckpointError(f'expected a JSON object, got {type(document).__name__}')
        content: dict[str, Any] = document
        if content.get('format') != FORMAT_NAME:
            raise CheckpointError(f'format={_show(content.get("format"))} is not {FORMAT_NAME!r}')
        version = _integer('format_version', content.get('format_version', 0))
        if version > FORMAT_VERSION:
            raise CheckpointError(f'format version {version} is newer than this stereonet_ros reads '
                                  f'({FORMAT_VERSION}); update stereonet_ros')
        if 'model_config' not in content or 'input_contract' not in content:
            raise CheckpointError('needs both model_config and input_contract')
        config = config_from_metadata(content['model_config'])
        contract = InputContract.from_dict(content['input_contract'])
        check_contract_fits(config, contract)
        provenance = dict(_json_object('provenance', content.get('provenance', {})))
    except CheckpointError as err:
        raise CheckpointError(f'malformed stereonet_ros metadata: {err}') from err
    return config, contract, provenance


def _load_ours(data: bytes, header: Mapping[str, Any]) -> Checkpoint:
    safetensors_torch = _safetensors()
    from safetensors import SafetensorError

    document = _metadata_document(header)
    if document is None:
        raise CheckpointError('a safetensors file without stereonet_ros metadata (model config and input '
                              'contract); convert it with stereonet-convert')
    config, contract, provenance = parse_metadata(document)
    check_model_size(config)
    try:
        state_dict: dict[str, torch.Tensor] = safetensors_torch.load(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f'unreadable safetensors data: {err}') from err
    check_weights(state_dict)
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


def _torch_load_seed(data: bytes) -> dict[str, Any]:
    import torch

    stand_ins: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (stand_in, name) for name, stand_in in SEED_STAND_INS.items()]
    try:
        with torch.serialization.safe_globals(stand_ins):
            loaded = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        match = _UNSUPPORTED_GLOBAL.search(str(err))
        if match:
            name = match.group(1)
            raise CheckpointError(f'refused: it names the global {name!r}, which is not one of the '
                                  f'known seed checkpoint globals; nothing in it was executed') from err
        raise CheckpointError(f'refused: not loadable as weights only ({str(err).splitlines()[0]})') from err
    except Exception as err:
        # The weights-only unpickler walks untrusted bytes: a truncated or garbled file raises whatever
        # its stack machine trips on (IndexError, KeyError, struct.error, EOFError, zip and storage
        # errors). None of it ran pickled code; every one means the same thing to the caller.
        reason = (str(err).splitlines() or [''])[0]
        raise CheckpointError(f'unreadable PyTorch checkpoint: {type(err).__name__}: {_show(reason)}') from err
    if not isinstance(loaded, dict):
        raise CheckpointError(f'a PyTorch file holding {type(loaded).__name__}, not a Lightning checkpoint')
    return loaded


def _describe_hyper_parameter(value: object) -> object:
    if isinstance(value, _PartialStandIn):
        return value.describe()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


SEED_HYPER_PARAMETERS = {
    'k_downsampling_layers': 'k_downsampling_layers',
    'k_refinement_layers': 'k_refinement_layers',
    'feature_extractor_filters': 'feature_channels',
    'cost_volumizer_filters': 'cost_filter_channels',
    'candidate_disparities': 'max_disparity',
}
"""Seed hyper-parameter -> StereoNetConfig field, for those that shape the network."""


def _seed_config(hyper: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> StereoNetConfig:
    first_conv = state_dict.get('feature_extractor.net.segment_0_conv_0.weight')
    if first_conv is None or first_conv.dim() != 4:
        raise CheckpointError('no feature_extractor.net.segment_0_conv_0.weight: not a StereoNet checkpoint')
    in_channels = int(first_conv.shape[1])  # commit 9c0260f has no in_channels hyper-parameter (always 3)
    if 'in_channels' in hyper and _integer('seed hyper-parameter in_channels', hyper['in_channels']) != in_channels:
        raise CheckpointError(f'hyper-parameter in_channels={hyper["in_channels"]} but the first '
                              f'convolution takes {in_channels} channels')
    values: dict[str, Any] = {
        'in_channels': in_channels,
        'refiner_channels': 32,  # hard-coded in the seed
        'disparity_grid': 'seed_linspace', 'cost_volume_border': 'zero', 'align_corners': True,
    }
    for seed_name, name in SEED_HYPER_PARAMETERS.items():
        if seed_name in hyper:
            values[name] = _integer(f'seed hyper-parameter {seed_name}', hyper[seed_name])
    defaults = StereoNetConfig(max_disparity=256)  # the seed's defaults: K = R = 3, 32 filters, 256
    for name in SEED_HYPER_PARAMETERS.values():
        values.setdefault(name, getattr(defaults, name))
    try:
        return StereoNetConfig.from_dict(values)
    except (ModelConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f'unusable seed hyper-parameters: {err}') from err


def _load_seed(path: Path, data: bytes) -> Checkpoint:
    loaded = _torch_load_seed(data)
    state_dict = loaded.get('state_dict')
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f'no state_dict: not a Lightning checkpoint (keys {_show(sorted(map(str, loaded))[:8])})')
    hyper = loaded.get('hyper_parameters') or {}
    if not isinstance(hyper, Mapping):
        raise CheckpointError(f'hyper_parameters is a {type(hyper).__name__}, expected a dict')
    import torch

    tensors = {str(key): value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    config = _seed_config(hyper, tensors)
    base = KEYSTONE_GRAY_CONTRACT if config.in_channels == 1 else SCENEFLOW_RGB_CONTRACT
    contract = dataclasses.replace(base, max_disparity=float(config.max_disparity))
    check_model_size(config)
    check_weights(tensors)
    generation = 'lightning-1.x (seed commit 9c0260f)' if 'in_channels' not in hyper else 'lightning-2.x (seed)'
    provenance = {
        'source': 'andrewlstewart/StereoNet_PyTorch',
        'seed_format': generation,
        'pytorch_lightning_version': str(loaded.get('pytorch-lightning_version', 'unknown')),
        'epoch': loaded.get('epoch'),
        'global_step': loaded.get('global_step'),
        'seed_hyper_parameters': {str(k): _describe_hyper_parameter(v) for k, v in hyper.items()},
        'converted_from': path.name,
        'converted_from_sha256': hashlib.sha256(data).hexdigest(),
    }
    return Checkpoint(config=config, contract=contract, state_dict=tensors, provenance=provenance)


_FILE_KINDS = ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISCHR, 'a character device'),
               (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'))


def _read_regular_file(path: Path) -> bytes:
    """The whole file, refusing anything but a regular file of at most :data:`MAX_FILE_BYTES`.

    Opened non-blocking, so that a FIFO without a writer is refused instead of blocking the caller
    (an executor thread, in the node) for ever; the check is on the opened descriptor, so the file
    cannot be swapped between the check and the read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise CheckpointError(f'cannot open checkpoint {path}: {err.strerror}') from err
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(status.st_mode)), 'not a file')
            raise CheckpointError(f'{path}: not a regular file ({kind}); a checkpoint must be a file')
        if status.st_size > MAX_FILE_BYTES:
            raise CheckpointError(f'{path}: {status.st_size} bytes, more than a checkpoint may be '
                                  f'({MAX_FILE_BYTES} bytes)')
        fcntl.fcntl(descriptor, fcntl.F_SETFL, fcntl.fcntl(descriptor, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(descriptor)
        raise
    with os.fdopen(descriptor, 'rb', buffering=0) as stream:
        try:
            data = stream.read(MAX_FILE_BYTES + 1)
        except OSError as err:
            raise CheckpointError(f'cannot read checkpoint {path}: {err.strerror}') from err
    if len(data) > MAX_FILE_BYTES:
        raise CheckpointError(f'{path}: more than a checkpoint may be ({MAX_FILE_BYTES} bytes)')
    return data


# --- entry points -----------------------------------------------------------------------------------

def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a checkpoint of either format, told by its structure (not by its name or first byte).

    A safetensors file is an 8-byte little-endian header length, then a JSON object of that length
    inside the file; else a zip (``PK\\x03\\x04``) or a legacy pickle (0x80) is a PyTorch file. The
    metadata, the model's size and the weights are checked before a network is built (see the module
    doc); nothing pickled is executed.

    Raises:
        CheckpointError: always one line with the path: missing, not a regular file, too large, an
            unknown format, a refused pickle global (named), metadata against the schema (key and
            value named), a model over the size bounds, or unusable weight values.
    """
    path = Path(path)
    data = _read_regular_file(path)
    try:
        header, not_safetensors = _safetensors_header(data)
        if header is not None:
            return _load_ours(data, header)
        if data.startswith(b'PK\x03\x04') or data[:1] == b'\x80':
            return _load_seed(path, data)  # a zip (torch >= 1.6) or legacy pickle written by torch.save
        if data[8:9] == b'{':
            raise CheckpointError(f'not a readable safetensors file: {not_safetensors}')
        raise CheckpointError('neither a stereonet_ros safetensors file nor a PyTorch Lightning checkpoint')
    except CheckpointError as err:
        raise CheckpointError(f'{path}: {err}') from err
    except Exception as err:
        # A last net at the boundary: whatever else a hostile file trips (MemoryError, a library's
        # own error type) is still a checkpoint that cannot be loaded, and must not kill a caller.
        raise CheckpointError(f'{path}: cannot load the checkpoint: {type(err).__name__}: {_show(str(err))}') from err


def convert_checkpoint(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Checkpoint:
    """Read any supported checkpoint and write it in our safetensors format. Returns what was written."""
    checkpoint = load_checkpoint(source)
    checkpoint.build_model()  # refuse weights that do not fit before writing anything
    save_checkpoint(destination, checkpoint)
    return checkpoint
