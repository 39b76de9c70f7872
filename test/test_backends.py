"""Choosing the backend (stereonet_ros.backends), the shipped ONNX default, and the torch-free rules the
ONNX Runtime backend applies (stereonet_ros.inference_common) against PyTorch's."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stereonet_ros import backends
from stereonet_ros.backends import (DEFAULT_NOREFINE_ONNX, DEFAULT_ONNX, chosen_backend, default_onnx_is_current,
                                    runs_on_cpu)
from stereonet_ros.inference import DEFAULT_CHECKPOINT, InputError, resize
from stereonet_ros.inference_common import bilinear_array, resize_array
from stereonet_ros.processing import is_device_error

pytest.importorskip('onnxruntime')


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine without NVIDIA device nodes (this one, whatever it has)."""
    monkeypatch.setattr(backends, 'NVIDIA_DEVICE_NODES', (tmp_path / 'nvidiactl',))


def test_the_shipped_onnx_is_the_export_of_the_shipped_default() -> None:
    """Promote writes all three; a default replaced without new exports must fail here (and auto then uses
    PyTorch)."""
    assert default_onnx_is_current(), f'run: stereonet-export --out {DEFAULT_ONNX} --confidence'
    assert default_onnx_is_current(refine=False), \
        f'run: stereonet-export --out {DEFAULT_NOREFINE_ONNX} --confidence --no-refine'


def test_a_changed_checkpoint_makes_the_export_stale(tmp_path: Path) -> None:
    checkpoint, export = tmp_path / 'default.safetensors', tmp_path / 'default.onnx'
    shutil.copyfile(DEFAULT_CHECKPOINT, checkpoint)
    shutil.copyfile(DEFAULT_ONNX, export)
    assert default_onnx_is_current(export, checkpoint)
    with checkpoint.open('ab') as stream:
        stream.write(b' ')  # one byte more: another file
    assert not default_onnx_is_current(export, checkpoint)
    assert not default_onnx_is_current(tmp_path / 'missing.onnx', checkpoint)
    export.write_bytes(b'not onnx')
    assert not default_onnx_is_current(export, checkpoint)


def test_an_export_with_refiners_is_not_taken_for_the_one_without(tmp_path: Path) -> None:
    """Both exports record the same checkpoint; refine false must not run the refine export by mistake."""
    checkpoint = tmp_path / 'default.safetensors'
    shutil.copyfile(DEFAULT_CHECKPOINT, checkpoint)
    shutil.copyfile(DEFAULT_ONNX, tmp_path / 'default_norefine.onnx')
    assert not default_onnx_is_current(None, checkpoint, refine=False)
    shutil.copyfile(DEFAULT_NOREFINE_ONNX, tmp_path / 'default_norefine.onnx')
    assert default_onnx_is_current(None, checkpoint, refine=False)


@pytest.mark.usefixtures('no_gpu')
@pytest.mark.parametrize('path, device, precision, backend, expected', [
    (None, 'auto', 'fp32', 'auto', 'onnxruntime'),   # the bundled default on a CPU: ONNX Runtime
    (None, 'cpu', 'fp32', 'auto', 'onnxruntime'),
    (None, 'cpu', 'bf16', 'auto', 'pytorch'),        # the export is float32
    (None, 'cuda', 'fp32', 'auto', 'pytorch'),
    (None, 'cpu', 'fp32', 'pytorch', 'pytorch'),
    (None, 'cuda', 'fp32', 'onnxruntime', 'onnxruntime'),
    ('weights.safetensors', 'cpu', 'fp32', 'auto', 'pytorch'),  # a file the user names runs as it is
    ('model.ONNX', 'cuda', 'fp32', 'auto', 'onnxruntime'),
])
def test_the_backend_rule(path: str | None, device: str, precision: str, backend: str, expected: str) -> None:
    assert chosen_backend(path, device, precision, backend) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize('path, backend, message', [
    ('model.onnx', 'pytorch', 'backend pytorch cannot run the ONNX model'),
    ('weights.safetensors', 'onnxruntime', 'export weights.safetensors with stereonet-export first'),
    (None, 'tensorrt', "backend 'tensorrt': must be one of"),
])
def test_a_backend_that_cannot_run_the_file_is_refused(path: str | None, backend: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        chosen_backend(path, 'cpu', 'fp32', backend)  # type: ignore[arg-type]


@pytest.mark.usefixtures('no_gpu')
@pytest.mark.parametrize('path, device, precision, backend, expected', [
    (None, 'cpu', 'fp32', 'auto', 'onnxruntime'),   # the bundled default's export without refiners
    (None, 'cpu', 'fp32', 'onnxruntime', 'onnxruntime'),
    (None, 'cpu', 'bf16', 'auto', 'pytorch'),
    (None, 'cuda', 'fp32', 'auto', 'pytorch'),
    (None, 'cpu', 'fp32', 'pytorch', 'pytorch'),
    ('weights.safetensors', 'cpu', 'fp32', 'auto', 'pytorch'),  # a checkpoint file: its refiners dropped in PyTorch
])
def test_the_backend_rule_without_refiners(path: str | None, device: str, precision: str, backend: str,
                                           expected: str) -> None:
    assert chosen_backend(path, device, precision, backend, refine=False) == expected  # type: ignore[arg-type]


@pytest.mark.usefixtures('no_gpu')
def test_without_refiners_the_default_runs_its_export_without_them_and_a_named_export_is_refused() -> None:
    """refine false on a CPU runs the bundled default's refiner-less export in ONNX Runtime, with PyTorch's answer;
    an .onnx file the user names runs as it was exported, so refine false refuses it and says what to do."""
    from stereonet_ros.inference import Predictor
    from stereonet_ros.onnx_backend import OnnxPredictor
    from stereonet_ros.samples import motorcycle

    for backend in ('auto', 'onnxruntime'):
        with pytest.raises(InputError, match='^refine false: the ONNX model model.onnx runs as it was exported; .*'
                                             'stereonet-export --no-refine'):
            chosen_backend('model.onnx', 'cpu', 'fp32', backend, refine=False)  # type: ignore[arg-type]
    onnx = backends.open_predictor(None, device='cpu', refine=False)
    assert isinstance(onnx, OnnxPredictor) and onnx.path == DEFAULT_NOREFINE_ONNX
    assert onnx.config.k_refinement_layers == 0
    pytorch = backends.open_predictor(None, device='cpu', backend='pytorch', refine=False)
    assert isinstance(pytorch, Predictor) and not list(pytorch.model.refiners)
    sample = motorcycle()
    left, right = sample.left[:200, :300], sample.right[:200, :300]
    difference = np.abs(onnx.infer(left, right, scale=1.5).disparity - pytorch.infer(left, right, scale=1.5).disparity)
    assert float(difference.max()) < 0.05
    assert backends.open_predictor(None, device='cpu').config.k_refinement_layers == 1  # the default keeps its own
    with pytest.raises(InputError, match='an ONNX model runs as it was exported; .* stereonet-export --no-refine'):
        Predictor.from_checkpoint(DEFAULT_ONNX, device='cpu', refine=False)


@pytest.mark.parametrize('refine', [True, False])
def test_a_stale_default_export_falls_back_to_pytorch_or_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                     no_gpu: None, refine: bool) -> None:
    monkeypatch.setattr(backends, 'default_onnx_is_current', lambda *args, **kwargs: False)
    assert chosen_backend(None, 'cpu', 'fp32', 'auto', refine=refine) == 'pytorch'
    with pytest.raises(InputError, match='was not exported from the bundled default'):
        chosen_backend(None, 'cpu', 'fp32', 'onnxruntime', refine=refine)


@pytest.mark.parametrize(('cpuinfo', 'native'), [
    ('processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n', True),  # Zen 4
    ('flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n', True),  # AMX alone names it
    ('flags\t\t: fpu avx2 avx512f avx512bw avx512dq avx512vl avx512_vnni\n', False),  # AVX-512, no BF16 unit
    ('flags\t\t: fpu avx2\nbugs\t\t: avx512_bf16\n', False),  # only the flags line counts
    ('Features\t: fp asimd evtstrm bf16\n', False),  # an ARM core's features: not oneDNN's x86 units
    ('', False),
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: str, native: bool) -> None:
    assert backends.cpu_flags_say_native_bf16(cpuinfo) is native


def test_precision_auto_is_bf16_only_for_pytorch_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch,
                                                                          no_gpu: None) -> None:
    """Where the flags name the unit and oneDNN agrees, the bundled default on the CPU runs in bf16 (what was
    measured); a checkpoint file or an .onnx file, backend onnxruntime, a GPU and a CPU without the unit run in
    fp32, and a precision named is kept (a bf16 the machine cannot run is still refused where it is opened)."""
    from stereonet_ros.precision import cpu_has_native_bf16

    monkeypatch.setattr(backends, '_cpu_has_native_bf16_flags', lambda: True)
    expected = 'bf16' if cpu_has_native_bf16() else 'fp32'  # oneDNN has the last word
    assert backends.resolved_precision('auto', None, 'cpu') == expected
    assert backends.resolved_precision('auto', None, 'auto', 'pytorch') == expected  # no NVIDIA device node here
    assert backends.resolved_precision('auto', 'weights.safetensors', 'cpu', 'pytorch') == 'fp32'
    assert backends.resolved_precision('auto', None, 'cpu', 'onnxruntime') == 'fp32'
    assert backends.resolved_precision('auto', 'model.onnx', 'cpu') == 'fp32'
    assert backends.resolved_precision('auto', None, 'cuda:0') == 'fp32'
    for named in ('fp32', 'bf16', 'fp16'):
        assert backends.resolved_precision(named, None, 'cpu', 'onnxruntime') == named  # type: ignore[arg-type]
    monkeypatch.setattr(backends, '_cpu_has_native_bf16_flags', lambda: False)
    assert backends.resolved_precision('auto', None, 'cpu') == 'fp32'
    predictor = backends.open_predictor(None, device='cpu', precision='auto')
    assert predictor.precision == 'fp32' and type(predictor).__name__ == 'OnnxPredictor'  # the torch-free default


@pytest.mark.parametrize('installed', [False, True])
def test_precision_auto_without_a_pytorch_that_imports_is_fp32_in_onnx_runtime(tmp_path: Path,
                                                                               installed: bool) -> None:
    """PyTorch not installed, or installed and failing to import (a package that raises ImportError first on the
    path): auto is fp32 even where the CPU flags name a bfloat16 unit, and the bundled default runs in ONNX
    Runtime."""
    blocked = tmp_path / 'blocked' / 'torch'
    blocked.mkdir(parents=True)
    (blocked / '__init__.py').write_text("raise ImportError('torch is blocked for this test')\n")
    script = ("import importlib.util, sys; real = importlib.util.find_spec; "
              + ("" if installed else "importlib.util.find_spec = lambda name, *a: None if name == 'torch' else "
                 "real(name, *a); ")
              + f"sys.path.insert(0, {str(blocked.parent)!r}); from stereonet_ros import backends; "
              "backends._cpu_has_native_bf16_flags = lambda: True; "
              "p = backends.open_predictor(None, device='cpu', precision='auto'); "
              "print(backends.resolved_precision('auto', None, 'cpu'), type(p).__name__, p.precision)")
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ['fp32', 'OnnxPredictor', 'fp32'], result.stderr


def test_device_auto_without_nvidia_device_nodes_is_the_cpu_without_importing_pytorch(tmp_path: Path) -> None:
    script = (f"import sys; from pathlib import Path; from stereonet_ros import backends; "
              f"backends.NVIDIA_DEVICE_NODES = (Path({str(tmp_path / 'nvidiactl')!r}),); "
              "print(backends.runs_on_cpu('auto'), backends.chosen_backend(None, 'auto', 'fp32'), "
              "'torch' in sys.modules)")
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ['True', 'onnxruntime', 'False'], result.stderr


def test_with_a_device_node_pytorch_decides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    node = tmp_path / 'nvidiactl'
    node.touch()
    monkeypatch.setattr(backends, 'NVIDIA_DEVICE_NODES', (node,))
    assert runs_on_cpu('auto') == (not torch.cuda.is_available())
    assert runs_on_cpu('cpu') and not runs_on_cpu('cuda:0')


@pytest.mark.parametrize('size', [(200, 311), (100, 517), (333, 400), (600, 900), (334, 518), (833, 1292)])
def test_the_numpy_resize_is_the_pytorch_resize(size: tuple[int, int]) -> None:
    """Shrinking (area) and enlarging (bilinear) as the PyTorch predictor does, on full-range noise (the worst
    case: a float32 sample position one unit in the last place apart moves a value by up to 0.007 of 255)."""
    values = np.random.default_rng(0).random((1, 3, 333, 517), dtype=np.float32) * 255
    expected = resize(torch.from_numpy(values), size).numpy()
    assert np.abs(resize_array(values, size) - expected).max() <= 0.01
    expected = F.interpolate(torch.from_numpy(values), size=size, mode='bilinear', align_corners=False).numpy()
    assert np.abs(bilinear_array(values, size) - expected).max() <= 0.01
    assert resize_array(values, (333, 517)) is values


def test_an_error_is_not_a_device_error_when_pytorch_was_never_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    error = RuntimeError('CUDA error: an illegal memory access was encountered')
    assert is_device_error(error)
    monkeypatch.delitem(sys.modules, 'torch')
    assert not is_device_error(error)
