"""Checkpoints: both seed generations open safely, unsafe pickles are refused unexecuted, ours round-trip."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pickle
import sys
import types
import typing
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import torch

from stereonet_ros.inference import DEFAULT_CHECKPOINT, PLACEHOLDER_CONFIG
from stereonet_ros.model.checkpoint import (MAX_ACTIVATION_BYTES_PER_MEGAPIXEL, MAX_PARAMETERS, SCENEFLOW_RGB_CONTRACT,
                                            Checkpoint, CheckpointError, InputContract, _typed,
                                            activation_bytes_per_megapixel, check_contract_fits, check_model_size,
                                            config_from_metadata, convert_checkpoint, load_checkpoint,
                                            parse_metadata, save_checkpoint, state_size)
from stereonet_ros.model.stereonet import StereoNet, StereoNetConfig


def test_seed_lightning2_checkpoint_opens_with_its_hyper_parameters(seed_checkpoint_path: Path) -> None:
    # A plain weights-only load refuses it (functools.partial), as it refuses the published checkpoint.
    with pytest.raises(pickle.UnpicklingError, match='functools.partial'):
        torch.load(seed_checkpoint_path, weights_only=True)
    checkpoint = load_checkpoint(seed_checkpoint_path)
    assert checkpoint.config == StereoNetConfig(in_channels=1, max_disparity=256)
    assert checkpoint.contract.color == 'gray'
    assert checkpoint.contract.left_mean == (111.5684,) and checkpoint.contract.right_std == (62.0313,)
    assert checkpoint.contract.pad_multiple == 1  # the seed ran at the given size
    seed_hyper = checkpoint.provenance['seed_hyper_parameters']
    assert seed_hyper['optimizer_partial'] == \
        'functools.partial(torch.optim.rmsprop.RMSprop, lr=0.000254, weight_decay=0.0001)'
    assert checkpoint.provenance['global_step'] == 2
    assert len(checkpoint.state_dict) == 338


@pytest.fixture
def fake_lightning_1x() -> Iterator[type]:
    """The class object Lightning 1.4 keys its callbacks dict by, importable only inside this fixture."""
    names = ['pytorch_lightning', 'pytorch_lightning.callbacks', 'pytorch_lightning.callbacks.model_checkpoint']
    modules = {name: types.ModuleType(name) for name in names}
    model_checkpoint = type('ModelCheckpoint', (), {'__module__': names[-1]})
    modules[names[-1]].ModelCheckpoint = model_checkpoint  # type: ignore[attr-defined]
    sys.modules.update(modules)
    try:
        yield model_checkpoint
    finally:
        for name in names:
            sys.modules.pop(name, None)


def _write_seed_9c0260f_checkpoint(path: Path, model_checkpoint_class: type) -> StereoNet:
    """A checkpoint laid out as seed commit 9c0260f saved it under Lightning 1.4.x (RGB, no in_channels)."""
    torch.manual_seed(5)
    model = StereoNet(StereoNetConfig(in_channels=3))
    for module in model.modules():  # non-trivial BN statistics, so that a wrong mapping shows
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    checkpoint = {
        'epoch': 20, 'global_step': 744533, 'pytorch-lightning_version': '1.4.9',
        'state_dict': OrderedDict(model.state_dict()),
        'callbacks': {model_checkpoint_class: {
            'monitor': 'val_loss_epoch', 'best_model_score': torch.tensor(3.93), 'current_score': torch.tensor(3.93),
            'best_model_path': 'lightning_logs/version_0/checkpoints/epoch=20-step=744533.ckpt', 'dirpath': 'x'}},
        'optimizer_states': [{'state': {0: {'step': 10, 'square_avg': torch.zeros(3)}},
                              'param_groups': [{'lr': 0.001, 'params': [0]}]}],
        'lr_schedulers': [{'gamma': 0.9, 'last_epoch': 20}],
        'hparams_name': 'kwargs',
        'hyper_parameters': {'k_downsampling_layers': 3, 'k_refinement_layers': 3, 'candidate_disparities': 256,
                             'feature_extractor_filters': 32, 'cost_volumizer_filters': 32, 'mask': True},
    }
    torch.save(checkpoint, path)
    return model.eval()


def test_seed_9c0260f_lightning14_checkpoint_opens_without_lightning(tmp_path: Path, fake_lightning_1x: type) -> None:
    path = tmp_path / 'epoch=20-step=744533.ckpt'
    original = _write_seed_9c0260f_checkpoint(path, fake_lightning_1x)
    for name in [n for n in sys.modules if n.startswith('pytorch_lightning')]:
        del sys.modules[name]  # as on a user's machine: no Lightning installed
    with pytest.raises(ModuleNotFoundError):
        torch.load(path, weights_only=False)  # even the unsafe path fails without Lightning
    checkpoint = load_checkpoint(path)
    assert checkpoint.config.in_channels == 3  # inferred from the first convolution
    assert checkpoint.contract == SCENEFLOW_RGB_CONTRACT
    assert checkpoint.provenance['seed_format'].startswith('lightning-1.x')
    model = checkpoint.build_model()
    left, right = torch.rand(2, 1, 3, 40, 56) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(left, right), original(left, right))


class _CreatesAFile:
    """Unpickling this would run os.system and create a file: the loader must refuse it unexecuted."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f'touch {self.marker}',))


@pytest.mark.parametrize('container', ['zip', 'legacy_pickle'])
def test_unsafe_global_is_refused_by_name_and_never_runs(tmp_path: Path, container: str) -> None:
    marker = tmp_path / 'payload_ran'
    path = tmp_path / 'evil.ckpt'
    payload = {'state_dict': {}, 'hyper_parameters': {'x': _CreatesAFile(marker)}}
    if container == 'zip':
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match=r"names the global '(posix|os)\.system'.*nothing in it was executed"):
        load_checkpoint(path)
    assert not marker.exists()


def test_functools_partial_of_an_unknown_callable_is_refused(tmp_path: Path) -> None:
    path = tmp_path / 'partial.ckpt'
    torch.save({'hyper_parameters': {'optimizer_partial': functools.partial(print, 'x')}}, path)
    with pytest.raises(CheckpointError, match=r"names the global '(builtins\.)?print'"):
        load_checkpoint(path)


def _our_checkpoint(config: StereoNetConfig) -> Checkpoint:
    torch.manual_seed(1)
    contract = InputContract(color='gray', left_mean=(100.0,), left_std=(50.0,), right_mean=(101.0,),
                             right_std=(51.0,), max_disparity=float(config.max_disparity), pad_multiple=8)
    return Checkpoint(config=config, contract=contract, state_dict=StereoNet(config).state_dict(),
                      provenance={'data': 'synthetic', 'steps': 10, 'git_sha': 'abc123'})


def test_safetensors_round_trip_is_bit_exact(tmp_path: Path) -> None:
    config = StereoNetConfig(max_disparity=192, disparity_grid='exact', cost_volume_border='replicate')
    written = _our_checkpoint(config)
    path = tmp_path / 'ours.safetensors'
    save_checkpoint(path, written)
    read = load_checkpoint(path)
    assert read.config == written.config and read.contract == written.contract
    assert read.provenance == written.provenance
    assert read.state_dict.keys() == written.state_dict.keys()
    for key, tensor in written.state_dict.items():
        assert read.state_dict[key].dtype == tensor.dtype
        assert torch.equal(read.state_dict[key], tensor), key


def test_seed_checkpoint_converts_to_ours_with_identical_weights(tmp_path: Path, seed_checkpoint_path: Path) -> None:
    destination = tmp_path / 'converted.safetensors'
    convert_checkpoint(seed_checkpoint_path, destination)
    seed, ours = load_checkpoint(seed_checkpoint_path), load_checkpoint(destination)
    assert ours.config == seed.config and ours.contract == seed.contract
    assert all(torch.equal(ours.state_dict[k], v) for k, v in seed.state_dict.items())
    assert ours.provenance['converted_from'] == 'seed_gray_random.ckpt'
    assert len(ours.provenance['converted_from_sha256']) == 64


def _rewrite_metadata(path: Path, transform: object) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework='pt') as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    metadata = transform(metadata)  # type: ignore[operator]
    save_file(tensors, str(path), metadata=metadata)


def test_bad_checkpoints_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r'cannot open checkpoint .*missing\.ckpt'):
        load_checkpoint(tmp_path / 'missing.ckpt')
    text = tmp_path / 'notes.txt'
    text.write_text('hello, I am not a checkpoint')
    with pytest.raises(CheckpointError, match='neither a stereonet_ros safetensors file nor a PyTorch Lightning'):
        load_checkpoint(text)
    truncated = tmp_path / 'truncated.ckpt'
    truncated.write_bytes(b'PK\x03\x04' + b'\x00' * 40)
    with pytest.raises(CheckpointError, match='unreadable PyTorch checkpoint'):
        load_checkpoint(truncated)
    not_lightning = tmp_path / 'tensor.pt'
    torch.save({'weights': torch.zeros(3)}, not_lightning)
    with pytest.raises(CheckpointError, match='no state_dict'):
        load_checkpoint(not_lightning)


def test_safetensors_without_or_with_bad_metadata_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    bare = tmp_path / 'bare.safetensors'
    save_file({'x': torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match='without stereonet_ros metadata'):
        load_checkpoint(bare)

    path = tmp_path / 'ours.safetensors'
    save_checkpoint(path, _our_checkpoint(StereoNetConfig()))

    def break_config(metadata: dict[str, str]) -> dict[str, str]:
        content = json.loads(metadata['stereonet_ros'])
        content['model_config']['in_channels'] = 2
        return {'stereonet_ros': json.dumps(content)}
    _rewrite_metadata(path, break_config)
    with pytest.raises(CheckpointError, match=r'malformed stereonet_ros metadata: .*in_channels=2'):
        load_checkpoint(path)

    def future_version(metadata: dict[str, str]) -> dict[str, str]:
        content = json.loads(metadata['stereonet_ros'])
        content['format_version'] = 99
        return {'stereonet_ros': json.dumps(content)}
    save_checkpoint(path, _our_checkpoint(StereoNetConfig()))
    _rewrite_metadata(path, future_version)
    with pytest.raises(CheckpointError, match='format version 99 is newer'):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    checkpoint = _our_checkpoint(StereoNetConfig())
    wrong = Checkpoint(config=StereoNetConfig(in_channels=3), contract=checkpoint.contract,
                       state_dict=checkpoint.state_dict)
    with pytest.raises(CheckpointError, match=r'segment_0_conv_0\.weight has shape \(32, 1, 5, 5\)'):
        wrong.build_model()
    missing = Checkpoint(config=checkpoint.config, contract=checkpoint.contract,
                         state_dict={k: v for k, v in checkpoint.state_dict.items() if 'refiners.2' not in k})
    with pytest.raises(CheckpointError, match=r"missing \['refiners\.2"):
        missing.build_model()


def test_input_contract_checks_its_fields() -> None:
    with pytest.raises(CheckpointError, match=r"left_mean=\(1\.0,\): needs 3 value\(s\) for 'rgb'"):
        InputContract(color='rgb', left_mean=(1.0,), left_std=(1.0,) * 3, right_mean=(1.0,) * 3,
                      right_std=(1.0,) * 3, max_disparity=192)
    good = InputContract(color='gray', left_mean=(1.0,), left_std=(1.0,), right_mean=(1.0,), right_std=(1.0,),
                         max_disparity=192.0, pad_multiple=8)
    refused = {
        'left_std': ((0.0,), r'input_contract\.left_std\[0\]=0\.0: must be > 0'),
        'right_mean': ((math.nan,), r'input_contract\.right_mean\[0\]=nan: must be a finite number'),
        'right_std': ((math.inf,), r'input_contract\.right_std\[0\]=inf: must be a finite number'),
        'max_disparity': (math.nan, r'input_contract\.max_disparity=nan: must be a finite number > 0'),
        'pad_multiple': (257, r'input_contract\.pad_multiple=257: must be in 1\.\.256'),
        'color': ('bgr', r"input_contract\.color='bgr': must be 'gray' or 'rgb'"),
    }
    for name, (value, message) in refused.items():
        with pytest.raises(CheckpointError, match=message):
            dataclasses.replace(good, **{name: value})
    for name, value in (('max_disparity', -1.0), ('max_disparity', 0.0), ('pad_multiple', 0)):
        with pytest.raises(CheckpointError, match=f'input_contract\\.{name}='):
            dataclasses.replace(good, **{name: value})
    assert dataclasses.replace(good, pad_multiple=256).pad_multiple == 256


def test_the_metadata_schema_checks_json_types_before_building(tmp_path: Path) -> None:
    """Types a JSON file can hold where the dataclass wants another: named with the key, never coerced."""
    base = {'format': 'stereonet_ros', 'format_version': 1, 'model_config': StereoNetConfig().to_dict(),
            'input_contract': _our_checkpoint(StereoNetConfig()).contract.to_dict() | {'max_disparity': 256.0},
            'provenance': {}}
    config, contract, provenance = parse_metadata(json.loads(json.dumps(base)))
    assert config == StereoNetConfig() and contract.max_disparity == 256.0 and provenance == {}
    refusals = [
        (('model_config', 'k_downsampling_layers'), True, r'model_config\.k_downsampling_layers=True: must be an '
                                                          r'integer'),
        (('model_config', 'max_disparity'), '256', r"model_config\.max_disparity='256': must be an integer"),
        (('model_config', 'align_corners'), 1, r'model_config\.align_corners=1: must be true or false'),
        (('model_config', 'disparity_grid'), 'linear', r"model_config\.disparity_grid='linear': must be one of "
                                                       r"'seed_linspace', 'exact'"),
        (('model_config', 'max_disparity'), 2**40, r'model_config\.max_disparity=1099511627776: out of range'),
        (('input_contract', 'left_mean'), ['127'], r"input_contract\.left_mean\[0\]='127': must be a finite number"),
        (('input_contract', 'left_std'), 1.0, r'input_contract\.left_std=1\.0: must be a list of numbers'),
        (('input_contract', 'pad_multiple'), 8.0, r'input_contract\.pad_multiple=8\.0: must be an integer'),
        (('input_contract', 'max_disparity'), None, r'input_contract\.max_disparity=None: must be a finite number'),
        (('input_contract', 'colour'), 'gray', r"input_contract: unknown key\(s\) \['colour'\]"),
        (('model_config',), [1], r'model_config: expected a JSON object, got list'),
        (('format_version',), '1', r"format_version='1': must be an integer"),
        (('format',), 'other', r"format='other' is not 'stereonet_ros'"),
    ]
    for keys, value, message in refusals:
        document = json.loads(json.dumps(base))
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        with pytest.raises(CheckpointError, match='malformed stereonet_ros metadata: ' + message):
            parse_metadata(document)


def test_a_config_field_added_to_the_dataclass_is_checked_by_its_type_without_a_schema_change() -> None:
    @dataclasses.dataclass(frozen=True)
    class Extended(StereoNetConfig):
        new_unit: float = 1.0
        new_mode: Literal['a', 'b'] = 'a'
        new_limit: int | None = None

    values = StereoNetConfig().to_dict() | {'new_unit': 32, 'new_mode': 'b', 'new_limit': None}
    config = config_from_metadata(values, Extended)
    assert isinstance(config, Extended) and config.new_unit == 32.0 and isinstance(config.new_unit, float)
    assert config_from_metadata(values | {'new_limit': 5}, Extended).new_limit == 5  # type: ignore[attr-defined]
    with pytest.raises(CheckpointError, match=r'model_config\.new_unit=nan: must be a finite number'):
        config_from_metadata(values | {'new_unit': math.nan}, Extended)
    with pytest.raises(CheckpointError, match=r"model_config\.new_mode='c': must be one of 'a', 'b'"):
        config_from_metadata(values | {'new_mode': 'c'}, Extended)
    with pytest.raises(CheckpointError, match=r'model_config\.new_limit=2\.5: must be an integer'):
        config_from_metadata(values | {'new_limit': 2.5}, Extended)


def test_every_model_config_field_has_a_type_the_schema_checks() -> None:
    """A field of a type the schema cannot check would refuse every checkpoint: extend ``_typed`` with it."""
    config_from_metadata(StereoNetConfig().to_dict())  # every field present, each checked by its type
    hints = typing.get_type_hints(StereoNetConfig)
    for item in dataclasses.fields(StereoNetConfig):
        default = getattr(StereoNetConfig(), item.name)
        assert _typed(item.name, default, hints[item.name]) == default


def test_state_size_counts_what_the_built_model_holds() -> None:
    """The size bound is computed from the config without building: it must follow the architecture."""
    configs = [StereoNetConfig(), PLACEHOLDER_CONFIG,
               StereoNetConfig(in_channels=3, k_downsampling_layers=1, k_refinement_layers=0, feature_channels=5,
                               cost_filter_channels=7, refiner_channels=3, max_disparity=15),
               StereoNetConfig(k_downsampling_layers=6, k_refinement_layers=6, feature_channels=4,
                               cost_filter_channels=6, refiner_channels=2, max_disparity=255),
               StereoNetConfig(in_channels=3, refiner_photometric_cue=True, refiner_channels=5)]
    for config in configs:
        built = sum(tensor.numel() for tensor in StereoNet(config).state_dict().values())
        assert state_size(config) == built, config


def test_the_shipped_and_seed_architectures_fit_the_size_bounds_and_absurd_ones_do_not() -> None:
    shipped = load_checkpoint(DEFAULT_CHECKPOINT).config
    seeds = [StereoNetConfig(in_channels=channels, k_downsampling_layers=k, max_disparity=disparity)
             for channels in (1, 3) for k in (3, 4) for disparity in (192, 256)]
    for config in [shipped, PLACEHOLDER_CONFIG, *seeds]:
        check_model_size(config)
        assert state_size(config) * 50 < MAX_PARAMETERS
        assert activation_bytes_per_megapixel(config) * 8 < MAX_ACTIVATION_BYTES_PER_MEGAPIXEL
    with pytest.raises(CheckpointError, match=r'model too large to build: 7\.3e\+08 parameters \(limit 5e\+07\)'):
        check_model_size(StereoNetConfig(feature_channels=8, cost_filter_channels=3000, max_disparity=63))
    with pytest.raises(CheckpointError, match=r'model too large to build: about .* GiB of activations per megapixel '
                                              r'\(limit 4 GiB\) for max_disparity=1000000000'):
        check_model_size(StereoNetConfig(max_disparity=10**9))


def test_a_contract_that_does_not_match_the_model_is_refused() -> None:
    contract = _our_checkpoint(StereoNetConfig()).contract  # gray, max_disparity 256
    check_contract_fits(StereoNetConfig(), contract)
    with pytest.raises(CheckpointError, match=r"color='gray' gives 1 channel\(s\) but model_config\.in_channels=3"):
        check_contract_fits(StereoNetConfig(in_channels=3), contract)
    with pytest.raises(CheckpointError, match=r"max_disparity=256\.0: more than the model's max_disparity=192"):
        check_contract_fits(StereoNetConfig(max_disparity=192), contract)


def _pad_to_header_residue(path: Path, checkpoint: Checkpoint, residue: int) -> None:
    """Save ``checkpoint`` with its provenance note padded so that the header length is ``residue`` mod 256."""
    note = str(checkpoint.provenance.get('note', ''))
    for extra in range(256):
        padded = dataclasses.replace(checkpoint, provenance={**checkpoint.provenance, 'note': note + 'x' * extra})
        save_checkpoint(path, padded)
        with path.open('rb') as stream:
            length = int.from_bytes(stream.read(8), 'little')
        if length % 256 == residue:
            return
    raise AssertionError(f'no padding gives header length {residue} mod 256')


def test_the_shipped_checkpoint_with_a_longer_note_still_loads(tmp_path: Path) -> None:
    """Issue 11: a header length of 128 mod 256 makes the file start with 0x80, like a pickle."""
    shipped = load_checkpoint(DEFAULT_CHECKPOINT)
    path = tmp_path / 'longer_note.safetensors'
    _pad_to_header_residue(path, shipped, 128)
    assert path.read_bytes()[:1] == b'\x80'
    loaded = load_checkpoint(path)
    assert loaded.config == shipped.config and loaded.contract == shipped.contract
    assert all(torch.equal(loaded.state_dict[key], value) for key, value in shipped.state_dict.items())


def test_safetensors_files_load_whatever_their_header_length(tmp_path: Path) -> None:
    """Property over the file's first byte, the header length's lowest: safetensors pads the header to a
    multiple of 8, so the 32 residues mod 256 that occur, each reached by padding the provenance."""
    config = StereoNetConfig(feature_channels=4, cost_filter_channels=4, refiner_channels=4, max_disparity=15,
                             k_refinement_layers=1)
    written = _our_checkpoint(config)
    path = tmp_path / 'padded.safetensors'
    first_bytes = set()
    for extra in range(0, 256, 8):
        checkpoint = dataclasses.replace(written, provenance={**written.provenance, 'note': 'x' * extra})
        save_checkpoint(path, checkpoint)
        first_bytes.add(path.read_bytes()[0])
        read = load_checkpoint(path)
        assert read.provenance == checkpoint.provenance and read.config == config
    assert first_bytes == set(range(0, 256, 8))
