"""stereonet-infer and stereonet-convert as a user runs them: installed console scripts, real files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stereonet_ros.pfm import read_pfm

BIN = Path(sys.executable).parent


def run_installed(program: str, *arguments: str | Path) -> subprocess.CompletedProcess[str]:
    """Run an installed console script as a user would (no stdin, Python warnings shown)."""
    executable = BIN / program
    if not executable.exists():
        pytest.fail(f'{executable} is not installed: run scripts/setup')
    return subprocess.run([str(executable), *map(str, arguments)], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, env={**os.environ, 'PYTHONWARNINGS': 'default'})


@pytest.fixture(scope='module')
def seed_pair(tmp_path_factory: pytest.TempPathFactory, seed_reference: dict[str, np.ndarray]) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp('pair')
    left, right = folder / 'left.png', folder / 'right.png'
    Image.fromarray(seed_reference['left_100x170'].astype(np.uint8)).save(left)
    Image.fromarray(seed_reference['right_100x170'].astype(np.uint8)).save(right)
    return left, right


def _single_error_line(result: subprocess.CompletedProcess[str], program: str) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f'{program}: error: ')
    return lines[0]


def test_infer_writes_seed_disparity_as_pfm_npy_and_colour_png(tmp_path: Path, seed_pair: tuple[Path, Path],
                                                               seed_checkpoint_path: Path,
                                                               seed_reference: dict[str, np.ndarray]) -> None:
    left, right = seed_pair
    expected = seed_reference['disparity_100x170'][0, 0]
    pfm, npy, picture = tmp_path / 'd.pfm', tmp_path / 'd.npy', tmp_path / 'd.png'
    # The seed's own reference outputs are its network's answers: without the local search after it.
    result = run_installed('stereonet-infer', left, right, '--checkpoint', seed_checkpoint_path, '--out', pfm,
                           '--color', picture, '--device', 'cpu', '--local-search', '0')
    assert result.returncode == 0, result.stderr
    assert np.abs(read_pfm(pfm) - expected).max() <= 1e-3
    with Image.open(picture) as image:
        assert image.mode == 'RGB' and image.size == (170, 100)
    result = run_installed('stereonet-infer', left, right, '--checkpoint', seed_checkpoint_path, '--out', npy,
                           '--local-search', '0')
    assert result.returncode == 0, result.stderr
    stored = np.load(npy)
    assert stored.dtype == np.float32 and np.abs(stored - expected).max() <= 1e-3


def test_infer_warns_that_the_placeholder_is_untrained(tmp_path: Path, seed_pair: tuple[Path, Path],
                                                       placeholder_checkpoint_path: Path) -> None:
    result = run_installed('stereonet-infer', *seed_pair, '--checkpoint', placeholder_checkpoint_path, '--out',
                           tmp_path / 'd.npy')
    assert result.returncode == 0, result.stderr
    assert 'UNTRAINED placeholder' in result.stderr
    assert np.load(tmp_path / 'd.npy').shape == (100, 170)


def test_infer_runs_the_bundled_default_without_a_checkpoint_argument(tmp_path: Path,
                                                                      seed_pair: tuple[Path, Path]) -> None:
    result = run_installed('stereonet-infer', *seed_pair, '--out', tmp_path / 'd.npy')
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / 'd.npy').shape == (100, 170)


def test_convert_then_infer_gives_the_same_numbers(tmp_path: Path, seed_pair: tuple[Path, Path],
                                                   seed_checkpoint_path: Path) -> None:
    converted = tmp_path / 'seed.safetensors'
    result = run_installed('stereonet-convert', seed_checkpoint_path, converted)
    assert result.returncode == 0, result.stderr
    assert 'gray, K=3, R=3, max disparity 256' in result.stdout
    from_seed, from_ours = tmp_path / 'a.npy', tmp_path / 'b.npy'
    for checkpoint, out in ((seed_checkpoint_path, from_seed), (converted, from_ours)):
        assert run_installed('stereonet-infer', *seed_pair, '--checkpoint', checkpoint, '--out', out).returncode == 0
    assert np.array_equal(np.load(from_seed), np.load(from_ours))


def test_infer_bad_inputs_exit_nonzero_with_one_line(tmp_path: Path, seed_pair: tuple[Path, Path]) -> None:
    left, right = seed_pair
    out = tmp_path / 'd.npy'
    line = _single_error_line(run_installed('stereonet-infer', left, tmp_path / 'missing.png', '--out', out),
                              'stereonet-infer')
    assert 'missing.png' in line

    garbage = tmp_path / 'garbage.png'
    garbage.write_bytes(b'\x89PNG\r\n\x1a\nthis is not really a png')
    line = _single_error_line(run_installed('stereonet-infer', left, garbage, '--out', out), 'stereonet-infer')
    assert 'garbage.png' in line

    small = tmp_path / 'small.png'
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(small)
    line = _single_error_line(run_installed('stereonet-infer', left, small, '--out', out), 'stereonet-infer')
    assert '170x100' in line and '60x50' in line

    line = _single_error_line(run_installed('stereonet-infer', left, right, '--out', tmp_path / 'd.tiff'),
                              'stereonet-infer')
    assert '.npy or .pfm' in line

    not_a_checkpoint = tmp_path / 'weights.ckpt'
    not_a_checkpoint.write_text('not weights')
    line = _single_error_line(run_installed('stereonet-infer', left, right, '--checkpoint', not_a_checkpoint,
                                            '--out', out), 'stereonet-infer')
    assert 'weights.ckpt' in line
    assert not out.exists()


def test_infer_runs_at_the_inference_scale_and_answers_at_the_input_size(tmp_path: Path, seed_pair: tuple[Path, Path],
                                                                        placeholder_checkpoint_path: Path) -> None:
    import warnings

    from stereonet_ros.image_io import read_image
    from stereonet_ros.inference import Predictor

    out = tmp_path / 'd.npy'
    result = run_installed('stereonet-infer', *seed_pair, '--checkpoint', placeholder_checkpoint_path, '--out', out,
                           '--device', 'cpu', '--inference-scale', '2.5',  # the largest scale, end included
                           '--local-search', '0')  # the network's answer (the steps after it: their own tests)
    assert result.returncode == 0, result.stderr
    assert 'inference scale 2.5' in result.stdout
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        predictor = Predictor.from_checkpoint(placeholder_checkpoint_path, device='cpu')
    expected = predictor.predict(read_image(seed_pair[0]), read_image(seed_pair[1]), scale=2.5)
    stored = np.load(out)
    assert stored.shape == (100, 170) and np.abs(stored - expected).max() <= 1e-4
    assert np.abs(stored - predictor.predict(read_image(seed_pair[0]), read_image(seed_pair[1]))).max() > 1e-2

    for bad in ('2.5001', '0.05', 'nan'):
        line = _single_error_line(run_installed('stereonet-infer', *seed_pair, '--out', tmp_path / 'e.npy',
                                                '--inference-scale', bad), 'stereonet-infer')
        assert f'--inference-scale {float(bad)!r}: must be in [0.1, 2.5]' in line
    assert not (tmp_path / 'e.npy').exists()


def test_infer_without_the_refiner_answers_as_the_predictor_without_it(tmp_path: Path,
                                                                        seed_pair: tuple[Path, Path]) -> None:
    import warnings

    from stereonet_ros.image_io import read_image
    from stereonet_ros.inference import Predictor

    from stereonet_ros.backends import DEFAULT_ONNX

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        unrefined = Predictor.from_checkpoint(None, device='cpu', refine=False)
        with_refiner = Predictor.from_checkpoint(None, device='cpu')
    left, right = read_image(seed_pair[0]), read_image(seed_pair[1])
    expected = unrefined.predict(left, right, scale=2.0)
    assert np.abs(expected - with_refiner.predict(left, right, scale=2.0)).max() > 0.1  # the flag changes the answer
    # In PyTorch exactly the Predictor's; by default on a CPU in fp32 the shipped export without refiners, in ONNX
    # Runtime (within the exporter's parity bound, 0.01 px). fp32 named: precision auto is bf16 on some CPUs.
    for backend, tolerance in (('pytorch', 1e-4), ('auto', 0.01)):
        out = tmp_path / f'{backend}.npy'
        result = run_installed('stereonet-infer', *seed_pair, '--out', out, '--device', 'cpu', '--no-refine',
                               '--inference-scale', '2', '--backend', backend, '--local-search', '0',
                               '--precision', 'fp32')
        assert result.returncode == 0, result.stderr
        stored = np.load(out)
        assert stored.shape == (100, 170) and np.abs(stored - expected).max() <= tolerance, backend
    line = _single_error_line(run_installed('stereonet-infer', *seed_pair, '--out', tmp_path / 'e.npy', '--no-refine',
                                            '--checkpoint', DEFAULT_ONNX), 'stereonet-infer')
    assert 'refine false: the ONNX model' in line and 'runs as it was exported' in line
    assert not (tmp_path / 'e.npy').exists()


def test_infer_runs_the_nodes_local_search_by_default(tmp_path: Path) -> None:
    """stereonet-infer answers as the node does: the local search within 4 px after the network, unless told
    otherwise; a reach outside 0..16 is refused in one line."""
    import warnings

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    left, right = tmp_path / 'left.png', tmp_path / 'right.png'
    Image.fromarray(sample.left[100:300, 200:500]).save(left)
    Image.fromarray(sample.right[100:300, 200:500]).save(right)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # precision auto, as the CLI's default: bf16 where the CPU has it natively
        predictor = open_predictor(None, device='cpu', backend='pytorch', precision='auto')
    crop = (sample.left[100:300, 200:500], sample.right[100:300, 200:500])
    for flags, reach in (((), 4), (('--local-search', '0'), 0), (('--local-search', '16'), 16)):
        out = tmp_path / f'{reach}.npy'
        result = run_installed('stereonet-infer', left, right, '--out', out, '--device', 'cpu', '--backend', 'pytorch',
                               *flags)
        assert result.returncode == 0, result.stderr
        np.testing.assert_allclose(np.load(out), predictor.infer(*crop, local_search=reach).disparity, atol=1e-4)
    assert np.abs(np.load(tmp_path / '4.npy') - np.load(tmp_path / '0.npy')).max() > 0.5
    line = _single_error_line(run_installed('stereonet-infer', left, right, '--out', tmp_path / 'x.npy',
                                            '--local-search', '17'), 'stereonet-infer')
    assert '--local-search' in line and 'must be a whole number in [0, 16]' in line


def test_infer_refuses_an_unsafe_checkpoint_without_running_it(tmp_path: Path, seed_pair: tuple[Path, Path]) -> None:
    marker = tmp_path / 'payload_ran'
    evil = tmp_path / 'evil.ckpt'
    script = (f'import os, torch\nclass P:\n    def __reduce__(self):\n'
              f'        return (os.system, ("touch {marker}",))\n'
              f'torch.save({{"state_dict": {{}}, "x": P()}}, "{evil}")\n')
    subprocess.run([sys.executable, '-c', script], check=True, timeout=120)
    line = _single_error_line(run_installed('stereonet-infer', *seed_pair, '--checkpoint', evil, '--out',
                                            tmp_path / 'd.npy'), 'stereonet-infer')
    assert 'system' in line and 'nothing in it was executed' in line
    assert not marker.exists()


def test_convert_bad_inputs_exit_nonzero_with_one_line(tmp_path: Path, seed_checkpoint_path: Path) -> None:
    line = _single_error_line(run_installed('stereonet-convert', tmp_path / 'none.ckpt', tmp_path / 'o.safetensors'),
                              'stereonet-convert')
    assert 'none.ckpt' in line
    line = _single_error_line(run_installed('stereonet-convert', seed_checkpoint_path, tmp_path / 'o.pt'),
                              'stereonet-convert')
    assert 'must end in .safetensors' in line
