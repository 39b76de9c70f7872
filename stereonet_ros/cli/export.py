"""stereonet-export: a checkpoint -> an ONNX model for ONNX Runtime or TensorRT.

    stereonet-export [CHECKPOINT] --out MODEL.onnx [--confidence] [--fp16] [--no-refine] [--height H --width W]

CHECKPOINT is a stereonet_ros ``.safetensors``, a seed Lightning ``.ckpt`` (default: the bundled
checkpoint). The model takes the normalized, padded pair (``left``, ``right``: float32 ``(1, C, H, W)``)
and gives ``disparity`` (and with ``--confidence`` ``confidence``); its input contract and provenance are
JSON in the file's metadata (see ``stereonet_ros.model.onnx_export``). Before writing, the export is run
with ONNX Runtime against PyTorch on the Motorcycle pair; more than 0.01 px apart (fp16: 0.25 px) and
nothing is written. ``--no-refine`` exports the network without its refiners (the soft argmin carried to
the input size, as the node's ``refine`` false), for ONNX Runtime: the bundled default ships one
(``stereonet_default_norefine.onnx``, what the node's ``refine`` false runs on a CPU). Errors exit non-zero
with one line.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

PROGRAM = 'stereonet-export'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description='Export a StereoNet checkpoint to ONNX.')
    parser.add_argument('checkpoint', type=Path, nargs='?',
                        help='stereonet_ros .safetensors or seed Lightning .ckpt (default: the bundled checkpoint)')
    parser.add_argument('--out', type=Path, required=True, help='the ONNX model to write (.onnx)')
    parser.add_argument('--confidence', action='store_true',
                        help='add the confidence output (matching confidence in [0, 1], as the node publishes)')
    parser.add_argument('--fp16', action='store_true',
                        help='float16 convolutions for GPUs (soft argmin and disparity stay float32)')
    parser.add_argument('--no-refine', action='store_true',
                        help="without the refiners: the soft argmin carried to the input size (the node's refine "
                        'false, in ONNX Runtime)')
    parser.add_argument('--height', type=int, metavar='H',
                        help='fix the input height (after padding: a multiple of the pad multiple); default dynamic')
    parser.add_argument('--width', type=int, metavar='W', help='fix the input width, with --height')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    from stereonet_ros.cli import fail

    if arguments.out.suffix.lower() != '.onnx':
        fail(PROGRAM, f'--out {arguments.out}: the extension must be .onnx', status=2)
    if (arguments.height is None) != (arguments.width is None):
        fail(PROGRAM, '--height and --width go together: give both to fix the size, or neither', status=2)
    if not arguments.out.parent.is_dir():
        fail(PROGRAM, f'--out {arguments.out}: folder {arguments.out.parent} does not exist', status=2)
    # Imported here so that --help and usage errors answer without loading torch.
    from stereonet_ros.inference import DEFAULT_CHECKPOINT, without_refiners
    from stereonet_ros.model.checkpoint import CheckpointError, load_checkpoint
    from stereonet_ros.model.onnx_export import ExportError, export_onnx

    source = arguments.checkpoint or DEFAULT_CHECKPOINT
    try:
        import onnx  # noqa: F401 - both are needed; say so before tracing
        import onnxruntime  # noqa: F401
    except ImportError as err:
        fail(PROGRAM, f'exporting needs the onnx and onnxruntime packages (requirements.txt): {err}')
    try:
        checkpoint = load_checkpoint(source)
        if arguments.no_refine:
            checkpoint = without_refiners(checkpoint)
        document = export_onnx(checkpoint, arguments.out, source=source, height=arguments.height,
                               width=arguments.width, with_confidence=arguments.confidence, fp16=arguments.fp16)
    except (CheckpointError, ExportError) as err:
        fail(PROGRAM, str(err))
    except OSError as err:
        fail(PROGRAM, f'cannot write {arguments.out}: {err.strerror or err}')
    worst = document['parity']['max_abs_difference']
    size = 'x'.join(map(str, document['fixed_size'][::-1])) if document['fixed_size'] else 'dynamic size'
    print(f'{PROGRAM}: {source} -> {arguments.out} (opset {document["opset"]}, {document["precision"]}, {size}, '
          f'outputs {", ".join(document["outputs"])}; ONNX Runtime vs PyTorch on Motorcycle: '
          + ', '.join(f'{name} max |diff| {value:.2g}' for name, value in worst.items()) + ')')
    return 0


if __name__ == '__main__':
    sys.exit(main())
