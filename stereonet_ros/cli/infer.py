"""stereonet-infer: disparity for one rectified stereo pair.

    stereonet-infer LEFT RIGHT --out OUT.(npy|pfm) [--color OUT.png] [--gt GT.(pfm|npy)]
                    [--checkpoint PATH] [--backend auto] [--device auto] [--precision auto]
                    [--inference-scale 1.0] [--no-refine] [--local-search PX]

Writes the left-view disparity, float32 pixels of the input (at the input size whatever
``--inference-scale``), as ``.npy`` or ``.pfm``; with
``--color`` also a colour-mapped picture; with ``--gt`` prints EPE, bad-1/2/3 and D1 against a
ground-truth disparity (non-finite = unknown). Bad input exits non-zero with a one-line reason.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from stereonet_ros.cli import NODE_PRECISION_HELP, NODE_PRECISIONS, add_after_search_flags

PROGRAM = 'stereonet-infer'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description='Left-view disparity of a rectified stereo pair.')
    parser.add_argument('left', type=Path, help='left image (PNG, JPEG, PPM/PGM, TIFF; 8 or 16 bit)')
    parser.add_argument('right', type=Path, help='right image, same size as left')
    parser.add_argument('--out', type=Path, required=True, help='disparity output: .npy or .pfm (float32 pixels)')
    parser.add_argument('--color', type=Path, help='also write a colour-mapped disparity picture (.png)')
    parser.add_argument('--gt', type=Path,
                        help='ground-truth disparity (.pfm or .npy; inf/NaN = unknown) to score against')
    parser.add_argument('--checkpoint', type=Path,
                        help='stereonet_ros .safetensors, seed Lightning .ckpt, or .onnx from stereonet-export '
                        '(default: the bundled checkpoint)')
    parser.add_argument('--backend', default='auto', choices=('auto', 'pytorch', 'onnxruntime'),
                        help="'auto' runs the bundled default in ONNX Runtime on a CPU in fp32 and in PyTorch "
                        'otherwise, a checkpoint file in PyTorch, an .onnx file in ONNX Runtime (default auto)')
    parser.add_argument('--device', default='auto', help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument('--precision', default='auto', choices=NODE_PRECISIONS, help=NODE_PRECISION_HELP)
    parser.add_argument('--inference-scale', type=float, default=1.0, metavar='S',
                        help='run the network on the pair resized by S, in [0.1, 2.5] (above 1: finer, about S^2 '
                        'the time); the disparity comes back at the input size, in input pixels (default 1)')
    parser.add_argument('--no-refine', action='store_true',
                        help='skip the refiner: the soft argmin carried to the input size guided by the image, about '
                        "a third of the time (the node's refine false; the bundled default on a CPU runs its export "
                        'without refiners in ONNX Runtime, a checkpoint file runs in PyTorch)')
    parser.add_argument('--local-search', type=int, default=None, metavar='PX',
                        help="search the photometric cost within PX pixels of the network's answer, 0..16, 0 = off "
                        "(default: the node's local_search_px, -1: 4 where the network runs on the CPU, 0 on a GPU)")
    add_after_search_flags(parser)
    parser.add_argument('--max-pixels', type=int, default=None, metavar='N',
                        help='most pixels the network runs on (after --inference-scale): a larger pair runs at the '
                        'largest smaller scale that fits, with a warning (default 4000000: about 3 GiB on a CPU)')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    # Imported here so that --help and usage errors answer without loading torch (and the ONNX Runtime
    # backend never loads it).
    import numpy as np

    from stereonet_ros.cli import fail
    from stereonet_ros.evaluation.metrics import MetricsError, disparity_metrics
    from stereonet_ros.image_io import (DisparityFileError, ImageReadError, ImageWriteError, colorize_disparity,
                                        read_disparity, read_image, write_disparity, write_png)
    from stereonet_ros.backends import open_predictor
    from stereonet_ros.inference_common import (DEFAULT_MAX_PIXELS, MAX_INFERENCE_SCALE, MIN_INFERENCE_SCALE,
                                                InputError, UntrainedPlaceholderWarning, check_inference_scale,
                                                check_local_search)
    from stereonet_ros.local_search import AUTO
    from stereonet_ros.model.checkpoint import CheckpointError

    if arguments.out.suffix.lower() not in ('.npy', '.pfm'):
        fail(PROGRAM, f'--out {arguments.out}: the extension must be .npy or .pfm', status=2)
    if arguments.color is not None and arguments.color.suffix.lower() != '.png':
        fail(PROGRAM, f'--color {arguments.color}: the extension must be .png', status=2)
    max_pixels = DEFAULT_MAX_PIXELS if arguments.max_pixels is None else arguments.max_pixels
    if max_pixels < 1:
        fail(PROGRAM, f'--max-pixels {max_pixels}: must be >= 1', status=2)
    try:
        scale = check_inference_scale(arguments.inference_scale)
    except InputError:
        fail(PROGRAM, f'--inference-scale {arguments.inference_scale!r}: must be in '
             f'[{MIN_INFERENCE_SCALE}, {MAX_INFERENCE_SCALE}]', status=2)
    try:
        reach = check_local_search(AUTO if arguments.local_search is None else arguments.local_search)
    except InputError as err:
        fail(PROGRAM, f'--local-search: {err}', status=2)
    try:
        left = read_image(arguments.left)
        right = read_image(arguments.right)
        truth = read_disparity(arguments.gt) if arguments.gt is not None else None
        height, width = left.shape[:2]
        if left.shape[:2] != right.shape[:2]:
            raise InputError(f'left image {arguments.left} is {left.shape[1]}x{left.shape[0]} but right image '
                             f'{arguments.right} is {right.shape[1]}x{right.shape[0]}; a rectified pair has one size')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', UntrainedPlaceholderWarning)
            predictor = open_predictor(arguments.checkpoint, device=arguments.device,
                                       precision=arguments.precision, backend=arguments.backend,
                                       refine=not arguments.no_refine)
        for warning in caught:
            print(f'{PROGRAM}: warning: {warning.message}', file=sys.stderr)
        answer = predictor.infer(left, right, scale=scale, max_pixels=max_pixels, local_search=reach,
                                 sgbm_fallback=not arguments.no_sgbm_fallback,
                                 fill_occlusions=not arguments.no_fill_occlusions,
                                 left_right_check=arguments.left_right_check)
        disparity = answer.disparity
        if answer.scale < scale:
            print(f'{PROGRAM}: warning: {width}x{height} pair run at inference scale {answer.scale:.3f} instead of '
                  f'{scale:g}: more than --max-pixels {max_pixels}', file=sys.stderr)
            scale = answer.scale
        broken = int(np.count_nonzero(~np.isfinite(disparity)))
        if broken:  # finite images in: only the weights (or fp16 overflow) can do this; write nothing
            raise CheckpointError(f'the network gave non-finite disparities ({broken} of {disparity.size} pixels) '
                                  f'with checkpoint {arguments.checkpoint or "bundled default"} at precision '
                                  f'{predictor.precision}')
        write_disparity(arguments.out, disparity)
        if arguments.color is not None:
            write_png(arguments.color, colorize_disparity(disparity, vmin=0.0))
        scores = disparity_metrics(disparity, truth) if truth is not None else None
    except (ImageReadError, ImageWriteError, DisparityFileError, InputError, CheckpointError, MetricsError) as err:
        fail(PROGRAM, str(err))
    except OSError as err:
        fail(PROGRAM, f'{err.filename or ""}: {err.strerror or err}')
    except (RuntimeError, MemoryError) as err:  # e.g. out of memory on the device: one line, not a traceback
        fail(PROGRAM, f'running the network failed: {type(err).__name__}: {err}')
    valid = disparity[disparity >= 0]
    print(f'{PROGRAM}: {width}x{height} disparity (min {valid.min():.2f}, max {valid.max():.2f} px, '
          f'device {predictor.device}' + (f', inference scale {scale:g}' if scale != 1.0 else '')
          + f') -> {arguments.out}' + (f', {arguments.color}' if arguments.color else ''))
    if scores is not None:
        print(f'{PROGRAM}: against {arguments.gt} ({scores.valid_pixels} pixels with ground truth): '
              f'EPE {scores.epe:.2f} px, bad-1 {scores.bad1:.1f} %, bad-2 {scores.bad2:.1f} %, '
              f'bad-3 {scores.bad3:.1f} %, D1 {scores.d1:.1f} %')
        if predictor.is_placeholder:
            print(f'{PROGRAM}: (these scores are of the untrained placeholder network, not of StereoNet)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
