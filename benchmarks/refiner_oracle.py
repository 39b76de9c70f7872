"""Does a refiner learn the image on the generator's scenes when only depth edges are left to fix?

    .venv/bin/python benchmarks/refiner_oracle.py [--crops 800] [--steps 600] [--lr 1e-3] [--every 100]

A single refiner (``k_refinement_layers=1``: the paper's single refinement, disparity in 128 px units)
is put on the v3 candidate and trained alone on cached synthetic crops (the training generator, seed 23)
whose coarse input is an oracle: the ground truth averaged over 8x8 blocks, as a perfect 1/8 stage would
give it. Every error left is then at a depth edge, where the image could place it. Every ``--every``
steps it prints the EPE on 8 held-out crops (oracle coarse input) as trained and with a zero guide image
(the guide rise); at the end, Motorcycle's EPE with the network's own coarse output, both ways. The toy
(``benchmarks/refiner_toy.py``) learns the image within 250-500 steps. A measurement of learning, not of
time: no backbone pass per step (about 1 s per step of 4 crops on 2 cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stereonet_ros.data.synthetic import SyntheticStereoDataset  # noqa: E402
from stereonet_ros.evaluation.refinement import refinement_scores  # noqa: E402
from stereonet_ros.model import surgery  # noqa: E402
from stereonet_ros.model.checkpoint import load_checkpoint  # noqa: E402
from stereonet_ros.model.stereonet import Refiner, refined_level  # noqa: E402
from stereonet_ros.samples import motorcycle  # noqa: E402
from stereonet_ros.training.loss import stereo_pyramid_loss  # noqa: E402
from stereonet_ros.training.train import TrainConfig, normalize, oracle_coarse  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # left, right, oracle coarse, truth
CANDIDATE = ROOT / 'stereonet_ros/checkpoints/stereonet_v3_candidate.safetensors'


def cached_batches(crops: int) -> list[Batch]:
    """``crops`` training crops (plus 8 held out, last) in batches of 4, each with its oracle coarse input."""
    dataset = SyntheticStereoDataset(TrainConfig().data, length=10**9, seed=23)
    batches = []
    for start in range(0, crops + 8, 4):
        items = [dataset[index] for index in range(start, start + 4)]
        truth = torch.stack([item['disp_left'] for item in items])
        batches.append((normalize(torch.stack([item['left'] for item in items])),
                        normalize(torch.stack([item['right'] for item in items])),
                        oracle_coarse(truth, 8), truth))
    return batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--crops', type=int, default=800)
    parser.add_argument('--steps', type=int, default=600)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--every', type=int, default=100)
    arguments = parser.parse_args()
    torch.set_num_threads(2)
    candidate = load_checkpoint(str(CANDIDATE))
    config, state = surgery.with_disparity_unit(candidate.config, candidate.state_dict, 128.0)
    config, state = surgery.with_refiner_count(config, state, 1, seed=5)
    started = time.time()
    batches = cached_batches(arguments.crops)
    held_out, training = batches[-2:], batches[:-2]
    print(f'cached {arguments.crops} crops in {time.time() - started:.0f} s', flush=True)
    size = tuple(training[0][0].shape[2:])

    def refine(refiner: Refiner, batch: Batch, zero_guide: bool = False) -> torch.Tensor:
        left, right, coarse, _ = batch
        guide = torch.zeros_like(left) if zero_guide else left
        return refined_level(refiner, guide, right, coarse, size, 'left', config.align_corners)

    def held_out_epe(refiner: Refiner, zero_guide: bool) -> float:
        errors = []
        with torch.no_grad():
            for batch in held_out:
                truth = batch[3]
                valid = torch.isfinite(truth) & (truth < config.max_disparity)
                errors.append(float((refine(refiner, batch, zero_guide)[valid] - truth[valid]).abs().mean()))
        return float(np.mean(errors))

    refiner = Refiner(config)  # the fresh one with_refiner_count drew: last layer at zero, plain upsampling
    refiner.load_state_dict({key.removeprefix('refiners.0.'): value for key, value in state.items()
                             if key.startswith('refiners.0.')})
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=arguments.lr, weight_decay=1e-4)
    started = time.time()
    for step in range(arguments.steps + 1):
        if step % arguments.every == 0:
            refiner.eval()
            trained, ablated = held_out_epe(refiner, False), held_out_epe(refiner, True)
            refiner.train()
            print(f'step {step}: held-out EPE {trained:.3f}, zero guide {ablated:.3f}, rise {ablated - trained:+.3f} '
                  f'({time.time() - started:.0f} s)', flush=True)
        if step == arguments.steps:
            break
        for group in optimizer.param_groups:  # linear warm-up over 50 steps, then constant
            group['lr'] = arguments.lr * min(1.0, (step + 1) / 50)
        batch = training[step % len(training)]
        with torch.autocast('cpu', dtype=torch.bfloat16):
            refined = refine(refiner, batch)
        loss = stereo_pyramid_loss([refined.float()], None, batch[3], None, None, None, config.max_disparity, 1.0, 2.0)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(refiner.parameters(), 1.0)
        optimizer.step()
    refiner.eval()
    state.update({f'refiners.0.{key}': value.detach().clone() for key, value in refiner.state_dict().items()})
    pair = motorcycle()
    scores = refinement_scores(dataclasses.replace(candidate, config=config, state_dict=state), pair.left,
                               pair.right, pair.disparity)
    print(f'Motorcycle, the network\'s own coarse output: EPE {scores.output.epe:.3f} as trained, '
          f'{scores.without_guide.epe:.3f} with zero guide (soft argmin {scores.levels[0].epe:.3f})', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
