"""launch/stereo.launch.py read without the ``launch`` package (not installable here): parsed with ast.

The declared arguments, the package and executable started, the default params file, the
remappings and the override helper (compiled alone from the file's syntax tree) are checked.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPOSITORY / 'launch' / 'stereo.launch.py'


@pytest.fixture(scope='module')
def tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def calls(tree: ast.Module, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id == name]


def keyword(call: ast.Call, name: str) -> ast.expr:
    (value,) = [item.value for item in call.keywords if item.arg == name]
    return value


def constants(tree: ast.Module) -> dict[str, Any]:
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


def test_the_launch_file_declares_the_documented_arguments(tree: ast.Module) -> None:
    declared = {ast.literal_eval(call.args[0]): call for call in calls(tree, 'DeclareLaunchArgument')}
    assert set(declared) == {'namespace', 'left_namespace', 'right_namespace', 'params_file', 'checkpoint', 'backend',
                             'device',
                             'precision', 'inference_scale', 'refine', 'local_search_px', 'approximate_sync',
                             'queue_size', 'use_color', 'avoid_point_cloud_padding', 'min_disparity',
                             'image_transport', 'reliable_inputs', 'use_sim_time', 'log_level'}
    defaults = {name: keyword(call, 'default_value') for name, call in declared.items()}
    assert ast.literal_eval(defaults['left_namespace']) == 'left'
    assert ast.literal_eval(defaults['right_namespace']) == 'right'
    assert ast.literal_eval(defaults['log_level']) == 'info'
    for name in ('checkpoint', 'device', 'precision', 'inference_scale', 'approximate_sync', 'queue_size', 'use_color',
                 'avoid_point_cloud_padding', 'min_disparity', 'image_transport', 'reliable_inputs', 'use_sim_time'):
        assert ast.literal_eval(defaults[name]) == '', name  # empty: the params file's value holds
    for call in declared.values():
        assert ast.literal_eval(keyword(call, 'description'))


def test_the_default_params_file_is_the_installed_config(tree: ast.Module) -> None:
    (call,) = [c for c in calls(tree, 'DeclareLaunchArgument') if ast.literal_eval(c.args[0]) == 'params_file']
    default = keyword(call, 'default_value')
    assert isinstance(default, ast.Call) and ast.unparse(default.func) == 'PathJoinSubstitution'
    assert ast.unparse(default) == "PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'stereonet.yaml'])"
    assert (REPOSITORY / 'config' / 'stereonet.yaml').is_file()


def test_it_starts_stereonet_node_of_stereonet_ros_with_remapped_inputs(tree: ast.Module) -> None:
    (node,) = calls(tree, 'Node')
    values = constants(tree)
    assert values[ast.unparse(keyword(node, 'package'))] == 'stereonet_ros'
    assert values[ast.unparse(keyword(node, 'executable'))] == 'stereonet_node'
    assert ast.literal_eval(keyword(node, 'name')) == 'stereonet_node'
    remapped = [ast.literal_eval(pair.elts[0]) for pair in keyword(node, 'remappings').elts]  # type: ignore[attr-defined]
    assert sorted(remapped) == sorted(['left/image_rect', 'left/image_rect_color', 'left/camera_info',
                                       'right/image_rect', 'right/camera_info'])
    assert "LaunchConfiguration('params_file')" in ast.unparse(keyword(node, 'parameters'))
    assert "'--log-level', LaunchConfiguration('log_level')" in ast.unparse(keyword(node, 'arguments'))


def test_only_the_arguments_given_override_the_params_file(tree: ast.Module) -> None:
    (function,) = [node for node in tree.body if isinstance(node, ast.FunctionDef)
                   and node.name == 'parameter_overrides']
    namespace: dict[str, Any] = dict(constants(tree))
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(LAUNCH_FILE), 'exec'), namespace)
    overrides = namespace['parameter_overrides']
    assert overrides({'checkpoint': '', 'device': '', 'precision': '', 'inference_scale': ' ', 'approximate_sync': '',
                      'use_sim_time': ''}) == {}
    given = {'checkpoint': '/w.safetensors', 'device': 'cuda', 'precision': 'bf16', 'inference_scale': '2',
             'approximate_sync': 'True', 'use_sim_time': 'false'}
    assert overrides(given) == {'checkpoint': '/w.safetensors', 'device': 'cuda', 'precision': 'bf16',
                                'inference_scale': 2.0, 'approximate_sync': True, 'use_sim_time': False}
    assert type(overrides({'inference_scale': '1.37'})['inference_scale']) is float
    with pytest.raises(ValueError, match="inference_scale:='fast': must be a number"):
        overrides({'inference_scale': 'fast'})
    with pytest.raises(ValueError, match="approximate_sync:='maybe': must be true or false"):
        overrides({'approximate_sync': 'maybe'})
    # stereo_image_proc's launch arguments, typed as the node declares them.
    assert overrides({'queue_size': '10', 'use_color': 'false', 'avoid_point_cloud_padding': 'true',
                      'min_disparity': '-16'}) == {'queue_size': 10, 'use_color': False,
                                                   'avoid_point_cloud_padding': True, 'min_disparity': -16.0}
    with pytest.raises(ValueError, match="queue_size:='1.5': must be an integer"):
        overrides({'queue_size': '1.5'})
    assert overrides({'local_search_px': '0'}) == {'local_search_px': 0}  # an integer parameter: 0 turns it off


def test_image_transport_is_passed_to_the_node_as_its_read_only_parameter(tree: ast.Module) -> None:
    from stereonet_ros.node_config import PARAMETER_SPECS

    overrides = _function(tree, 'parameter_overrides')
    assert overrides({'image_transport': ''}) == {}  # the params file's value holds
    assert overrides({'image_transport': 'compressed'}) == {'image_transport': 'compressed'}
    assert overrides({'image_transport': 'raw'}) == {'image_transport': 'raw'}
    with pytest.raises(ValueError, match="image_transport:='theora': must be one of raw, compressed"):
        overrides({'image_transport': 'theora'})
    # The launch file offers exactly the node's choices, and the node's parameter exists under that name.
    spec = PARAMETER_SPECS['image_transport']
    assert constants(tree)['CHOICES']['image_transport'] == spec.choices and spec.read_only


def _function(tree: ast.Module, name: str) -> Any:
    (function,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    namespace: dict[str, Any] = dict(constants(tree))
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(LAUNCH_FILE), 'exec'), namespace)
    return namespace[name]


def test_reliable_inputs_override_the_qos_of_the_four_inputs_where_the_node_subscribes(tree: ast.Module) -> None:
    reliable = _function(tree, 'reliable_input_overrides')
    assert reliable('', '', 'left', 'right') == {} and reliable('false', 'stereo', 'left', 'right') == {}
    overrides = reliable('true', 'stereo', 'left', '/cams/right')['qos_overrides']
    # Both transports' image topics: image_transport may be set in the params file, not by this launch file.
    assert sorted(overrides) == ['/cams/right/camera_info', '/cams/right/image_rect',
                                 '/cams/right/image_rect/compressed', '/stereo/left/camera_info',
                                 '/stereo/left/image_rect', '/stereo/left/image_rect/compressed']
    assert all(entry == {'subscription': {'reliability': 'reliable', 'depth': 10}} for entry in overrides.values())
    assert sorted(reliable('True', '', 'left', 'right')['qos_overrides'])[0] == '/left/camera_info'
    with pytest.raises(ValueError, match="reliable_inputs:='yes': must be true or false"):
        reliable('yes', '', 'left', 'right')
