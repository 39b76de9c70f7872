"""stereonet-train: train StereoNet on synthetic stereo (left + right disparity, robust loss).

    stereonet-train [--config FILE.yaml] [key=value ...] [--output-dir DIR]

Defaults <- the YAML file <- ``key=value`` overrides (dotted for sections: ``model.max_disparity=192``,
``data.height=192``) make one :class:`TrainConfig`, saved as ``config.yaml`` in the output folder.

What the run writes in its output folder:

- ``state.pt``: the full training state (weights, optimizer, scheduler, step), written atomically
  every ``checkpoint_every`` steps, on Ctrl-C and SIGTERM, and at the end. Loaded with
  ``torch.load(weights_only=True)``. A run started again on the same folder resumes from it, exactly:
  the samples of step ``s`` are a function of ``(seed, s)`` only, so nothing else needs saving.
- ``model_latest.safetensors`` (and ``model_best.safetensors`` by validation EPE): our checkpoint
  format with the training config, steps and data in its provenance.
- ``log.csv``: one row per logged step (and TensorBoard events when ``tensorboard`` is installed).
- With ``ema_decay`` > 0, ``model_ema.safetensors`` and ``model_ema_best.safetensors``: the same for the
  weights' moving average, scored beside the weights at each validation (``ema_*`` columns).

Multi-GPU: ``torchrun --nproc_per_node N -m stereonet_ros.training.train ...`` (DDP; the batch size
is per process). On the CPU: channels-last, all cores, glibc allocator tuned, and ``precision=bf16``
autocast where the CPU computes bfloat16 natively (AVX512-BF16 or AMX; otherwise float32). On a GPU:
``precision=bf16`` autocast by default, cuDNN autotuning (the crop never changes) and the layout of
``memory_format``. The soft argmin and the disparity sums stay float32 either way.
"""
from __future__ import annotations

import copy
import csv
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from stereonet_ros.config import ConfigError, load, to_dict
from stereonet_ros.data.synthetic import SyntheticConfig, SyntheticStereoDataset, worker_init_fn
from stereonet_ros.model.checkpoint import Checkpoint, InputContract, save_checkpoint
from stereonet_ros.model.stereonet import StereoNet, StereoNetConfig, disparity_candidates, guided_to, to_channels_last
from stereonet_ros.precision import autocast_dtype_for, cpu_has_native_bf16
from stereonet_ros.training.loss import cost_distribution_loss, stereo_pyramid_loss

PROGRAM = 'stereonet-train'
STATE_FILE = 'state.pt'
EMA_PREFIX = 'ema_'  # log.csv columns of the weights' moving average (TrainConfig.ema_decay)

# Inputs are normalized to about [-1, 1] in 0..255 units: gray (x - 127.5) / 127.5, both views.
TRAIN_MEAN = 127.5
TRAIN_STD = 127.5


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (saved beside its outputs)."""

    model: StereoNetConfig = field(default_factory=lambda: StereoNetConfig(
        in_channels=1, max_disparity=192, disparity_grid='exact', cost_volume_border='replicate',
        refiner_disparity_unit=32.0))
    """The network; default: grayscale, 192 px, the paper's exact candidate grid, refiners fed
    disparity in units of 32 px (comparable to the image's [-1, 1]; see StereoNetConfig)."""
    data: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(height=192, width=384))
    """The synthetic generator (crop size = data.height x data.width)."""
    steps: int = 100_000
    """Optimizer steps in total (a resumed run continues up to this)."""
    batch_size: int = 4
    """Pairs per step per process."""
    optimizer: Literal['rmsprop', 'adamw'] = 'adamw'
    """AdamW (decoupled weight decay, as RAFT-Stereo) or RMSprop (the paper, the seed). RMSprop's weight
    decay is coupled: it is added to the gradient and then normalized with it, so weights whose gradient is
    small (the refiners' image channels) decay to nothing; the first default did exactly that."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    """Linear warm-up from lr/100."""
    lr_schedule: Literal['cosine', 'step'] = 'cosine'
    """After warm-up: 'cosine' from lr down to lr_min at ``steps``; 'step' multiplies by lr_decay_gamma
    every lr_decay_every steps."""
    lr_min: float = 1e-5
    """The cosine schedule's last rate."""
    lr_decay_every: int = 10_000
    """'step' schedule: multiply the rate by lr_decay_gamma every this many steps."""
    lr_decay_gamma: float = 0.9
    grad_clip: float = 1.0
    """Clip the gradient norm (0 = off)."""
    loss_alpha: float = 1.0
    """Barron robust loss shape (StereoNet: 1)."""
    loss_c: float = 2.0
    """Barron robust loss scale, pixels (the seed: 2)."""
    loss_cost_weight: float = 0.0
    """Weight of :func:`~stereonet_ros.training.loss.cost_distribution_loss` added to the pyramid loss (0 =
    off, the paper's loss alone): the cost volume's softmax is also asked to be one peak at the truth, on
    cells away from depth edges, so that the soft argmin is not pulled towards the candidates."""
    loss_cost_sigma: float = 1.0
    """That target's width, in candidate spacings."""
    loss_guided_answer: bool = False
    """Without refiners (``model.k_refinement_layers=0``): the pyramid loss also scores the answer, the soft
    argmin carried up by :func:`~stereonet_ros.model.stereonet.guided_to` (one more level, weighted as each),
    so that the coarse stage learns cells the image-guided carry can use (a cell over a depth edge that holds
    one side, not a blend). False = the soft argmin alone, resized bilinearly in the loss."""
    supervise_occluded: bool = True
    """Also supervise occluded pixels (their ground truth is exact in synthetic data)."""
    seed: int = 0
    """Base seed: sample i of the stream is generated from (seed, i)."""
    validation_seed: int = 1_000_003
    """Seed of the held-out synthetic validation stream (never used for training)."""
    validation_samples: int = 16
    validate_every: int = 500
    checkpoint_every: int = 100
    log_every: int = 10
    workers: int = 1
    """DataLoader worker processes generating samples."""
    threads: int = 0
    """CPU threads for the network (0 = all cores)."""
    device: str = 'auto'
    precision: Literal['fp32', 'bf16', 'fp16'] = 'bf16'
    """Autocast precision: bf16 on a GPU, and on a CPU with native bfloat16 (else fp32); fp16 on a GPU only."""
    memory_format: Literal['auto', 'channels_last', 'contiguous'] = 'auto'
    """Layout of the weights and the images: 'auto' is channels-last on the CPU (oneDNN runs it several times
    faster) and contiguous (NCHW) on a GPU, until a visit's burst measures both there (it trains with the
    faster; ``stereonet_ros.visit.burst``)."""
    init_checkpoint: str = ''
    """Start from these weights (ours or a seed .ckpt) instead of random ones; ignored on resume. When
    its model config differs from ``model`` only in ``refiner_disparity_unit``, the weights are
    reparametrized exactly (``stereonet_ros.model.surgery.with_disparity_unit``)."""
    revive_dead_refiners: bool = True
    """With init_checkpoint: re-initialize refiners whose first layer has decayed to nothing
    (``surgery.dead_refiners``), their last layer at zero so the function starts unchanged."""
    reinitialize_refiners: bool = False
    """With init_checkpoint: re-initialize every refiner the same way (a zero last layer), keeping the
    feature extractor and cost filter. For refiners that learned to lean on the disparity alone. Then
    ``model.k_refinement_layers`` may differ from the checkpoint's (e.g. 1: the paper's single refinement)."""
    train_parts: Literal['all', 'refiners', 'backbone'] = 'all'
    """What the optimizer updates. 'refiners' freezes the feature extractor and the cost filter (their
    BatchNorm statistics too) and trains only the refiners, against a coarse disparity that stays put:
    the stage that teaches refiners re-initialized on a trained network to use the image. 'backbone' is
    the converse: the refiners (and their statistics) stay as they are and the feature extractor and cost
    filter train through them, so that a refiner that uses the image keeps doing so while the coarse
    stage improves (whole-network training from the default wears its guide rise down)."""
    coarse_input: Literal['network', 'oracle', 'mixed'] = 'network'
    """What the refiners refine while training: the network's own soft-argmin output, or (with
    ``train_parts=refiners``) an oracle, the ground truth averaged over the cost volume's cells
    (:func:`oracle_coarse`): every error left is then at a depth edge, where only the image can place it.
    No feature or cost pass is made, and the loss counts the refined levels only. Validation and the
    Motorcycle scores still run the whole network on its own coarse output. 'mixed': each step draws
    one or the other (:func:`oracle_step`), the oracle with probability ``oracle_fraction``."""
    oracle_fraction: float = 0.5
    """With ``coarse_input=mixed``: the share of steps whose coarse input is the oracle."""
    score_real_pair: bool = True
    """Also score the Middlebury Motorcycle pair (scikit-image) at each validation."""
    ema_decay: float = 0.0
    """Also keep an exponential moving average of the weights and BatchNorm statistics, moved after every
    step by ``(1 - ema_decay)`` of its distance to the weights (:func:`update_average`; 0 = off, 0.998
    averages over about 500 steps). It never feeds back into training: each validation scores it beside
    the weights (log columns ``ema_*``) and it is written as ``model_ema.safetensors`` (and
    ``model_ema_best.safetensors`` by its synthetic EPE). Small-batch training wanders between
    validations; the average is what to compare and promote when it scores better."""

    def __post_init__(self) -> None:
        positive = ('steps', 'batch_size', 'validation_samples', 'validate_every', 'checkpoint_every', 'log_every')
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f'{name}={getattr(self, name)!r}: must be >= 1')
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f'ema_decay={self.ema_decay!r}: must be in [0, 1)')
        for name in ('lr', 'loss_c', 'lr_decay_gamma', 'loss_cost_sigma'):
            if not getattr(self, name) > 0:
                raise ConfigError(f'{name}={getattr(self, name)!r}: must be > 0')
        for name in ('weight_decay', 'warmup_steps', 'grad_clip', 'workers', 'threads', 'seed', 'lr_decay_every',
                     'loss_cost_weight'):
            if getattr(self, name) < 0:
                raise ConfigError(f'{name}={getattr(self, name)!r}: must be >= 0')
        if not 0 <= self.lr_min <= self.lr:
            raise ConfigError(f'lr_min={self.lr_min!r}: must be in [0, lr={self.lr!r}]')
        if self.model.in_channels != self.data.channels:
            raise ConfigError(f'model.in_channels={self.model.in_channels} but data.channels={self.data.channels}')
        if float(self.model.max_disparity) != self.data.max_disparity:
            raise ConfigError(f'model.max_disparity={self.model.max_disparity} but data.max_disparity='
                              f'{self.data.max_disparity}: the loss mask and the network must agree')
        if self.validation_seed == self.seed:
            raise ConfigError('validation_seed must differ from seed (held-out data)')
        if self.coarse_input != 'network' and self.train_parts != 'refiners':
            raise ConfigError(f"coarse_input={self.coarse_input!r} trains the refiners alone: set train_parts=refiners")
        if self.loss_guided_answer and self.model.k_refinement_layers != 0:
            raise ConfigError('loss_guided_answer scores the answer of a network without refiners: '
                              f'set model.k_refinement_layers=0 (not {self.model.k_refinement_layers})')
        if not 0.0 <= self.oracle_fraction <= 1.0:
            raise ConfigError(f'oracle_fraction={self.oracle_fraction!r}: must be in [0, 1]')

    def contract(self) -> InputContract:
        channels = self.model.in_channels
        return InputContract(color='gray' if channels == 1 else 'rgb', left_mean=(TRAIN_MEAN,) * channels,
                             left_std=(TRAIN_STD,) * channels, right_mean=(TRAIN_MEAN,) * channels,
                             right_std=(TRAIN_STD,) * channels, max_disparity=float(self.model.max_disparity),
                             pad_multiple=self.model.downsampling_factor)


# --- pieces ----------------------------------------------------------------------------------------

def uses_channels_last(config: TrainConfig, device: torch.device) -> bool:
    """Whether training on ``device`` keeps weights and images channels-last (``config.memory_format``)."""
    if config.memory_format == 'auto':
        return device.type == 'cpu'
    return config.memory_format == 'channels_last'


def learning_rate(config: TrainConfig, step: int) -> float:
    """The rate for optimizer step ``step`` (0-based): linear warm-up, then the schedule.

    Cosine (Loshchilov & Hutter, SGDR): ``lr_min + (lr - lr_min) * (1 + cos(pi * t)) / 2`` with
    ``t = (step - warmup) / (steps - warmup)`` clipped to [0, 1], so it is ``lr`` right after the
    warm-up and ``lr_min`` at ``steps``.
    """
    rate = config.lr
    if config.lr_schedule == 'cosine':
        span = max(config.steps - config.warmup_steps, 1)
        progress = min(max((step - config.warmup_steps) / span, 0.0), 1.0)
        rate = config.lr_min + (config.lr - config.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif config.lr_decay_every > 0:
        rate *= config.lr_decay_gamma ** (step // config.lr_decay_every)
    if step < config.warmup_steps:
        rate *= 0.01 + 0.99 * step / config.warmup_steps
    return rate


class StepBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of sample indices as a function of the step: step ``s``, rank ``r`` of ``w`` gets
    ``[(s * w + r) * B, ... + B)``. Resuming at any step gives exactly the batches a straight run gets."""

    def __init__(self, first_step: int, last_step: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.first_step, self.last_step = first_step, last_step
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first_step, self.last_step):
            start = (step * self.world + self.rank) * self.batch_size
            yield list(range(start, start + self.batch_size))

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step)


def oracle_step(config: TrainConfig, step: int) -> bool:
    """Whether optimizer step ``step`` refines the oracle coarse input (``config.coarse_input``): a function
    of the seed and the step alone, so that a resumed run draws what a straight one would."""
    if config.coarse_input != 'mixed':
        return config.coarse_input == 'oracle'
    return bool(np.random.default_rng([config.seed, step, 0x0AC1E]).random() < config.oracle_fraction)


def oracle_coarse(truth: torch.Tensor, factor: int, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """What a perfect cost volume would give: ``(B, 1, H, W)`` ground truth averaged over ``factor`` x
    ``factor`` cells -> ``(B, 1, H / factor, W / factor)``, pixels.

    Only a cell's finite values are averaged (a real pair's unknown pixels, Middlebury's ``inf``, say
    nothing); a cell with none takes ``fallback``'s value (same shape as the result; default 0). With
    every value finite (the generator's) this is exactly ``avg_pool2d``.
    """
    known = torch.isfinite(truth)
    total = F.avg_pool2d(torch.where(known, truth, torch.zeros_like(truth)), factor)
    share = F.avg_pool2d(known.to(truth.dtype), factor)  # 1.0 exactly where the whole cell is known
    mean = total / share.clamp_min(torch.finfo(truth.dtype).tiny)
    return torch.where(share > 0, mean, fallback if fallback is not None else torch.zeros_like(mean))


def training_loss(config: TrainConfig, output: Any, gt_left: torch.Tensor, gt_right: torch.Tensor,
                  valid_left: torch.Tensor | None, valid_right: torch.Tensor | None, oracle: bool,
                  right_image: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of one training forward (``with_right=True``): every pyramid level of both views, but for
    an oracle coarse input its level 0, which is the truth itself and has nothing to learn from; with
    ``loss_guided_answer``, also each view's answer carried up by ``guided_to`` (the right view's guided by
    ``right_image``, the normalized right image); with ``loss_cost_weight`` > 0 and the network's own coarse
    stage, plus that weight times the mean over both views of :func:`cost_distribution_loss`."""
    first = 1 if oracle else 0
    max_disparity = float(config.model.max_disparity)
    left_levels = [p.float() for p in output.pyramid[first:]]
    right_levels = [p.float() for p in output.right_pyramid[first:]]
    if config.loss_guided_answer:
        if right_image is None:
            raise ConfigError('loss_guided_answer needs the right image to carry the right view up')
        left_levels.append(output.disparity.float())
        right_levels.append(guided_to(output.right_pyramid[-1], right_image, config.model.downsampling_factor,
                                      config.model.align_corners).float())
    loss = stereo_pyramid_loss(left_levels, right_levels, gt_left, gt_right,
                               valid_left, valid_right, max_disparity, alpha=config.loss_alpha, c=config.loss_c)
    if config.loss_cost_weight == 0 or oracle:
        return loss
    candidates = disparity_candidates(config.model)
    cost_terms = [cost_distribution_loss(cost, gt, valid, candidates, max_disparity, config.loss_cost_sigma)
                  for cost, gt, valid in ((output.cost, gt_left, valid_left),
                                          (output.right_cost, gt_right, valid_right))]
    return loss + config.loss_cost_weight * (cost_terms[0] + cost_terms[1]) / 2


@torch.no_grad()
def update_average(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """Move every floating-point weight and buffer of ``average`` by ``(1 - decay)`` of its distance to
    ``model``'s (``decay`` 0: a copy); integer buffers (BatchNorm's batch count) are copied."""
    current = model.state_dict()
    for name, value in average.state_dict().items():  # tensors that share the modules' storage
        if value.is_floating_point():
            value.lerp_(current[name].to(value.dtype), 1.0 - decay)
        else:
            value.copy_(current[name])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """0..255 images -> the training normalization (see :data:`TRAIN_MEAN`)."""
    return (images - TRAIN_MEAN) / TRAIN_STD


@functools.cache  # the code running is the code at start: one git call per process, not one per export
def git_sha() -> str:
    try:
        completed = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=10,
                                   cwd=Path(__file__).resolve().parent)
        return completed.stdout.strip() if completed.returncode == 0 else 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    temporary = path.with_suffix(path.suffix + '.tmp')
    torch.save(payload, temporary)
    os.replace(temporary, path)  # a crash mid-write never leaves a half state.pt


def _atomic_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    temporary = path.with_suffix('.tmp.safetensors')
    save_checkpoint(temporary, checkpoint)
    os.replace(temporary, path)


class _StopRequested(Exception):
    pass


@dataclass
class _Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_request: str) -> tuple[_Distributed, torch.device]:
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        from stereonet_ros.inference import resolve_device
        return _Distributed(), resolve_device(device_request)
    import torch.distributed as dist
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = torch.cuda.is_available() and device_request in ('auto', 'cuda')
    dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    if use_cuda:
        torch.cuda.set_device(device)
    return _Distributed(rank=rank, world=world, local_rank=local_rank), device


# --- validation --------------------------------------------------------------------------------------

def validate(model: StereoNet, config: TrainConfig, device: torch.device) -> dict[str, float]:
    """EPE / bad-3 on the held-out synthetic stream, and on the real Motorcycle pair when asked.

    Runs the weights through :class:`~stereonet_ros.inference.Predictor`, i.e. exactly the
    preprocessing, padding and folded network that users get. ``val_guide_rise`` is the synthetic
    EPE's rise with every guide image zeroed, on the network's own coarse output: beside the real
    pair's ``guide_rise`` it tells a refiner that ignores the image everywhere from one that uses it
    on synthetic scenes but not on a real one (a gap between the generator and real cameras).
    """
    from stereonet_ros.evaluation.metrics import MetricAccumulator
    from stereonet_ros.evaluation.refinement import guide_ablated
    from stereonet_ros.inference import Predictor

    exported = _export(model, config, step=0)
    predictor = Predictor(exported, device=str(device))
    ablated = Predictor(guide_ablated(exported), device=str(device))

    def image(tensor: torch.Tensor) -> np.ndarray:  # (C, H, W) 0..255 -> (H, W[, 3]) float32
        return tensor[0].numpy() if tensor.shape[0] == 1 else tensor.permute(1, 2, 0).numpy()

    results: dict[str, float] = {}
    # Validated on the clean generator (no rig augmentation): comparable across recipes and runs.
    dataset = SyntheticStereoDataset(config.data.without_rig_augmentation(), length=config.validation_samples,
                                     seed=config.validation_seed)
    accumulator, ablated_accumulator = MetricAccumulator(), MetricAccumulator()
    for index in range(len(dataset)):
        item = dataset[index]
        left, right = image(item['left']), image(item['right'])
        truth, valid = item['disp_left'][0].numpy(), item['valid_left'][0].numpy()
        accumulator.add(predictor.predict(left, right), truth, valid)
        ablated_accumulator.add(ablated.predict(left, right), truth, valid)
    overall = accumulator.total()
    results['val_epe'], results['val_bad3'] = overall.epe, overall.bad3
    results['val_guide_rise'] = ablated_accumulator.total().epe - overall.epe
    if config.score_real_pair:
        from stereonet_ros.evaluation.refinement import refinement_scores
        from stereonet_ros.samples import motorcycle

        sample = motorcycle()
        refinement = refinement_scores(predictor.checkpoint, sample.left, sample.right, sample.disparity,
                                       device=str(device))
        real = refinement.output
        results['real_epe'], results['real_bad2'], results['real_bad3'] = real.epe, real.bad2, real.bad3
        for level, metrics in enumerate(refinement.levels[:-1]):
            results[f'real_epe_level{level}'] = metrics.epe
        results['guide_rise'] = refinement.guide_rise_epe
    if config.coarse_input != 'network':
        results.update(oracle_scores(model, config, dataset, device))
    return results


def oracle_scores(model: StereoNet, config: TrainConfig, dataset: SyntheticStereoDataset,
                  device: torch.device) -> dict[str, float]:
    """What the refiners do on the input they train on: EPE of the refined output from :func:`oracle_coarse`
    on ``dataset``'s left views (``oracle_epe``), and how much it rises with every guide image zeroed
    (``oracle_guide_rise``, :func:`~stereonet_ros.model.surgery.without_image_guidance`): the stage's own
    reading of whether the refiners use the image, free of the coarse stage's errors."""
    from stereonet_ros.model.surgery import without_image_guidance

    weights = {key: value.detach().float().cpu() for key, value in model.state_dict().items()}
    networks = []
    for state in (weights, without_image_guidance(config.model, weights)):
        network = StereoNet(config.model)
        network.load_state_dict(state)
        networks.append(network.to(device).eval())
    error_sums, counted = [0.0, 0.0], 0
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            left, right = (normalize(item[key][None].to(device)) for key in ('left', 'right'))
            truth, valid = item['disp_left'][None].to(device), item['valid_left'][None].to(device)
            valid = valid & torch.isfinite(truth) & (truth < config.model.max_disparity)
            coarse = oracle_coarse(truth, config.model.downsampling_factor)
            counted += int(valid.sum())
            for which, network in enumerate(networks):
                refined = network(left, right, coarse=(coarse, coarse)).disparity  # the right one is not refined
                error_sums[which] += float((refined - truth)[valid].abs().sum())
    trained, ablated = (total / max(counted, 1) for total in error_sums)
    return {'oracle_epe': trained, 'oracle_guide_rise': ablated - trained}


def log_fields(config: TrainConfig) -> list[str]:
    """log.csv's columns: per-step figures, then the validation scores of :func:`validate`."""
    levels = [f'real_epe_level{level}' for level in range(config.model.k_refinement_layers)]
    oracle = ['oracle_epe', 'oracle_guide_rise'] if config.coarse_input != 'network' else []
    scores = ['val_epe', 'val_bad3', 'real_epe', 'real_bad2', 'real_bad3', *levels, 'guide_rise', *oracle,
              'val_guide_rise']
    averaged = [f'{EMA_PREFIX}{name}' for name in scores] if config.ema_decay > 0 else []
    return ['step', 'wall_s', 'samples_per_s', 'loss', 'lr', *scores, *averaged]


# --- the loop ----------------------------------------------------------------------------------------

def train(config: TrainConfig, output_dir: Path, *, stop_after: int | None = None, progress: bool = True,
          time_limit_s: float | None = None) -> int:
    """Run (or resume) training into ``output_dir``. Returns the step reached.

    ``stop_after``: return after this many steps of *this call* (tests use it to interrupt a run).
    ``time_limit_s``: return after the first step that ends this many seconds after this call set out
    (data workers' start included), with the state, ``model_latest.safetensors`` and a ``log.csv`` row
    for that step written, as at the end of a run; a later call resumes there. One process only.

    Raises:
        ConfigError: the folder holds a run with another config, or ``time_limit_s`` with several processes.
    """
    distributed, device = _setup_distributed(config.device)
    if time_limit_s is not None and distributed.world > 1:
        raise ConfigError('time_limit_s needs one process: with several, each would stop at another step')
    output_dir.mkdir(parents=True, exist_ok=True)
    state_path = output_dir / STATE_FILE
    config_path = output_dir / 'config.yaml'
    resolved = to_dict(config)
    if state_path.exists() and config_path.exists():
        # A run begun before a field existed ran with that field's default: it resumes when the field still is.
        previous = _with_missing_keys(yaml.safe_load(config_path.read_text()), to_dict(TrainConfig()))
        if previous != resolved:
            changed = sorted(k for k in set(previous) | set(resolved) if previous.get(k) != resolved.get(k))
            raise ConfigError(f'{output_dir} holds a run with another config (differs in {changed}); '
                              'resume with the same config or choose another --output-dir')
    if distributed.is_main:
        config_path.write_text(yaml.safe_dump(resolved, sort_keys=False))

    if device.type == 'cpu':
        from stereonet_ros.cpu_allocator import tune_allocator_for_inference
        tune_allocator_for_inference()  # the same reuse of large blocks helps training
        if config.threads:
            torch.set_num_threads(config.threads)

    torch.manual_seed(config.seed)
    model = StereoNet(config.model)
    lineage: dict[str, Any] | None = None  # where the initial weights came from (init_checkpoint)
    if config.init_checkpoint and not state_path.exists():
        from stereonet_ros.model.checkpoint import load_checkpoint
        initial = load_checkpoint(config.init_checkpoint)
        weights, surgery = initial_weights(initial.config, initial.state_dict, config)
        model.load_state_dict(weights)
        lineage = init_lineage(config.init_checkpoint, initial.provenance)
        if surgery:
            lineage['surgery'] = surgery
            if distributed.is_main:
                print(f'{PROGRAM}: init_checkpoint edited: {"; ".join(surgery)}', file=sys.stderr)
    model = model.to(device)
    channels_last = uses_channels_last(config, device)
    if channels_last:
        to_channels_last(model)
    average = copy.deepcopy(model).requires_grad_(False).eval() if config.ema_decay > 0 else None
    if device.type == 'cuda':
        # The crop size never changes: let cuDNN time its algorithms once per layer shape and keep the fastest.
        torch.backends.cudnn.benchmark = True
    frozen = frozen_parts(model, config.train_parts)
    for module in frozen:
        module.requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if config.optimizer == 'rmsprop':
        optimizer = torch.optim.RMSprop(parameters, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)

    step = 0
    best_epe = best_ema_epe = math.inf
    wall_before = 0.0  # training seconds of earlier sessions of this run, so log.csv's wall_s keeps counting
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        if average is not None:  # a state.pt without one (its config.yaml lost, so unchecked) restarts it
            average.load_state_dict(state.get('ema', model.state_dict()))
        step = int(state['step'])
        best_epe = float(state.get('best_epe', math.inf))
        best_ema_epe = float(state.get('best_ema_epe', math.inf))
        wall_before = float(state.get('wall_s', 0.0))
        lineage = json.loads(state.get('init_lineage', 'null'))
        if distributed.is_main:
            print(f'{PROGRAM}: resuming {output_dir} at step {step}', file=sys.stderr)
    if step >= config.steps:
        return step
    started = time.time()

    runner: torch.nn.Module = model
    if distributed.world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)
    model.train()
    for module in frozen:
        module.eval()  # frozen BatchNorm keeps its running statistics (and normalizes with them)

    last_step = config.steps if stop_after is None else min(config.steps, step + stop_after)
    dataset = SyntheticStereoDataset(config.data, length=2**62, seed=config.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(step, last_step, config.batch_size, distributed.rank, distributed.world),
        num_workers=config.workers, worker_init_fn=worker_init_fn if config.workers else None,
        persistent_workers=False, pin_memory=device.type == 'cuda')
    autocast_dtype = autocast_dtype_for(config.precision, device.type,
                                        device.type == 'cpu' and cpu_has_native_bf16())
    use_autocast = autocast_dtype is not None
    if distributed.is_main:
        print(f'{PROGRAM}: training on {device} in {str(autocast_dtype or torch.float32).removeprefix("torch.")}'
              f' (precision={config.precision})', file=sys.stderr)
    scaler = torch.amp.GradScaler('cuda', enabled=autocast_dtype == torch.float16)

    def save_state() -> None:
        if not distributed.is_main:
            return
        averaged = {} if average is None else {'ema': average.state_dict(), 'best_ema_epe': best_ema_epe}
        _atomic_torch_save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'step': step,
                            'best_epe': best_epe, 'wall_s': wall_before + time.time() - started,
                            'init_lineage': json.dumps(lineage), **averaged}, state_path)
        _atomic_checkpoint(_export(model, config, step, lineage=lineage), output_dir / 'model_latest.safetensors')
        if average is not None:
            _atomic_checkpoint(_export(average, config, step, lineage=lineage, averaged=True),
                               output_dir / 'model_ema.safetensors')

    stop: list[str] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        del frame
        stop.append(signal.Signals(signum).name)

    previous_handlers = {}
    if distributed.is_main and _in_main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[signum] = signal.signal(signum, request_stop)

    log_path = output_dir / 'log.csv'
    fields_ = log_fields(config)
    new_log = not log_path.exists() or log_path.stat().st_size == 0
    if not new_log:  # a log begun by an older version keeps its columns; scores it lacks are left out
        fields_ = _trim_log(log_path, step, fields_) if distributed.is_main else fields_
    log_file = log_path.open('a', newline='') if distributed.is_main else None
    writer = csv.DictWriter(log_file, fieldnames=fields_, extrasaction='ignore') if log_file else None
    if writer and new_log:
        writer.writeheader()
    tensorboard = _tensorboard(output_dir) if distributed.is_main else None
    bar = _progress_bar(step, config.steps, enabled=progress and distributed.is_main)
    window_start, window_samples, losses = time.time(), 0, []
    try:
        for batch in loader:
            rate = learning_rate(config, step)
            for group in optimizer.param_groups:
                group['lr'] = rate
            left = normalize(batch['left'].to(device, non_blocking=True))
            right = normalize(batch['right'].to(device, non_blocking=True))
            if channels_last:
                left = left.contiguous(memory_format=torch.channels_last)
                right = right.contiguous(memory_format=torch.channels_last)
            gt_left, gt_right = batch['disp_left'].to(device), batch['disp_right'].to(device)
            if config.supervise_occluded:
                valid_left = valid_right = None  # finite and < max_disparity: the loss's own mask
            else:
                valid_left, valid_right = batch['valid_left'].to(device), batch['valid_right'].to(device)
            oracle = oracle_step(config, step)
            coarse = ((oracle_coarse(gt_left, config.model.downsampling_factor),
                       oracle_coarse(gt_right, config.model.downsampling_factor)) if oracle else None)
            with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32, enabled=use_autocast):
                output = runner(left, right, with_right=True, coarse=coarse)
            loss = training_loss(config, output, gt_left, gt_right, valid_left, valid_right, oracle, right)
            if not torch.isfinite(loss):
                raise FloatingPointError(f'loss is {loss.item()} at step {step}; last good state is in {state_path}')
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if average is not None:
                update_average(average, model, config.ema_decay)
            step += 1
            losses.append(float(loss.detach()))
            window_samples += config.batch_size * distributed.world
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f'{losses[-1]:.3f}', lr=f'{rate:.2e}')
            out_of_time = time_limit_s is not None and time.time() - started >= time_limit_s
            row: dict[str, Any] = {}
            if step % config.log_every == 0 or step == last_step or out_of_time:
                elapsed = time.time() - window_start
                row.update(step=step, wall_s=round(wall_before + time.time() - started, 1),
                           samples_per_s=round(window_samples / max(elapsed, 1e-9), 3),
                           loss=round(float(np.mean(losses)), 5), lr=rate)
                window_start, window_samples, losses = time.time(), 0, []
            if distributed.is_main and (step % config.validate_every == 0 or step == config.steps):
                scores = validate(model, config, device)
                row.update({key: round(value, 4) for key, value in scores.items()}, step=step)
                if scores['val_epe'] < best_epe:
                    best_epe = scores['val_epe']
                    _atomic_checkpoint(_export(model, config, step, scores, lineage),
                                       output_dir / 'model_best.safetensors')
                if average is not None:
                    averaged_scores = validate(average, config, device)
                    row.update({f'{EMA_PREFIX}{key}': round(value, 4) for key, value in averaged_scores.items()})
                    if averaged_scores['val_epe'] < best_ema_epe:
                        best_ema_epe = averaged_scores['val_epe']
                        _atomic_checkpoint(_export(average, config, step, averaged_scores, lineage, averaged=True),
                                           output_dir / 'model_ema_best.safetensors')
                if bar is not None:
                    bar.write(f'step {step}: ' + ', '.join(f'{k} {v:.3f}' for k, v in scores.items()))
            if row and writer and log_file:
                writer.writerow(row)
                log_file.flush()
                if tensorboard is not None:
                    for key, value in row.items():
                        if key != 'step' and isinstance(value, (int, float)):
                            tensorboard.add_scalar(key, value, step)
            if step % config.checkpoint_every == 0:
                save_state()
            if stop:
                raise _StopRequested(stop[0])
            if out_of_time:
                break
        save_state()
    except (_StopRequested, KeyboardInterrupt) as interruption:
        save_state()
        if distributed.is_main:
            print(f'\n{PROGRAM}: stopped by {interruption or "Ctrl-C"} at step {step}; state saved to {state_path} '
                  '(run the same command again to resume)', file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if bar is not None:
            bar.close()
        if log_file:
            log_file.close()
        if tensorboard is not None:
            tensorboard.close()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    return step


def _with_missing_keys(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (a run's ``config.yaml``) with the keys it lacks taken from ``defaults``, nested dicts too."""
    merged = dict(saved)
    for key, default in defaults.items():
        if key not in merged:
            merged[key] = default
        elif isinstance(default, dict) and isinstance(merged[key], dict):
            merged[key] = _with_missing_keys(merged[key], default)
    return merged


def _trim_log(log_path: Path, step: int, default_columns: list[str]) -> list[str]:
    """Drop the rows of steps after ``step`` (logged after the last state save, then lost to a kill) so
    that the resumed run does not log them twice; returns the log's columns."""
    with log_path.open(newline='') as existing:
        reader = csv.DictReader(existing)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    kept = [row for row in rows if row.get('step', '').isdigit() and int(row['step']) <= step]
    if len(kept) != len(rows):
        temporary = log_path.with_suffix('.csv.tmp')
        with temporary.open('w', newline='') as trimmed:
            writer = csv.DictWriter(trimmed, fieldnames=columns)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(temporary, log_path)
    return columns or default_columns


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def initial_weights(initial_config: StereoNetConfig, state_dict: dict[str, torch.Tensor],
                    config: TrainConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights a run starts from, given ``init_checkpoint``'s, and what was done to them.

    A different ``refiner_disparity_unit`` is reparametrized exactly, and refiners without the
    photometric cue gain it with zero weights (exactly the same function); with
    ``reinitialize_refiners`` every refiner is re-initialized (then ``model.k_refinement_layers`` may
    differ: the new count of fresh refiners), else with ``revive_dead_refiners`` the dead ones (seeded
    by the run's seed). Any other config difference is an error.
    """
    from stereonet_ros.model import surgery as edit

    done: list[str] = []
    weights = dict(state_dict)
    if config.model.refiner_photometric_cue and not initial_config.refiner_photometric_cue:
        done.append('refiners given the photometric cue with zero weights (same function)')
        initial_config, weights = edit.with_photometric_cue(initial_config, weights)
    if initial_config.refiner_disparity_unit != config.model.refiner_disparity_unit:
        unit = config.model.refiner_disparity_unit
        done.append(f'refiner disparity unit {initial_config.refiner_disparity_unit:g} -> {unit:g} px '
                    '(exact reparametrization)')
        initial_config, weights = edit.with_disparity_unit(initial_config, weights, unit)
    count = config.model.k_refinement_layers
    if config.reinitialize_refiners and initial_config.k_refinement_layers != count:
        done.append(f'{initial_config.k_refinement_layers} refiners replaced by {count} fresh ones '
                    '(reinitialize_refiners with another model.k_refinement_layers)')
        initial_config, weights = edit.with_refiner_count(initial_config, weights, count, seed=config.seed)
    if initial_config != config.model:
        raise ConfigError(f'init_checkpoint {config.init_checkpoint} has model config {initial_config}, '
                          f'this run wants {config.model}')
    if config.reinitialize_refiners:
        every = list(range(initial_config.k_refinement_layers))
        weights = edit.reinitialized_refiners(initial_config, weights, every, seed=config.seed)
        done.append(f'refiners {every} re-initialized with a zero last layer (reinitialize_refiners)')
    elif config.revive_dead_refiners:
        dead = edit.dead_refiners(initial_config, weights)
        if dead:
            weights = edit.reinitialized_refiners(initial_config, weights, dead, seed=config.seed)
            done.append(f'refiner(s) {dead} were dead (guide-image weights < {edit.DEAD_REFINER_WEIGHT:g}): '
                        're-initialized with a zero last layer')
    return weights, done


def frozen_parts(model: StereoNet, train_parts: str) -> list[torch.nn.Module]:
    """The modules a run with ``train_parts`` leaves untouched (see :attr:`TrainConfig.train_parts`)."""
    if train_parts == 'all':
        return []
    if train_parts == 'refiners':
        return [model.feature_extractor, model.cost_volumizer]
    if train_parts == 'backbone':
        return [model.refiners]
    raise ConfigError(f'train_parts={train_parts!r}: must be one of all, refiners, backbone')


def init_lineage(path: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """What a run started from ``init_checkpoint`` records about it: its path, cumulative steps and
    samples, its training config, and (nested) where it started from in turn."""
    return {
        'checkpoint': str(path),
        'steps_total': int(provenance.get('steps_total', provenance.get('steps', 0))),
        'samples_seen_total': int(provenance.get('samples_seen_total', provenance.get('samples_seen', 0))),
        'train_config': provenance.get('train_config'),
        'initialized_from': provenance.get('initialized_from'),
    }


def _export(model: StereoNet, config: TrainConfig, step: int, scores: dict[str, float] | None = None,
            lineage: dict[str, Any] | None = None, averaged: bool = False) -> Checkpoint:
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    samples = step * config.batch_size * int(os.environ.get('WORLD_SIZE', '1'))
    provenance: dict[str, Any] = {
        'trained': True,
        'data': 'synthetic stereo (stereonet_ros.data.synthetic), generated on the fly',
        'steps': step,
        'samples_seen': samples,
        # Including the runs this one started from (init_checkpoint): what the weights have been through.
        'steps_total': step + (lineage['steps_total'] if lineage else 0),
        'samples_seen_total': samples + (lineage['samples_seen_total'] if lineage else 0),
        'git_sha': git_sha(),
        'train_config': to_dict(config),
        'reproduce': 'stereonet-train --config config.yaml (the train_config above as YAML)'
                     + ('; it started from initialized_from, reproduced the same way' if lineage else ''),
    }
    if lineage:
        provenance['initialized_from'] = lineage
    if averaged:
        provenance['weights'] = f'exponential moving average of the trained weights, decay {config.ema_decay:g}'
    if scores:
        provenance['validation'] = scores
    return Checkpoint(config=config.model, contract=config.contract(), state_dict=state, provenance=provenance)


def _progress_bar(initial: int, total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True, smoothing=0.05)


def _tensorboard(output_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output_dir / 'tensorboard'))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--config', type=Path, help='YAML file with TrainConfig values')
    parser.add_argument('--output-dir', type=Path, default=Path('runs/stereonet'),
                        help='where state, checkpoints and logs go; an existing run there is resumed')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar (logs only)')
    parser.add_argument('overrides', nargs='*', metavar='key=value', help='config overrides, e.g. lr=5e-4')
    arguments = parser.parse_args(argv)
    from stereonet_ros.cli import fail
    try:
        config = load(TrainConfig, arguments.config, arguments.overrides)
        train(config, arguments.output_dir, progress=not arguments.no_progress)
    except ConfigError as err:
        fail(PROGRAM, str(err), status=2)
    except FloatingPointError as err:
        fail(PROGRAM, str(err))
    return 0


if __name__ == '__main__':
    sys.exit(main())

