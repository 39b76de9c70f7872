"""Can a refiner learn to use its guide image, and how soon? One StereoNet refiner on a toy edge task.

    .venv/bin/python benchmarks/refiner_toy.py [--units 32,1] [--steps 2000] [--every 500] [--lr 1e-3]
        [--seed 0] [--block 8] [--texture 0] [--bf16] [--out benchmarks/results/FILE.md]

The task isolates what the guide image is for. Each scene is a flat background and four ellipses, each
region with its own grey level (plus a little noise) and its own disparity (5-120 px); the coarse
disparity is the ground truth averaged over 8x8 blocks (what a perfect 1/8-resolution stage could
give; ``--block 2``: the 2x step each refiner of the hierarchical cascade takes), upsampled bilinearly.
Everything the refiner can still fix is at depth edges, and every image edge is a depth edge (with
``--texture``, gratings inside the regions add image edges that are not), so a refiner that uses the
image can place each edge where the image has it.
One :class:`~stereonet_ros.model.stereonet.Refiner` (fresh, last layer at zero: it starts as plain
upsampling) is trained with AdamW and StereoNet's loss (Barron, alpha 1, c 2) for each
``refiner_disparity_unit``, and scored on 16 held-out scenes every ``--every`` steps: EPE as is,
EPE with a zero guide image (the guide ablation ``promote`` runs), and EPE of plain upsampling.

The question it answers: whether the guide pathway ever wins against the disparity alone (the
refiners of our trained checkpoints ignore the image), at which step, and what changes that. It is
a learning-speed measurement, not a timing one; figures differ with ``--seed``.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import publish  # noqa: E402
from stereonet_ros.model.stereonet import Refiner  # noqa: E402
from stereonet_ros.training.loss import robust_loss  # noqa: E402
from stereonet_ros.training.train import TrainConfig  # noqa: E402

HEIGHT, WIDTH = 64, 128


def toy_scene(rng: np.random.Generator, texture: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(image in [-1, 1] plus noise, disparity in pixels), each ``(HEIGHT, WIDTH)``: regions that share
    their edges in both. ``texture`` > 0 adds to each region a grating of that amplitude (period 3-16 px,
    any orientation): image edges that are not depth edges, as every textured surface has."""
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]

    def grating() -> npt.NDArray[np.float32]:
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(3, 16), rng.uniform(0, 2 * np.pi)
        along = columns * np.cos(angle) + rows * np.sin(angle)
        return (texture * np.sin(2 * np.pi * along / period + phase)).astype(np.float32)

    image = np.full((HEIGHT, WIDTH), rng.uniform(-1, 1), np.float32)
    if texture > 0:
        image += grating()
    disparity = np.full((HEIGHT, WIDTH), rng.uniform(5, 60), np.float32)
    for _ in range(4):
        cy, cx, ry, rx = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH), rng.uniform(6, 25), rng.uniform(6, 40)
        inside = ((rows - cy) / ry) ** 2 + ((columns - cx) / rx) ** 2 < 1
        image[inside], disparity[inside] = rng.uniform(-1, 1), rng.uniform(5, 120)
        if texture > 0:
            image[inside] += grating()[inside]
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    return torch.from_numpy(image), torch.from_numpy(disparity)


def toy_batch(rng: np.random.Generator, size: int, texture: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    images, disparities = zip(*(toy_scene(rng, texture) for _ in range(size)))
    return torch.stack(images)[:, None], torch.stack(disparities)[:, None]


def refine(refiner: Refiner, image: torch.Tensor, truth: torch.Tensor,
           block: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(refined, plain upsampling) of ``truth`` averaged over ``block`` x ``block`` pixels: a refiner after
    a stage ``block`` times coarser (8: one refiner from StereoNet's 1/8 cost volume; 2: one step of the
    paper's hierarchical cascade, each refiner doubling the resolution)."""
    upsampled = F.interpolate(F.avg_pool2d(truth, block), size=(HEIGHT, WIDTH), mode='bilinear',
                              align_corners=True)
    return F.relu(upsampled + refiner(image, upsampled)), upsampled


def train_one(unit: float, steps: int, every: int, lr: float, seed: int, texture: float = 0.0, block: int = 8,
              bf16: bool = False) -> list[tuple[int, float, float, float]]:
    """Rows (step, EPE, EPE with a zero guide, EPE of upsampling) for a refiner fed disparity in ``unit``."""
    torch.manual_seed(seed)
    refiner = Refiner(dataclasses.replace(TrainConfig().model, refiner_disparity_unit=unit))
    last = refiner.net.segment_2_conv_0
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=lr, weight_decay=1e-4)
    stream, held_out = np.random.default_rng(seed), toy_batch(np.random.default_rng(10_000 + seed), 16, texture)
    rows = []
    for step in range(steps + 1):
        if step % every == 0:
            refiner.eval()
            with torch.no_grad():
                image, truth = held_out
                refined, upsampled = refine(refiner, image, truth, block)
                ablated, _ = refine(refiner, torch.zeros_like(image), truth, block)
            rows.append((step, *(float((x - truth).abs().mean()) for x in (refined, ablated, upsampled))))
            print(f'unit {unit:g} step {step}: EPE {rows[-1][1]:.3f}, zero guide {rows[-1][2]:.3f}', flush=True)
            refiner.train()
        if step == steps:
            break
        image, truth = toy_batch(stream, 4, texture)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):  # as training runs on a bf16 CPU
            refined, _ = refine(refiner, image, truth, block)
        loss = robust_loss(refined - truth, alpha=1.0, c=2.0).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(refiner.parameters(), 1.0)
        optimizer.step()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--units', default='32,1', help='refiner_disparity_unit values to compare')
    parser.add_argument('--steps', type=int, default=2000)
    parser.add_argument('--every', type=int, default=500)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--block', type=int, default=8, choices=(2, 4, 8, 16),
                        help='the coarse input is the truth averaged over block x block pixels')
    parser.add_argument('--bf16', action='store_true', help='train under bfloat16 autocast')
    parser.add_argument('--texture', type=float, default=0.0,
                        help='amplitude of a grating inside every region (edges that are not depth edges)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', type=Path, help='also write the table (with date and machine) here')
    arguments = parser.parse_args()
    if arguments.steps < 1 or arguments.every < 1:
        parser.error('--steps and --every must be >= 1')
    torch.set_num_threads(arguments.threads)
    started = time.time()
    lines = [f'# Refiner guide toy ({date.today().isoformat()}, {platform.node()}, {platform.processor() or "cpu"})',
             '', f'`benchmarks/refiner_toy.py --units {arguments.units} --steps {arguments.steps} --every '
             f'{arguments.every} --lr {arguments.lr:g} --seed {arguments.seed} --texture {arguments.texture:g} '
             f'--block {arguments.block}{" --bf16" if arguments.bf16 else ""}`: '
             'one fresh refiner per unit; EPE px '
             'on 16 held-out toy scenes (see the script).', '',
             '| unit px | step | EPE | zero guide | guide rise | plain upsampling |',
             '| --- | --- | --- | --- | --- | --- |']
    for unit in (float(text) for text in arguments.units.split(',')):
        for step, epe, ablated, upsampled in train_one(unit, arguments.steps, arguments.every, arguments.lr,
                                                       arguments.seed, arguments.texture, arguments.block,
                                                       arguments.bf16):
            lines.append(f'| {unit:g} | {step} | {epe:.3f} | {ablated:.3f} | {ablated - epe:+.3f} | {upsampled:.3f} |')
    lines += ['', f'{time.time() - started:.0f} s in all.']
    publish('\n'.join(lines), arguments.out)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
