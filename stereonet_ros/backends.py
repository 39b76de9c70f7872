"""Open weights for inference, choosing the backend: PyTorch or ONNX Runtime. The one way the node and
the CLIs get a predictor.

- A path ending in ``.onnx`` runs in ONNX Runtime (:class:`~stereonet_ros.onnx_backend.OnnxPredictor`).
- A checkpoint (``.safetensors``, a seed ``.ckpt``) runs in PyTorch (:class:`~stereonet_ros.inference.Predictor`).
- The bundled default (no path) ships three ways: the checkpoint and two exports of exactly that file
  (their metadata record the checkpoint's SHA-256), :data:`DEFAULT_ONNX` with its refiners and
  :data:`DEFAULT_NOREFINE_ONNX` without them (what ``refine=False`` runs). ``backend='auto'`` runs it in ONNX
  Runtime when the inference runs on the CPU in float32, because there it needs no PyTorch at all (and on
  the 2026-11-29 EPYC took 0.57-0.69x PyTorch's time; machines differ: ``benchmarks/backends.py``); on a
  GPU, or in bf16/fp16, PyTorch (CUDA graphs, autocast).
- Without its refiners (``refine=False``, :func:`~stereonet_ros.inference.without_refiners`) a checkpoint
  file runs in PyTorch, and an ``.onnx`` file is refused: it runs as it was exported.

Deciding "on the CPU" must not import PyTorch where it would not be used: ``device='cpu'`` is the CPU;
``device='auto'`` is the CPU when no NVIDIA device node exists (a CUDA device needs the driver's
``/dev/nvidiactl``, or on a Jetson ``/dev/nvhost-ctrl-gpu``), else PyTorch is asked.

This module imports neither PyTorch nor ONNX Runtime itself; the predictor it opens does.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from stereonet_ros.inference_common import DEFAULT_CHECKPOINT, InputError, Precision

if TYPE_CHECKING:
    from stereonet_ros.inference import Predictor
    from stereonet_ros.onnx_backend import OnnxPredictor

Backend = Literal['auto', 'pytorch', 'onnxruntime']
BACKENDS: tuple[Backend, ...] = ('auto', 'pytorch', 'onnxruntime')

PrecisionChoice = Literal['auto', 'fp32', 'fp16', 'bf16']
"""What the node's ``precision`` and the CLIs that mirror it take: a precision, or ``auto``
(:func:`resolved_precision`)."""

NATIVE_BF16_FLAGS: frozenset[str] = frozenset({'avx512_bf16', 'amx_bf16'})
"""The CPU flags (Linux's ``/proc/cpuinfo``) of cores that compute bfloat16 natively: AVX512-BF16, AMX."""


def export_path(checkpoint: Path, refine: bool = True) -> Path:
    """Where the export of ``checkpoint`` that ``refine`` runs lies beside it (``promote`` writes both):
    ``name.onnx`` with its refiners, ``name_norefine.onnx`` without them."""
    return checkpoint.with_suffix('.onnx') if refine else checkpoint.with_name(f'{checkpoint.stem}_norefine.onnx')


DEFAULT_ONNX = export_path(DEFAULT_CHECKPOINT)
"""The bundled default exported by ``stereonet-export --confidence`` (dynamic size, float32)."""

DEFAULT_NOREFINE_ONNX = export_path(DEFAULT_CHECKPOINT, refine=False)
"""The same without its refiners (``stereonet-export --no-refine --confidence``): the bundled default's
``refine=False`` in ONNX Runtime."""

NVIDIA_DEVICE_NODES = (Path('/dev/nvidiactl'), Path('/dev/nvhost-ctrl-gpu'))
"""Device files without which no CUDA device is usable: the desktop/server driver's, and Jetson's (L4T)."""


def default_onnx_is_current(onnx_path: Path | None = None, checkpoint: Path = DEFAULT_CHECKPOINT, *,
                            refine: bool = True) -> bool:
    """Whether ``onnx_path`` (default: :func:`export_path` of ``checkpoint`` and ``refine``) exists and was
    exported from ``checkpoint`` as it is now (SHA-256 recorded in its metadata): a default promoted without new exports
    must not run the old weights. For ``refine=False`` it must also hold no refiners, so that a refine
    export put in its place is never run as the network without them."""
    onnx_path = export_path(checkpoint, refine) if onnx_path is None else onnx_path
    if not (onnx_path.is_file() and checkpoint.is_file()):
        return False
    recorded_sha256, refiners = _recorded_source(onnx_path, _identity(onnx_path))
    return recorded_sha256 == _sha256(checkpoint, _identity(checkpoint)) and (refine or refiners == 0)


def _identity(path: Path) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten: inode, size, modification time."""
    status = path.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns


# Reading what an export records loads it in ONNX Runtime and hashing reads the checkpoint: about 0.1 s
# each, paid once per file as it is, not at every model switch of a running node.
@functools.lru_cache(maxsize=8)
def _recorded_source(onnx_path: Path, _identity: tuple[int, int, int]) -> tuple[str | None, int | None]:
    from stereonet_ros.model.onnx_metadata import read_recorded_source

    return read_recorded_source(onnx_path)


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, _identity: tuple[int, int, int]) -> str:
    from stereonet_ros.model.onnx_metadata import file_sha256

    return file_sha256(path)


def cuda_may_exist() -> bool:
    """False when this machine certainly has no usable CUDA device (no NVIDIA device node); True when it
    might, and only PyTorch can say."""
    return any(node.exists() for node in NVIDIA_DEVICE_NODES)


def runs_on_cpu(device: str) -> bool:
    """Whether ``device`` ('auto', 'cpu', 'cuda', 'cuda:N') means the CPU here, importing PyTorch only
    when the answer depends on it (an NVIDIA device node exists and PyTorch is installed)."""
    if device == 'cpu':
        return True
    if device != 'auto':
        return False
    if not cuda_may_exist() or importlib.util.find_spec('torch') is None:
        return True
    import torch

    return not torch.cuda.is_available()


def chosen_backend(path: str | os.PathLike[str] | None, device: str, precision: Precision,
                   backend: Backend = 'auto', refine: bool = True) -> Literal['pytorch', 'onnxruntime']:
    """Which backend :func:`open_predictor` runs ``path`` with (module doc). Without its refiners
    (``refine=False``) the bundled default runs its refiner-less export where it would run its export,
    and a checkpoint file runs in PyTorch.

    Raises:
        InputError: a backend that cannot run this file (a checkpoint in ONNX Runtime, an ``.onnx`` in
            PyTorch), an unknown backend, ``refine=False`` with an ``.onnx`` file, or backend onnxruntime
            for the bundled default whose export is missing or stale.
    """
    if backend not in BACKENDS:
        raise InputError(f'backend {backend!r}: must be one of {list(BACKENDS)}')
    if path is not None and Path(path).suffix.lower() == '.onnx':
        if not refine:
            raise InputError(f'refine false: the ONNX model {path} runs as it was exported; pass its checkpoint, '
                             'or run an export made without refiners (stereonet-export --no-refine) with refine true')
        if backend == 'pytorch':
            raise InputError(f'backend pytorch cannot run the ONNX model {path}: use backend auto or onnxruntime')
        return 'onnxruntime'
    if backend == 'pytorch':
        return 'pytorch'
    if path is not None:
        if backend == 'onnxruntime':
            raise InputError(f'backend onnxruntime runs .onnx files: export {path} with stereonet-export first')
        return 'pytorch'
    export = export_path(DEFAULT_CHECKPOINT, refine)
    if backend == 'onnxruntime':
        if not default_onnx_is_current(export, refine=refine):
            raise InputError(f'backend onnxruntime: {export} is missing or was not exported from the bundled '
                             f'default checkpoint{"" if refine else " without its refiners"}')
        return 'onnxruntime'
    usable = (precision == 'fp32' and importlib.util.find_spec('onnxruntime') is not None
              and default_onnx_is_current(export, refine=refine))
    return 'onnxruntime' if usable and runs_on_cpu(device) else 'pytorch'


def cpu_flags_say_native_bf16(cpuinfo: str) -> bool:
    """Whether the ``flags`` of a ``/proc/cpuinfo`` text name a native bfloat16 unit (:data:`NATIVE_BF16_FLAGS`)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(':')
        if name.strip() == 'flags':
            return not NATIVE_BF16_FLAGS.isdisjoint(value.split())
    return False


def _cpu_has_native_bf16_flags() -> bool:
    try:
        return cpu_flags_say_native_bf16(Path('/proc/cpuinfo').read_text(encoding='utf-8', errors='replace'))
    except OSError:  # not Linux: nothing says so
        return False


def resolved_precision(precision: PrecisionChoice, path: str | os.PathLike[str] | None, device: str,
                       backend: Backend = 'auto') -> Precision:
    """``precision``, or for ``auto``: ``bf16`` for the bundled default (``path`` None) in PyTorch on a CPU that
    computes bfloat16 natively (its flags name AVX512-BF16 or AMX, and oneDNN agrees), ``fp32`` everywhere else:
    a checkpoint you name (its bf16 answers are not measured), a GPU (not measured either), a CPU without the unit
    (oneDNN would emulate it, slower than float32), ``backend`` onnxruntime (its exports run as exported), no
    PyTorch that imports.

    Why: there the bundled default's network took 0.26-0.27x ONNX Runtime's float32 time and the node's CPU
    default call 0.54x, with the same dense figures to within 0.03 px on both real pairs and the synthetic set
    (``benchmarks/cpu_precision.py``; README, ``precision``). PyTorch is imported only where the flags say yes.
    """
    if precision != 'auto':
        return precision
    if path is not None or backend == 'onnxruntime':
        return 'fp32'
    if importlib.util.find_spec('torch') is None or not _cpu_has_native_bf16_flags():
        return 'fp32'
    try:
        if not runs_on_cpu(device):
            return 'fp32'
        from stereonet_ros.precision import cpu_has_native_bf16

        return 'bf16' if cpu_has_native_bf16() else 'fp32'
    except ImportError:  # PyTorch present but not importable: the torch-free path
        return 'fp32'


def open_predictor(path: str | os.PathLike[str] | None = None, device: str = 'auto',
                   precision: PrecisionChoice = 'fp32', *, backend: Backend = 'auto', threads: int = 0,
                   refine: bool = True) -> Predictor | OnnxPredictor:
    """Open ``path`` (``None`` = the bundled default) for inference with the backend
    :func:`chosen_backend` picks, at ``precision`` (``auto``: :func:`resolved_precision`).

    ``threads`` > 0 sets the CPU threads the network runs on: the ONNX Runtime session's, or PyTorch's,
    which is process-wide (``torch.set_num_threads``); 0 leaves each backend's default (all cores). The steps after
    the network (the local search) run on as many.

    Raises:
        CheckpointError: the file cannot be used (message says why).
        InputError: bad device, precision, backend or threads, or ``refine=False`` with an ``.onnx`` file.
    """
    if threads < 0:
        raise InputError(f'threads {threads}: must be >= 0')
    precision = resolved_precision(precision, path, device, backend)
    if chosen_backend(path, device, precision, backend, refine) == 'onnxruntime':
        from stereonet_ros.onnx_backend import OnnxPredictor

        return OnnxPredictor(export_path(DEFAULT_CHECKPOINT, refine) if path is None else path, device=device,
                             precision=precision, threads=threads)
    from stereonet_ros.inference import Predictor

    if threads:
        import torch

        torch.set_num_threads(threads)
    return Predictor.from_checkpoint(path, device=device, precision=precision, refine=refine)
