"""Exact edits of a StereoNet's weights: change a parametrization, revive a dead refiner, switch
parts off for a measurement.

Every function takes a config and a state_dict and returns new ones; nothing is edited in place.
Refiner ``i``'s first convolution, ``refiners.i.net.segment_0_conv_0``, has weight
``(W, G + 1, 3, 3)``: input channels ``0..G-1`` are the guide (``G = config.refiner_guide_channels``:
the resized reference image, then with the photometric cue its difference from the warped target),
channel ``G`` the disparity divided by ``config.refiner_disparity_unit`` (see
:class:`~stereonet_ros.model.stereonet.Refiner`). Its last convolution,
``refiners.i.net.segment_2_conv_0``, writes the residual in input pixels.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from stereonet_ros.model.stereonet import Refiner, StereoNetConfig

StateDict = dict[str, torch.Tensor]

DEAD_REFINER_WEIGHT = 0.01
"""A refiner whose first convolution has no guide-image weight of magnitude ``>=`` this is dead: it
no longer looks at the image. PyTorch's default initialization draws them uniformly in
``+-1 / sqrt(fan_in)``, 0.24 for a gray guide (fan_in 2 * 3 * 3) and 0.17 for RGB (4 * 3 * 3); in the
first shipped default the two coarser refiners kept image weights up to 0.16 and 0.08, while the
full-resolution one had decayed to 0.0024 (and its other layers with it). The image channels are
judged, not the disparity channel, whose scale depends on ``refiner_disparity_unit``."""


class SurgeryError(ValueError):
    """The state_dict does not have the refiner weights the config describes."""


def _first_conv(index: int) -> str:
    return f'refiners.{index}.net.segment_0_conv_0.weight'


def _last_conv(index: int) -> tuple[str, str]:
    return f'refiners.{index}.net.segment_2_conv_0.weight', f'refiners.{index}.net.segment_2_conv_0.bias'


def _copy(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    return {key: value.detach().clone() for key, value in state_dict.items()}


def _check(config: StereoNetConfig, state_dict: Mapping[str, torch.Tensor]) -> None:
    expected = config.refiner_guide_channels + 1
    for index in range(config.k_refinement_layers):
        key = _first_conv(index)
        weight = state_dict.get(key)
        if weight is None or weight.dim() != 4 or weight.shape[1] != expected:
            shape = None if weight is None else tuple(weight.shape)
            raise SurgeryError(f'{key}: expected (W, {expected}, k, k), got {shape}')


def with_disparity_unit(config: StereoNetConfig, state_dict: Mapping[str, torch.Tensor],
                        unit: float) -> tuple[StereoNetConfig, StateDict]:
    """The same function with the refiners fed disparity in ``unit`` pixels instead of
    ``config.refiner_disparity_unit``: the disparity channel's first-layer weights are multiplied
    by ``unit / old_unit`` (``w * d / old = (w * unit / old) * d / unit``), so every output is equal
    up to float rounding."""
    _check(config, state_dict)
    new_config = dataclasses.replace(config, refiner_disparity_unit=unit)  # validates the unit
    ratio = float(unit) / float(config.refiner_disparity_unit)
    edited = _copy(state_dict)
    for index in range(config.k_refinement_layers):
        weight = edited[_first_conv(index)]
        weight[:, config.refiner_guide_channels:] *= ratio
    return new_config, edited


def with_photometric_cue(config: StereoNetConfig,
                         state_dict: Mapping[str, torch.Tensor]) -> tuple[StereoNetConfig, StateDict]:
    """The same function with refiners that also take the photometric cue: each first convolution
    gains ``in_channels`` input channels (between the image and the disparity) whose weights are
    zero, so every output is unchanged until training gives the cue weight."""
    _check(config, state_dict)
    if config.refiner_photometric_cue:
        raise SurgeryError('the refiners already take the photometric cue')
    new_config = dataclasses.replace(config, refiner_photometric_cue=True)
    edited = _copy(state_dict)
    channels = config.in_channels
    for index in range(config.k_refinement_layers):
        weight = edited[_first_conv(index)]
        cue = torch.zeros_like(weight[:, :channels])
        edited[_first_conv(index)] = torch.cat((weight[:, :channels], cue, weight[:, channels:]), dim=1)
    return new_config, edited


def dead_refiners(config: StereoNetConfig, state_dict: Mapping[str, torch.Tensor],
                  threshold: float = DEAD_REFINER_WEIGHT) -> list[int]:
    """Indices of the refiners whose first-layer guide weights (image and photometric cue) are all
    below ``threshold`` in magnitude."""
    _check(config, state_dict)
    dead = []
    for index in range(config.k_refinement_layers):
        weight = state_dict[_first_conv(index)][:, :config.refiner_guide_channels]
        # Compared in the weights' dtype: a float32 weight stored as 0.01 is 0.00999999977 in float64.
        if bool(weight.abs().max() < torch.tensor(threshold, dtype=weight.dtype)):
            dead.append(index)
    return dead


def reinitialized_refiners(config: StereoNetConfig, state_dict: Mapping[str, torch.Tensor], indices: list[int],
                           seed: int = 0) -> StateDict:
    """Fresh weights for refiners ``indices``, with their last convolution at zero.

    A zero last layer makes the residual zero, so the network computes what it computed with a
    dead refiner (whose residual was near zero) and can learn from there; the fresh layers below
    it get gradient from the first step on, through the last layer's weights. Refiner ``i`` is
    drawn from ``seed + i`` (PyTorch's default initialization), leaving the global generator as it was.
    """
    _check(config, state_dict)
    edited = _copy(state_dict)
    for index in indices:
        if not 0 <= index < config.k_refinement_layers:
            raise SurgeryError(f'refiner {index}: the model has {config.k_refinement_layers}')
        for key, value in _zero_residual_refiner_state(config, seed + index).items():
            target = f'refiners.{index}.{key}'
            edited[target] = value.to(dtype=edited[target].dtype)
    return edited


def with_refiner_count(config: StereoNetConfig, state_dict: Mapping[str, torch.Tensor], count: int,
                       seed: int = 0) -> tuple[StereoNetConfig, StateDict]:
    """``count`` fresh refiners (``k_refinement_layers``) in place of the old ones, each with a zero
    last layer and drawn as :func:`reinitialized_refiners` draws them; the rest is kept as is.

    Not the same function: the old refiners are gone, and with a zero residual every level only
    resizes the soft argmin. ``count=1`` is the paper's single refinement (one refiner from the cost
    volume's resolution straight to the input's) in place of the hierarchical cascade.
    """
    _check(config, state_dict)
    new_config = dataclasses.replace(config, k_refinement_layers=count)  # validates count
    edited = {key: value for key, value in _copy(state_dict).items() if not key.startswith('refiners.')}
    for index in range(count):
        for key, value in _zero_residual_refiner_state(new_config, seed + index).items():
            edited[f'refiners.{index}.{key}'] = value
    return new_config, edited


def _zero_residual_refiner_state(config: StereoNetConfig, seed: int) -> StateDict:
    """A fresh refiner's weights (keys relative to the refiner) with its last convolution at zero."""
    state = _fresh_refiner_state(config, seed)
    for key in _last_conv(0):
        state[key.removeprefix('refiners.0.')].zero_()
    return state


def _fresh_refiner_state(config: StereoNetConfig, seed: int) -> StateDict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {key: value.detach().clone() for key, value in Refiner(config).state_dict().items()}


def without_image_guidance(config: StereoNetConfig, state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Every refiner as if its guide images were zeros (the guide-ablation check).

    The images enter only the first convolution, linearly, so zeroing its guide-channel weights is
    exactly ``Refiner.forward(zeros, disparity)``, and with the photometric cue
    ``Refiner.forward(zeros, disparity, zeros)`` (a zero target warps to zeros, and 0 - 0 = 0).
    """
    _check(config, state_dict)
    edited = _copy(state_dict)
    for index in range(config.k_refinement_layers):
        edited[_first_conv(index)][:, :config.refiner_guide_channels] = 0.0
    return edited


def truncated_after(config: StereoNetConfig, state_dict: Mapping[str, torch.Tensor], level: int) -> StateDict:
    """The network whose output is pyramid level ``level`` (0 = soft argmin) carried to full size.

    Refiners ``level..R-1`` get a zero last layer: their residual is zero, and since a level is
    ``relu(coarse + residual)`` with ``coarse >= 0``, they only resize the level bilinearly.
    """
    _check(config, state_dict)
    if not 0 <= level <= config.k_refinement_layers:
        raise SurgeryError(f'level {level}: the model has levels 0..{config.k_refinement_layers}')
    edited = _copy(state_dict)
    for index in range(level, config.k_refinement_layers):
        for key in _last_conv(index):
            edited[key].zero_()
    return edited
