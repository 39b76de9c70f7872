"""The ROS node's parameters as a frozen dataclass, validated without ROS.

Every field is one ROS parameter of ``stereonet_node`` (same name, type and default); the field's
metadata holds the description and range the node declares, so this file is the single source of
truth for ``config/stereonet.yaml``, the parameter descriptors and the README table. Names follow
image_pipeline's stereo_image_proc where the meaning is the same (``approximate_sync``,
``approximate_sync_tolerance_seconds``, ``queue_size``, ``use_color``, ``avoid_point_cloud_padding``,
``use_system_default_qos``, ``min_disparity``).

A bad value raises :class:`NodeConfigError` (a :class:`~stereonet_ros.config.ConfigError`) naming the
key and the value, so the node can refuse a run-time change with that reason and keep the old value.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stereonet_ros.config import ConfigError, build, to_dict
from stereonet_ros.image_compression import TRANSPORTS
from stereonet_ros.backends import BACKENDS, Backend, PrecisionChoice
from stereonet_ros.inference_common import DEFAULT_MAX_PIXELS, MAX_INFERENCE_SCALE, MIN_INFERENCE_SCALE
from stereonet_ros.local_search import AUTO, MAX_REACH_PX

Transport = Literal['raw', 'compressed']

OUTPUT_TOPICS: dict[str, str] = {
    'disparity': 'stereo_msgs/msg/DisparityImage',
    'points2': 'sensor_msgs/msg/PointCloud2',
    'depth': 'sensor_msgs/msg/Image',
    'confidence': 'sensor_msgs/msg/Image',
    'disparity/image_color': 'sensor_msgs/msg/Image',
}
"""The node's outputs (relative topic -> message type), in the order it declares them; the node creates its
publishers from this, and the viewer layouts in ``config/`` are checked against it (with :data:`DIAGNOSTICS_TOPIC`)."""
DIAGNOSTICS_TOPIC = '/diagnostics'
"""Where the node publishes its diagnostic_msgs/DiagnosticArray (absolute, as every ROS node does)."""

# 'auto', 'cpu', 'cuda' or 'cuda:N' (whether the device exists is checked when the model loads).
_DEVICE_PATTERN = re.compile(r'^(auto|cpu|cuda(:\d+)?)$')


class NodeConfigError(ConfigError):
    """A node parameter has a value the node cannot use (the message names key and value)."""


@dataclass(frozen=True)
class ParameterSpec:
    """How a field is declared as a ROS parameter.

    Attributes:
        description: the ParameterDescriptor's description.
        low, high: inclusive range (IntegerRange / FloatingPointRange), or None.
        choices: allowed string values, or None (stated in ``additional_constraints``).
        read_only: fixed at start-up (e.g. QoS: subscriptions are not re-created).
    """

    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = False

    @property
    def constraints(self) -> str:
        """Human-readable constraints (``additional_constraints``)."""
        if self.choices is not None:
            return 'one of ' + ', '.join(repr(choice) for choice in self.choices)
        if self.low is not None and self.high is not None:
            return f'in [{self.low}, {self.high}]'
        return ''


def _param(default: Any, description: str, low: float | None = None, high: float | None = None,
           choices: tuple[str, ...] | None = None, read_only: bool = False) -> Any:
    spec = ParameterSpec(description, low, high, choices, read_only)
    return field(default=default, metadata={'spec': spec})


@dataclass(frozen=True)
class NodeConfig:
    """Parameters of ``stereonet_node`` (defaults = ``config/stereonet.yaml``)."""

    queue_size: int = _param(5, 'Messages per input topic the synchronizer holds (as stereo_image_proc)', 1, 1000)
    approximate_sync: bool = _param(
        False, 'Pair the four inputs by approximate instead of identical stamps (as stereo_image_proc)')
    approximate_sync_tolerance_seconds: float = _param(
        0.0, 'approximate_sync only: largest stamp spread within a set, seconds; 0 = unbounded '
        '(as stereo_image_proc)', 0.0, 10.0)
    use_color: bool = _param(True, 'Add the left image colour as an rgb field to points2 (as stereo_image_proc)')
    avoid_point_cloud_padding: bool = _param(
        False, 'Pack points2 without alignment padding: 12/16 instead of 16/32 bytes per point '
        '(as stereo_image_proc)')
    use_system_default_qos: bool = _param(
        False, 'Subscribe with the system default QoS (reliable) instead of sensor data QoS (best effort); '
        'read-only (as stereo_image_proc)', read_only=True)
    image_transport: Transport = _param(
        'raw', "Transport of the image inputs, as image_transport names it: 'raw' subscribes sensor_msgs/Image on "
        "left/image_rect, right/image_rect and left/image_rect_color; 'compressed' subscribes "
        'sensor_msgs/CompressedImage (PNG or JPEG, 8 or 16 bit) on each of them + /compressed. The camera_info '
        'topics do not change; read-only', choices=TRANSPORTS, read_only=True)
    checkpoint: str = _param('', "StereoNet checkpoint (.safetensors, a seed .ckpt, or an .onnx from "
                             "stereonet-export); '' = the bundled default")
    backend: Backend = _param(
        'auto', "Inference backend: 'auto' runs the bundled default in ONNX Runtime on a CPU in fp32 (faster there, "
        "and no PyTorch needed) and in PyTorch otherwise, a checkpoint file in PyTorch and an .onnx file in ONNX "
        "Runtime; 'pytorch' or 'onnxruntime' to insist", choices=BACKENDS)
    device: str = _param('auto', "Inference device: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:N'")
    precision: PrecisionChoice = _param(
        'auto', "Inference precision; 'auto' = 'bf16' for the bundled default (in PyTorch) on a CPU with native "
        "bfloat16 (AVX512-BF16, AMX: there a third of ONNX Runtime's float32 time, the same figures), else 'fp32'; "
        "'fp16' needs a CUDA device, 'bf16' a GPU or a CPU with native bfloat16",
        choices=('auto', 'fp32', 'fp16', 'bf16'))
    min_disparity: float = _param(
        0.0, 'Smallest valid disparity, pixels (DisparityImage.min_disparity); smaller values are invalid '
        'and written as min_disparity - 1. stereo_image_proc\'s range, -2048..2048; for this node it is a '
        'validity floor only: the network searches from 0, and d <= 0 (no finite depth) is invalid anyway',
        -2048.0, 2048.0)
    disparity_range: int = _param(
        0, "stereo_image_proc's search range, pixels: with it, disparities above min_disparity + disparity_range - 1 "
        '(its largest) are invalid too and DisparityImage.max_disparity says so; 0 = the network\'s whole range',
        0, 4096)
    min_confidence: float = _param(
        0.0, 'Pixels whose matching confidence (1 - normalized entropy of the soft-argmin distribution; after the '
        "local search, times the answer's photometric agreement (1 + ZNCC) / 2) is below this are invalid; "
        '0 = keep all', 0.0, 1.0)
    inference_threads: int = _param(
        0, 'CPU threads the network and the local search run on; 0 = every usable CPU. All CPUs but one leaves a '
        'core to pair messages and run DDS: every set pairs under load, but fewer are answered (2 cores, 10 Hz: '
        '2,400 of 2,400 sets paired and 167 answered, against 2,129 and 268 with both cores)', 0, 1024)
    inference_scale: float = _param(
        1.0, 'Run the network on images resized by this factor: below 1 faster, above 1 finer (about scale^2 '
        'the time); outputs are at the input resolution, in its pixels', MIN_INFERENCE_SCALE, MAX_INFERENCE_SCALE)
    refine: bool = _param(
        True, "Run the refiner: false answers with the cost volume's soft argmin carried to the input size guided "
        "by the image (the bundled default's export without refiners where backend runs it in ONNX Runtime, a "
        'checkpoint file in PyTorch), for about a third of the time at a given size; with inference_scale 2 it costs '
        '1.4 times what the whole network does at 1 and scores better on both real pairs (README, accuracy against '
        'time)')
    local_search_px: int = _param(
        AUTO, "Search the photometric cost within this many pixels of the network's answer (and of the best of "
        "its neighbours' answers 4 and 16 px away), at half the size and then at the full one, and move each pixel "
        'where a 7x7 window correlates best (ZNCC at least 0.85, a true peak, refined to a fraction of a pixel); '
        "0 = the network's answer as it is; -1 = 4 where the network runs on the CPU (a fifth to a third of its time; "
        'better in every view of every set measured at the default settings) and 0 on a GPU (the search runs on '
        'the host and would cost more than the network there). README, local search', AUTO, MAX_REACH_PX)
    sgbm_fallback: bool = _param(
        True, "With the local search: a pixel whose answer's confidence is below 0.7 takes the answer of SGBM (a 5x5 "
        "block) where SGBM's matches the images better and lies within the range of the answers within 24 px, and "
        'the search runs again from there; every such answer keeps a confidence below 0.7. false = the searched '
        "answer everywhere, in about three quarters of the time. README, SGBM fallback")
    fill_occlusions: bool = _param(
        True, 'With the local search, last: a pixel the answer says the right camera cannot see (a nearer surface '
        'hides it), whose confidence is below 0.5, takes the lesser of the nearest other answers left and right on '
        'its row (the background); its confidence stays below 0.5. README, occlusion fill')
    left_right_check: bool = _param(
        False, 'With the local search: run the network and the same steps on the mirrored pair too, for the right '
        "view's answer; a pixel whose match there differs by more than 1 px is unsure: its confidence is halved, and "
        'the occlusion fill takes these pixels as the hidden ones. Better in every view of every set measured, in '
        'about twice the time. README, left-right check')
    max_pixels: int = _param(
        DEFAULT_MAX_PIXELS, 'Most pixels the network runs on (after inference_scale): a larger pair runs at the '
        'largest smaller scale that fits (a throttled warning says so), or is dropped when even 0.1 does not; '
        'bounds the memory one pair can take (about 3 GiB at 4 MP on a CPU)', 65_536, 50_000_000)
    diagnostics_period_seconds: float = _param(
        1.0, 'Period of the /diagnostics status and of the stalled-input check, seconds; read-only',
        0.1, 60.0, read_only=True)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            spec: ParameterSpec = item.metadata['spec']
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise NodeConfigError(f'{item.name}={value!r}: must be finite')
            if spec.low is not None and spec.high is not None and not spec.low <= value <= spec.high:
                raise NodeConfigError(f'{item.name}={value!r}: must be in [{spec.low}, {spec.high}]')
            if spec.choices is not None and value not in spec.choices:
                raise NodeConfigError(f'{item.name}={value!r}: must be one of {list(spec.choices)}')
        if not _DEVICE_PATTERN.match(self.device):
            raise NodeConfigError(f"device={self.device!r}: must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> NodeConfig:
        """Defaults updated by ``values`` (parameter name -> value), type-checked and validated.

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or one out of range (named).
        """
        return build(cls, values)

    def with_changes(self, changes: Mapping[str, Any]) -> NodeConfig:
        """A copy with ``changes`` applied, validated as a whole (see :meth:`from_mapping`)."""
        return build(NodeConfig, {**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def changed_keys(self, other: NodeConfig) -> set[str]:
        """Names whose value differs between ``self`` and ``other``."""
        return {name for name in PARAMETER_NAMES if getattr(self, name) != getattr(other, name)}


PARAMETER_SPECS: dict[str, ParameterSpec] = {item.name: item.metadata['spec']
                                             for item in dataclasses.fields(NodeConfig)}
"""Parameter name -> its declaration (description, range, choices, read-only)."""

PARAMETER_NAMES: tuple[str, ...] = tuple(PARAMETER_SPECS)

STEREO_IMAGE_PROC_BLOCK_MATCHING = ('stereo_algorithm', 'prefilter_size', 'prefilter_cap', 'correlation_window_size',
                                    'texture_threshold', 'texture_ratio', 'speckle_size', 'speckle_range',
                                    'disp12_max_diff', 'uniqueness_ratio', 'P1', 'P2', 'full_dp')
"""stereo_image_proc's block-matcher parameters (its disparity node; ``texture_ratio`` is the name it declares,
``texture_threshold`` the one its callback reads). A network has no block matcher: the node accepts them,
so that a params file written for stereo_image_proc does not stop it, and says in one INFO line that it
ignores them. Its ``min_disparity`` and ``disparity_range`` do have a meaning here (NodeConfig)."""

SYNC_KEYS = frozenset({'queue_size', 'approximate_sync', 'approximate_sync_tolerance_seconds'})
"""Changing one of these rebuilds the synchronizer (pending messages are dropped)."""

MODEL_KEYS = frozenset({'checkpoint', 'backend', 'device', 'precision', 'inference_threads', 'refine'})
"""Changing one of these loads a new predictor before the change is accepted."""
