"""The node's parameters without ROS: defaults, the YAML file, validation that names key and value."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from stereonet_ros.config import ConfigError
from stereonet_ros.node_config import MODEL_KEYS, PARAMETER_NAMES, PARAMETER_SPECS, SYNC_KEYS, NodeConfig

REPOSITORY = Path(__file__).resolve().parents[1]


def test_config_file_holds_every_parameter_with_its_default_under_the_node_name() -> None:
    document = yaml.safe_load((REPOSITORY / 'config' / 'stereonet.yaml').read_text())
    parameters = document['/**']['ros__parameters']  # any namespace and node name
    assert parameters == NodeConfig().to_dict()
    # Written in the declared types (doubles with a decimal point), as `ros2 param dump` would.
    for name, value in parameters.items():
        assert type(value) is type(getattr(NodeConfig(), name)), name


def test_stereo_image_proc_names_and_defaults_are_kept() -> None:
    config = NodeConfig()
    assert (config.queue_size, config.approximate_sync, config.approximate_sync_tolerance_seconds) == (5, False, 0.0)
    assert (config.use_color, config.avoid_point_cloud_padding, config.use_system_default_qos) == (True, False, False)
    assert (config.checkpoint, config.device, config.precision) == ('', 'auto', 'auto')


def test_every_parameter_has_a_description_and_numbers_have_a_range() -> None:
    for item in dataclasses.fields(NodeConfig):
        spec = PARAMETER_SPECS[item.name]
        assert len(spec.description) > 20, item.name
        if item.type in ('int', 'float'):
            assert spec.low is not None and spec.high is not None and spec.low <= item.default <= spec.high
    assert PARAMETER_SPECS['use_system_default_qos'].read_only
    # image_transport's parameter and values: subscriptions are made once, so it is read-only like the QoS one.
    assert NodeConfig().image_transport == 'raw'
    assert PARAMETER_SPECS['image_transport'].read_only
    assert PARAMETER_SPECS['image_transport'].choices == ('raw', 'compressed')
    assert SYNC_KEYS | MODEL_KEYS <= set(PARAMETER_NAMES)


@pytest.mark.parametrize(('key', 'value', 'match'), [
    ('queue_size', 0, r'queue_size=0: must be in \[1, 1000\]'),
    ('queue_size', 2.5, r'queue_size=2.5: must be an integer'),
    ('approximate_sync', 'yes', r"approximate_sync='yes': must be true or false"),
    ('approximate_sync_tolerance_seconds', -0.1, r'approximate_sync_tolerance_seconds=-0.1: must be in'),
    ('min_confidence', 1.5, r'min_confidence=1.5: must be in \[0.0, 1.0\]'),
    ('inference_scale', 0.0, r'inference_scale=0.0: must be in \[0.1, 2.5\]'),
    ('inference_scale', 2.5001, r'inference_scale=2.5001: must be in \[0.1, 2.5\]'),
    ('inference_scale', 0.0999, r'inference_scale=0.0999: must be in \[0.1, 2.5\]'),
    ('min_disparity', float('nan'), r'min_disparity=nan: must be finite'),
    ('min_disparity', -2049, r'min_disparity=-2049.0: must be in \[-2048.0, 2048.0\]'),
    ('min_disparity', 2048.5, r'min_disparity=2048.5: must be in \[-2048.0, 2048.0\]'),
    ('precision', 'fp64', r"precision='fp64': must be one of"),
    ('image_transport', 'theora', r"image_transport='theora': must be one of \['raw', 'compressed'\]"),
    ('device', 'gpu0', r"device='gpu0': must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ('no_such_parameter', 1, r"unknown key\(s\) \['no_such_parameter'\]"),
])
def test_a_bad_value_is_refused_naming_the_key_and_the_value(key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NodeConfig().with_changes({key: value})


def test_inference_scale_takes_both_ends_of_its_range_fractions_and_integers() -> None:
    assert PARAMETER_SPECS['inference_scale'].constraints == 'in [0.1, 2.5]'
    for value, expected in ((2.5, 2.5), (0.1, 0.1), (1.37, 1.37), (2, 2.0)):
        assert NodeConfig().with_changes({'inference_scale': value}).inference_scale == expected


def test_changes_are_applied_as_a_whole_and_the_changed_keys_are_named() -> None:
    old = NodeConfig()
    new = old.with_changes({'queue_size': 10, 'device': 'cuda:1', 'min_disparity': 2})
    assert (new.queue_size, new.device, new.min_disparity) == (10, 'cuda:1', 2.0)
    assert old.changed_keys(new) == {'queue_size', 'device', 'min_disparity'}
    assert old.queue_size == 5  # frozen: the old config is untouched


@pytest.mark.parametrize('value', [-2048, -16, 0, 2048])
def test_min_disparity_takes_stereo_image_proc_s_range_including_negative_values(value: int) -> None:
    # Issue 12: a user's params file with min_disparity: -16 stopped the node at start-up.
    assert NodeConfig.from_mapping({'min_disparity': value}).min_disparity == float(value)
