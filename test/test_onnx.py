"""ONNX deployment: stereonet-export, the exported file's metadata, and Predictor on an .onnx file (ONNX Runtime)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

from test_cli import run_installed  # noqa: E402

from stereonet_ros.cli import export as export_cli  # noqa: E402
from stereonet_ros.inference import DEFAULT_CHECKPOINT, InputError, Predictor  # noqa: E402
from stereonet_ros.model import onnx_export  # noqa: E402
from stereonet_ros.model.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from stereonet_ros.onnx_backend import OnnxPredictor  # noqa: E402
from stereonet_ros.pfm import read_pfm  # noqa: E402
from stereonet_ros.samples import motorcycle  # noqa: E402

TOLERANCE_PX = 0.01



def _quiet(factory: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the default checkpoint is marked preliminary
        return factory()


@pytest.fixture(scope='module')
def default_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled default, exported by the installed console script with the confidence output."""
    path = tmp_path_factory.mktemp('default_onnx') / 'default.onnx'
    result = run_installed('stereonet-export', '--out', path, '--confidence')
    assert result.returncode == 0, result.stderr
    assert 'opset 17' in result.stdout and 'dynamic size' in result.stdout
    return path


@pytest.fixture(scope='module')
def seed_onnx(tmp_path_factory: pytest.TempPathFactory, seed_checkpoint_path: Path) -> Path:
    path = tmp_path_factory.mktemp('seed_onnx') / 'seed.onnx'
    onnx_export.export_onnx(load_checkpoint(seed_checkpoint_path), path, source=seed_checkpoint_path)
    return path


def _odd_crop(height: int = 333, width: int = 517) -> tuple[np.ndarray, np.ndarray]:
    sample = motorcycle()
    return sample.left[:height, :width], sample.right[:height, :width]  # sides not multiples of 8


@pytest.mark.parametrize('pair_name', ['motorcycle', 'odd crop 517x333'])
def test_the_exported_default_gives_pytorchs_disparity_and_confidence(default_onnx: Path, pair_name: str) -> None:
    sample = motorcycle()
    left, right = (sample.left, sample.right) if pair_name == 'motorcycle' else _odd_crop()
    torch_answer = _quiet(lambda: Predictor.from_checkpoint(None, device='cpu')).infer(left, right,
                                                                                       with_confidence=True)
    onnx_predictor = _quiet(lambda: Predictor.from_checkpoint(default_onnx, device='cpu'))
    assert isinstance(onnx_predictor, OnnxPredictor) and str(onnx_predictor.device) == 'cpu'
    onnx_answer = onnx_predictor.infer(left, right, with_confidence=True)
    assert onnx_answer.disparity.shape == left.shape[:2] and onnx_answer.disparity.dtype == np.float32
    assert np.abs(onnx_answer.disparity - torch_answer.disparity).max() <= TOLERANCE_PX
    assert onnx_answer.confidence is not None and torch_answer.confidence is not None
    assert np.abs(onnx_answer.confidence - torch_answer.confidence).max() <= 1e-3
    assert onnx_answer.max_disparity == torch_answer.max_disparity
    assert onnx_answer.disparity.std() > 1.0  # a real answer, not a constant


def test_the_onnx_backend_follows_scale_and_max_pixels_as_pytorch_does(default_onnx: Path) -> None:
    left, right = _odd_crop()
    torch_predictor = _quiet(lambda: Predictor.from_checkpoint(None, device='cpu'))
    onnx_predictor = _quiet(lambda: Predictor.from_checkpoint(default_onnx, device='cpu'))
    for options in ({'scale': 0.5}, {'scale': 1.3}, {'max_pixels': 60_000}):
        expected, got = torch_predictor.infer(left, right, **options), onnx_predictor.infer(left, right, **options)
        assert got.network_size == expected.network_size and got.scale == expected.scale, options
        assert np.abs(got.disparity - expected.disparity).max() <= TOLERANCE_PX, options


def test_eval_bags_min_confidence_needs_a_model_with_confidence(seed_onnx: Path) -> None:
    """An ONNX model exported without the confidence output cannot leave holes by confidence: eval-bag's source
    refuses min_confidence above 0 on construction (one line from the CLI), and takes 0."""
    from stereonet_ros.evaluation.bag_eval import PredictorSource

    predictor = Predictor.from_checkpoint(seed_onnx, device='cpu')
    with pytest.raises(InputError, match='min confidence 0.5 needs a model with a confidence output'):
        PredictorSource(predictor, min_confidence=0.5)
    assert PredictorSource(predictor, min_confidence=0.0).min_confidence == 0.0


@pytest.mark.parametrize('pair_name', ['motorcycle', 'odd crop 517x333'])
def test_the_exported_seed_checkpoint_gives_pytorchs_disparity(seed_onnx: Path, seed_checkpoint_path: Path,
                                                               pair_name: str) -> None:
    sample = motorcycle()
    left, right = (sample.left, sample.right) if pair_name == 'motorcycle' else _odd_crop()
    expected = Predictor.from_checkpoint(seed_checkpoint_path, device='cpu').predict(left, right)
    predictor = Predictor.from_checkpoint(seed_onnx, device='cpu')
    got = predictor.predict(left, right)
    assert np.abs(got - expected).max() <= TOLERANCE_PX
    assert not predictor.has_confidence
    with pytest.raises(InputError, match='no confidence output; export it with stereonet-export --confidence'):
        predictor.infer(left, right, with_confidence=True)


def test_the_metadata_carries_the_contract_config_provenance_and_opset(default_onnx: Path) -> None:
    checkpoint = load_checkpoint(DEFAULT_CHECKPOINT)
    model = onnx.load(str(default_onnx))
    metadata = onnx_export.read_metadata(model, str(default_onnx))
    assert metadata.contract == checkpoint.contract
    assert metadata.config == checkpoint.config
    assert metadata.provenance == checkpoint.provenance
    assert metadata.precision == 'fp32' and metadata.outputs == ('disparity', 'confidence')
    assert metadata.fixed_size is None
    assert metadata.opset == onnx_export.OPSET == next(entry.version for entry in model.opset_import
                                                       if entry.domain in ('', 'ai.onnx'))
    document = json.loads(next(p.value for p in model.metadata_props if p.key == onnx_export.METADATA_KEY))
    assert document['source_checkpoint'] == DEFAULT_CHECKPOINT.name and len(document['source_sha256']) == 64
    assert document['parity']['max_abs_difference']['disparity'] <= TOLERANCE_PX
    assert document['batchnorm_folded'] is True
    assert not any(node.op_type == 'BatchNormalization' for node in model.graph.node)
    assert [value.name for value in model.graph.input] == ['left', 'right']


def _save(model: Any, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_external_data_outside_the_models_folder_is_refused(default_onnx: Path, tmp_path: Path) -> None:
    folder = tmp_path / 'models'
    folder.mkdir()
    model = onnx.load(str(default_onnx))
    # Inside the folder: accepted and loaded.
    onnx.save(model, str(folder / 'inside.onnx'), save_as_external_data=True, all_tensors_to_one_file=True,
              location='inside.bin', size_threshold=0)
    inside = _quiet(lambda: Predictor.from_checkpoint(folder / 'inside.onnx', device='cpu'))
    left, right = _odd_crop(64, 96)
    whole = _quiet(lambda: Predictor.from_checkpoint(default_onnx, device='cpu'))
    assert np.abs(inside.predict(left, right) - whole.predict(left, right)).max() == 0
    # The same data moved one folder up, and by absolute path: refused before anything reads it.
    (folder / 'inside.bin').rename(tmp_path / 'outside.bin')
    for location in ('../outside.bin', str(tmp_path / 'outside.bin')):
        tampered = onnx.load(str(folder / 'inside.onnx'), load_external_data=False)
        for tensor in tampered.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == 'location':
                    entry.value = location
        path = _save(tampered, folder / 'tampered.onnx')
        with pytest.raises(CheckpointError, match=r"has external data at .*outside the model's folder"):
            Predictor.from_checkpoint(path, device='cpu')


def test_a_graph_with_other_input_names_or_rank_is_refused(default_onnx: Path, tmp_path: Path) -> None:
    renamed = onnx.load(str(default_onnx))
    renamed.graph.input[0].name = 'image_left'
    for node in renamed.graph.node:
        node.input[:] = ['image_left' if name == 'left' else name for name in node.input]
    with pytest.raises(CheckpointError, match=r"graph inputs \['image_left', 'right'\]: expected \['left', 'right'\]"):
        Predictor.from_checkpoint(_save(renamed, tmp_path / 'renamed.onnx'), device='cpu')

    rank3 = onnx.load(str(default_onnx))
    del rank3.graph.input[1].type.tensor_type.shape.dim[0]
    # ONNX Runtime's own shape inference already refuses this one when it loads the graph: still one line.
    with pytest.raises(CheckpointError, match=r"graph input 'right' is 1xheightxwidth .*expected float32 \(1, 1, H, "
                                              r"W\)|ONNX Runtime cannot load it: .*rank 3"):
        Predictor.from_checkpoint(_save(rank3, tmp_path / 'rank3.onnx'), device='cpu')

    batch2 = onnx.load(str(default_onnx))  # loads, but is not what the exporter writes
    batch2.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    with pytest.raises(CheckpointError,
                       match=r"graph input 'left' is 2x1xheightxwidth .*expected float32 \(1, 1, H, W\)"):
        Predictor.from_checkpoint(_save(batch2, tmp_path / 'batch2.onnx'), device='cpu')

    bare = onnx.load(str(default_onnx))
    del bare.metadata_props[:]
    with pytest.raises(CheckpointError, match="no 'stereonet_ros' metadata"):
        Predictor.from_checkpoint(_save(bare, tmp_path / 'bare.onnx'), device='cpu')

    (tmp_path / 'garbage.onnx').write_bytes(b'not a protobuf \xff\xff')
    with pytest.raises(CheckpointError, match='not a readable ONNX model'):
        Predictor.from_checkpoint(tmp_path / 'garbage.onnx', device='cpu')


def test_the_exporter_refuses_in_one_line_and_writes_nothing_when_onnx_runtime_disagrees(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # The real check with a tolerance no float computation meets: the refusal path, end to end.
    monkeypatch.setattr(onnx_export, 'PARITY_TOLERANCE_PX', 0.0)
    out = tmp_path / 'refused.onnx'
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(['--out', str(out)])
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('stereonet-export: error: the ONNX model differs from PyTorch '
                                                   'by more than 0.0 px on Motorcycle')
    assert list(tmp_path.iterdir()) == []  # no file, no staging leftover


def test_export_usage_errors_are_one_line(tmp_path: Path) -> None:
    for arguments, reason in ((['--out', tmp_path / 'm.onnx', '--height', '100', '--width', '96'],
                               '--height 100: must be a multiple of the pad multiple 8'),
                              (['--out', tmp_path / 'm.onnx', '--height', '96'], '--height and --width go together'),
                              (['--out', tmp_path / 'm.pt'], 'the extension must be .onnx'),
                              ([tmp_path / 'missing.safetensors', '--out', tmp_path / 'm.onnx'],
                               'cannot open checkpoint')):
        result = run_installed('stereonet-export', *arguments)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert lines[0].startswith('stereonet-export: error: ') and reason in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_stereonet_infer_with_the_onnx_model_gives_the_safetensors_disparity(default_onnx: Path,
                                                                              tmp_path: Path) -> None:
    left, right = _odd_crop(200, 301)
    Image.fromarray(left).save(tmp_path / 'left.png')
    Image.fromarray(right).save(tmp_path / 'right.png')
    outputs = {}
    # The networks' answers: the local search after them is one function of each answer, and its thresholds can
    # turn the backends' 0.01 px into a whole pixel at a rare pixel (both backends searched: test_local_search).
    for name, checkpoint in (('safetensors', DEFAULT_CHECKPOINT), ('onnx', default_onnx)):
        outputs[name] = tmp_path / f'{name}.pfm'
        result = run_installed('stereonet-infer', tmp_path / 'left.png', tmp_path / 'right.png', '--checkpoint', checkpoint,
                      '--out', outputs[name], '--device', 'cpu', '--local-search', '0')
        assert result.returncode == 0, result.stderr
    expected, got = read_pfm(outputs['safetensors']), read_pfm(outputs['onnx'])
    assert got.shape == (200, 301)
    assert np.abs(got - expected).max() <= TOLERANCE_PX


def test_a_network_with_the_photometric_cue_exports_and_gives_pytorchs_disparity(tmp_path: Path) -> None:
    """The cue's warp (grid_sample) goes through ONNX at a dynamic size; the cue weights are made
    non-zero so that a wrong warp in the graph would show in the disparity."""
    import dataclasses

    import torch

    from stereonet_ros.model.checkpoint import save_checkpoint
    from stereonet_ros.model.surgery import with_photometric_cue

    default = load_checkpoint(DEFAULT_CHECKPOINT)
    config, state = with_photometric_cue(default.config, default.state_dict)
    generator = torch.Generator().manual_seed(0)
    for index in range(config.k_refinement_layers):
        weight = state[f'refiners.{index}.net.segment_0_conv_0.weight']
        weight[:, config.in_channels:config.refiner_guide_channels] = 0.2 * torch.randn(
            weight[:, config.in_channels:config.refiner_guide_channels].shape, generator=generator)
    source = tmp_path / 'cue.safetensors'
    save_checkpoint(source, dataclasses.replace(default, config=config, state_dict=state))
    out = tmp_path / 'cue.onnx'
    _quiet(lambda: onnx_export.export_onnx(load_checkpoint(source), out, source=source))
    left, right = _odd_crop()
    expected = _quiet(lambda: Predictor.from_checkpoint(source, device='cpu')).predict(left, right)
    without_cue = _quiet(lambda: Predictor.from_checkpoint(DEFAULT_CHECKPOINT, device='cpu')).predict(left, right)
    got = _quiet(lambda: Predictor.from_checkpoint(out, device='cpu')).predict(left, right)
    assert np.abs(got - expected).max() <= TOLERANCE_PX
    assert np.abs(expected - without_cue).max() > 0.5  # the cue changed the answer


def test_the_default_without_its_refiner_answers_its_carried_soft_argmin_in_pytorch_and_onnx(tmp_path: Path) -> None:
    """A checkpoint with no refiners (``with_refiner_count(..., 0)``) runs through the Predictor and the ONNX
    export at the input size (before the fix the Predictor returned a 1/8-size map), and answers its soft argmin
    carried up: on most pixels what the default truncated at level 0 answers (the soft argmin resized
    bilinearly), apart where the image moves a pixel to the other side of a depth edge (``guided_to``)."""
    import dataclasses

    from stereonet_ros.evaluation.refinement import at_level
    from stereonet_ros.model.checkpoint import save_checkpoint
    from stereonet_ros.model.surgery import with_refiner_count

    default = load_checkpoint(DEFAULT_CHECKPOINT)
    config, state = with_refiner_count(default.config, default.state_dict, 0)
    source = tmp_path / 'coarse.safetensors'
    save_checkpoint(source, dataclasses.replace(default, config=config, state_dict=state))
    left, right = _odd_crop()
    coarse = _quiet(lambda: Predictor.from_checkpoint(source, device='cpu')).predict(left, right)
    truncated = _quiet(lambda: Predictor(at_level(default, 0), device='cpu')).predict(left, right)
    assert coarse.shape == left.shape[:2]
    difference = np.abs(coarse - truncated)
    assert np.median(difference) <= 0.5 and difference.max() > 1.0  # median 0.17 px on this crop
    out = tmp_path / 'coarse.onnx'
    _quiet(lambda: onnx_export.export_onnx(load_checkpoint(source), out, source=source))
    exported = _quiet(lambda: Predictor.from_checkpoint(out, device='cpu')).predict(left, right)
    assert np.abs(exported - coarse).max() <= TOLERANCE_PX


def test_export_without_the_refiner_runs_in_onnx_runtime_as_refine_false_runs_in_pytorch(tmp_path: Path) -> None:
    out = tmp_path / 'coarse.onnx'
    result = run_installed('stereonet-export', '--out', out, '--confidence', '--no-refine')
    assert result.returncode == 0, result.stderr
    exported = OnnxPredictor(out, device='cpu')
    assert exported.config.k_refinement_layers == 0 and exported.checkpoint.provenance['refiners_removed'] == 1
    left, right = _odd_crop()
    unrefined = _quiet(lambda: Predictor.from_checkpoint(None, device='cpu', refine=False))
    assert np.abs(exported.predict(left, right) - unrefined.predict(left, right)).max() <= TOLERANCE_PX


def test_without_the_onnx_package_a_model_runs_and_external_data_is_never_followed(default_onnx: Path,
                                                                                   tmp_path: Path) -> None:
    """A robot with ONNX Runtime alone: the model runs as with ``onnx`` installed, and one whose weights lie in an
    external file cannot load at all (from bytes, ONNX Runtime has no folder to look in), inside or outside."""
    folder = tmp_path / 'models'
    folder.mkdir()
    onnx.save(onnx.load(str(default_onnx)), str(folder / 'external.onnx'), save_as_external_data=True,
              all_tensors_to_one_file=True, location='external.bin', size_threshold=0)
    blocked = tmp_path / 'blocked' / 'onnx'
    blocked.mkdir(parents=True)
    (blocked / '__init__.py').write_text("raise ImportError('onnx is blocked for this test')\n")
    left, right = _odd_crop(64, 96)
    np.save(tmp_path / 'left.npy', left)
    np.save(tmp_path / 'right.npy', right)
    script = f"""
import sys, warnings
import numpy as np
warnings.simplefilter('ignore')
from stereonet_ros.inference_common import InputError
from stereonet_ros.model.checkpoint import CheckpointError
from stereonet_ros.onnx_backend import OnnxPredictor
predictor = OnnxPredictor({str(default_onnx)!r}, device='cpu')
np.save({str(tmp_path / 'out.npy')!r}, predictor.predict(np.load({str(tmp_path / 'left.npy')!r}),
                                                         np.load({str(tmp_path / 'right.npy')!r})))
try:
    OnnxPredictor({str(folder / 'external.onnx')!r}, device='cpu')
except CheckpointError as err:
    print('refused:', err)
print('onnx' in sys.modules and sys.modules['onnx'] is not None, 'torch' in sys.modules)
"""
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(blocked.parent),
                                                                     os.environ.get('PYTHONPATH')]))}
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith('refused: ') and 'ONNX Runtime cannot load it' in lines[0], lines
    assert lines[-1] == 'False False'  # neither onnx nor PyTorch was loaded
    expected = _quiet(lambda: Predictor.from_checkpoint(default_onnx, device='cpu')).predict(left, right)
    assert np.array_equal(np.load(tmp_path / 'out.npy'), expected)
