"""Malformed checkpoints (issue 11): each is refused with one line, by ``load_checkpoint``, by
``stereonet-infer`` and by the node's run-time switch, which keeps its model and goes on answering.

Every file is built here in ``tmp_path`` from a tiny valid checkpoint, one defect at a time.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from stereonet_ros.model.checkpoint import (METADATA_KEY, Checkpoint, CheckpointError, InputContract,
                                            load_checkpoint, save_checkpoint)
from stereonet_ros.model.stereonet import StereoNet, StereoNetConfig

pytestmark = pytest.mark.timeout(600)  # a FIFO opened for reading would block forever: fail instead of hanging

TINY_CONFIG = StereoNetConfig(feature_channels=8, cost_filter_channels=8, refiner_channels=8, max_disparity=63)
TINY_CONTRACT = InputContract(color='gray', left_mean=(127.5,), left_std=(127.5,), right_mean=(127.5,),
                              right_std=(127.5,), max_disparity=63.0, pad_multiple=8)


def tiny_checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint(config=TINY_CONFIG, contract=TINY_CONTRACT, state_dict=StereoNet(TINY_CONFIG).state_dict(),
                      provenance={'test': 'checkpoint corpus'})


Builder = Callable[[Path], Path]


def raw_bytes(data: bytes, name: str = 'file.ckpt') -> Builder:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path
    return build


def metadata_text(edit: Callable[[str], str]) -> Builder:
    """Our format with the JSON text under ``stereonet_ros`` rewritten by ``edit``."""
    def build(folder: Path) -> Path:
        from safetensors import safe_open
        from safetensors.torch import save_file
        path = folder / 'edited.safetensors'
        save_checkpoint(path, tiny_checkpoint())
        with safe_open(str(path), framework='pt') as handle:
            metadata = dict(handle.metadata())
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata[METADATA_KEY] = edit(metadata[METADATA_KEY])
        save_file(tensors, str(path), metadata=metadata)
        return path
    return build


def metadata_field(section: str, key: str, value: Any) -> Builder:
    def edit(text: str) -> str:
        content = json.loads(text)
        content[section][key] = value
        return json.dumps(content)  # NaN and Infinity are written as JSON's common extension
    return metadata_text(edit)


def weights(transform: Callable[[dict[str, torch.Tensor]], None]) -> Builder:
    def build(folder: Path) -> Path:
        checkpoint = tiny_checkpoint()
        state_dict = {key: value.clone() for key, value in checkpoint.state_dict.items()}
        transform(state_dict)
        path = folder / 'weights.safetensors'
        save_checkpoint(path, Checkpoint(config=checkpoint.config, contract=checkpoint.contract,
                                         state_dict=state_dict, provenance=checkpoint.provenance))
        return path
    return build


def seed_with_hyper(**hyper: Any) -> Builder:
    """A seed-layout Lightning checkpoint (torch.save) with the given hyper-parameters."""
    def build(folder: Path) -> Path:
        path = folder / 'seed.ckpt'
        torch.save({'state_dict': StereoNet(StereoNetConfig(refiner_channels=32)).state_dict(),
                    'hyper_parameters': {'in_channels': 1, **hyper}}, path)
        return path
    return build


def truncated_safetensors(folder: Path) -> Path:
    path = folder / 'truncated.safetensors'
    save_checkpoint(path, tiny_checkpoint())
    path.write_bytes(path.read_bytes()[:-1000])
    return path


def fifo(folder: Path) -> Path:
    path = folder / 'pipe.safetensors'
    os.mkfifo(path)
    return path


def directory(folder: Path) -> Path:
    path = folder / 'folder.safetensors'
    path.mkdir()
    return path


def character_device(folder: Path) -> Path:
    return Path('/dev/zero')  # reading it never ends


def negative_variance(state_dict: dict[str, torch.Tensor]) -> None:
    state_dict['feature_extractor.net.segment_1_res_0.batch_norm_1.running_var'][0] = -1.0


def nan_weight(state_dict: dict[str, torch.Tensor]) -> None:
    state_dict['cost_volumizer.net.segment_1_conv_0.weight'].view(-1)[3] = float('nan')


@dataclass(frozen=True)
class Malformed:
    name: str
    build: Builder
    message: str
    """A regex the one-line CheckpointError must match."""


CORPUS = [
    # The five files of issue 11 that killed the node.
    Malformed('truncated pickle', raw_bytes(b'\x80\x02abc\x00\x00', 't.ckpt'), r'unreadable PyTorch checkpoint'),
    Malformed('metadata a JSON string', metadata_text(lambda _: '"a string"'),
              r'malformed stereonet_ros metadata: expected a JSON object, got str'),
    Malformed('metadata a JSON list', metadata_text(lambda _: '[1, 2]'),
              r'malformed stereonet_ros metadata: expected a JSON object, got list'),
    Malformed('format_version 1e400',
              metadata_text(lambda text: text.replace('"format_version": 1', '"format_version": 1e400')),
              r'format_version=inf: must be an integer'),
    Malformed('feature_channels 32.5', metadata_field('model_config', 'feature_channels', 32.5),
              r'model_config\.feature_channels=32\.5: must be an integer'),
    Malformed('feature_channels 10^6', metadata_field('model_config', 'feature_channels', 10**6),
              r'model too large to build: 1\.67e\+14 parameters \(limit 5e\+07\) for feature_channels=1000000'),
    # Files that loaded and then broke every pair.
    Malformed('contract max_disparity NaN', metadata_field('input_contract', 'max_disparity', float('nan')),
              r'input_contract\.max_disparity=nan: must be a finite number'),
    Malformed('model max_disparity 1e9', metadata_field('model_config', 'max_disparity', 10**9),
              r'model too large to build: .* of activations per megapixel \(limit '),
    Malformed('pad_multiple 1e9', metadata_field('input_contract', 'pad_multiple', 10**9),
              r'input_contract\.pad_multiple=1000000000: must be in 1\.\.256'),
    Malformed('mean NaN', metadata_field('input_contract', 'left_mean', [float('nan')]),
              r'input_contract\.left_mean\[0\]=nan: must be a finite number'),
    Malformed('std Infinity', metadata_field('input_contract', 'right_std', [float('inf')]),
              r'input_contract\.right_std\[0\]=inf: must be a finite number'),
    Malformed('contract max_disparity above the model', metadata_field('input_contract', 'max_disparity', 1000.0),
              r'input_contract\.max_disparity=1000\.0: more than the model\'s max_disparity=63'),
    Malformed('metadata nested too deeply', metadata_text(lambda _: '[' * 100_000 + ']' * 100_000),
              r'malformed stereonet_ros metadata: .*nested too deeply'),
    Malformed('provenance a list', metadata_text(lambda text: json.dumps({**json.loads(text), 'provenance': [1, 2]})),
              r'provenance: expected a JSON object, got list'),
    Malformed('NaN weight', weights(nan_weight),
              r'weight cost_volumizer\.net\.segment_1_conv_0\.weight has non-finite values'),
    Malformed('negative BatchNorm variance', weights(negative_variance),
              r'running_var has negative values'),
    Malformed('truncated safetensors', truncated_safetensors, r'unreadable safetensors data: '),
    # Seed Lightning hyper-parameters.
    Malformed('seed filters 32.5', seed_with_hyper(feature_extractor_filters=32.5),
              r'seed hyper-parameter feature_extractor_filters=32\.5: must be an integer'),
    Malformed('seed candidates inf', seed_with_hyper(candidate_disparities=float('inf')),
              r'seed hyper-parameter candidate_disparities=inf: must be an integer'),
    Malformed('seed filters 10^6', seed_with_hyper(feature_extractor_filters=10**6),
              r'model too large to build: .* parameters .* for feature_channels=1000000'),
    # Not regular files: refused before they are opened.
    Malformed('FIFO', fifo, r'not a regular file \(a FIFO\)'),
    Malformed('directory', directory, r'not a regular file \(a directory\)'),
    Malformed('character device', character_device, r'not a regular file \(a character device\)'),
]
IDS = [entry.name for entry in CORPUS]


def diverged(state_dict: dict[str, torch.Tensor]) -> None:
    """Finite weights so large that every activation overflows: NaN disparity for any pair."""
    for key, value in state_dict.items():
        if key.endswith('weight') and 'conv' in key:
            value.mul_(1e18)


DIVERGED = weights(diverged)
"""Loads (every value finite, every shape right) and then gives no finite disparity: caught by running it."""


@pytest.mark.parametrize('entry', CORPUS, ids=IDS)
def test_load_checkpoint_refuses_each_malformed_file_with_one_line(tmp_path: Path, entry: Malformed) -> None:
    path = entry.build(tmp_path)
    with pytest.raises(CheckpointError, match=entry.message) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert '\n' not in message and len(message) < 1000, message
    assert str(path) in message


def test_the_corpus_starts_from_a_checkpoint_that_loads_and_runs(tmp_path: Path) -> None:
    """Each entry is one defect away from this file: the refusals are the defects', not the base's."""
    from stereonet_ros.inference import Predictor
    path = tmp_path / 'tiny.safetensors'
    save_checkpoint(path, tiny_checkpoint())
    disparity = Predictor(load_checkpoint(path), device='cpu').predict(np.zeros((64, 64), np.uint8),
                                                                       np.zeros((64, 64), np.uint8))
    assert disparity.shape == (64, 64) and np.isfinite(disparity).all()


@pytest.fixture(scope='module')
def image_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp('pair')
    rng = np.random.default_rng(0)
    left, right = folder / 'left.png', folder / 'right.png'
    Image.fromarray(rng.integers(0, 256, (64, 96), dtype=np.uint8)).save(left)
    Image.fromarray(rng.integers(0, 256, (64, 96), dtype=np.uint8)).save(right)
    return left, right


@pytest.mark.parametrize('entry', CORPUS, ids=IDS)
def test_stereonet_infer_prints_one_line_and_exits_non_zero(tmp_path: Path, image_pair: tuple[Path, Path],
                                                           entry: Malformed) -> None:
    executable = Path(sys.executable).parent / 'stereonet-infer'
    left, right = image_pair
    path = entry.build(tmp_path)
    result = subprocess.run([str(executable), str(left), str(right), '--checkpoint', str(path), '--out',
                             str(tmp_path / 'd.npy'), '--device', 'cpu'], capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    assert lines[0].startswith('stereonet-infer: error: ')
    assert re.search(entry.message, lines[0]), lines[0]
    assert not (tmp_path / 'd.npy').exists()


def test_a_checkpoint_that_loads_but_outputs_no_finite_disparity_is_one_line_from_stereonet_infer(
        tmp_path: Path, image_pair: tuple[Path, Path]) -> None:
    path = DIVERGED(tmp_path)
    load_checkpoint(path)  # nothing in the file itself is malformed
    left, right = image_pair
    result = subprocess.run([str(Path(sys.executable).parent / 'stereonet-infer'), str(left), str(right),
                             '--checkpoint', str(path), '--out', str(tmp_path / 'd.npy'), '--device', 'cpu'],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    assert re.match(r'stereonet-infer: error: the network gave non-finite disparities \(6144 of 6144 pixels\) '
                    r'with checkpoint .*weights\.safetensors', lines[0]), lines[0]
    assert not (tmp_path / 'd.npy').exists()


NODE_CORPUS = ['truncated pickle', 'metadata a JSON string', 'metadata a JSON list', 'format_version 1e400',
               'feature_channels 32.5', 'feature_channels 10^6', 'contract max_disparity NaN',
               'model max_disparity 1e9', 'pad_multiple 1e9', 'mean NaN', 'FIFO', 'directory']
"""The five files that killed the node (issue 11), the four that broke every pair, and two non-files."""


def test_the_node_refuses_each_malformed_checkpoint_at_run_time_and_keeps_its_model(
        tmp_path: Path, placeholder_checkpoint_path: Path) -> None:
    pytest.importorskip('rclpy')
    from test_node import INPUT_TOPICS, Client, as_float_image, make_pair, start_node

    folder = tmp_path / 'node'
    folder.mkdir()
    node = start_node(folder, {'stereonet_node': {'ros__parameters': {
        'device': 'cpu', 'checkpoint': str(placeholder_checkpoint_path), 'diagnostics_period_seconds': 0.5,
        'qos_overrides': {f'/{topic}': {'subscription': {'reliability': 'reliable', 'depth': 10}}
                          for topic in INPUT_TOPICS}}}})
    client = Client(node)
    try:
        client.wait_for_node()
        left, right = make_pair()
        before = as_float_image(client.send_good(left, right, topics=('disparity',))['disparity'].image)
        cases = [(entry.name, entry.build, entry.message) for entry in CORPUS if entry.name in NODE_CORPUS]
        assert len(cases) == len(NODE_CORPUS)
        cases.append(('diverged weights', DIVERGED,
                      r'the model gives non-finite disparity on a 64x64 warm-up pair'))
        for index, (name, build, message) in enumerate(cases):
            case_folder = tmp_path / f'case_{index}'
            case_folder.mkdir()
            path = build(case_folder)
            result = client.set_parameter('checkpoint', str(path))
            assert not result.successful, name
            assert re.search(message, result.reason) and str(path) in result.reason, (name, result.reason)
            assert '\n' not in result.reason, (name, result.reason)
        after = as_float_image(client.send_good(left, right, topics=('disparity',))['disparity'].image)
        np.testing.assert_allclose(after, before, atol=1e-5)  # the placeholder still runs
        assert node.process.poll() is None
    finally:
        client.close()
        node.stop()
    log = node.text()
    assert 'Traceback' not in log, log
    assert 'parameter change refused, keeping the current model' in log, log
