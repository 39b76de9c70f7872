"""The ament_python package metadata: what colcon and rosdep read."""
from __future__ import annotations

import ast
import configparser
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def test_package_xml_is_format_3_ament_python_with_the_runtime_dependencies() -> None:
    root = ElementTree.parse(REPOSITORY / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'stereonet_ros'
    assert root.findtext('export/build_type') == 'ament_python'
    exec_depends = {element.text for element in root.findall('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'stereo_msgs', 'std_msgs', 'diagnostic_msgs', 'python3-numpy',
            'python3-torch', 'python3-opencv'} <= exec_depends  # OpenCV: the node's compressed image_transport
    test_depends = {element.text for element in root.findall('test_depend')}
    assert {'ament_copyright', 'ament_flake8', 'ament_pep257', 'python3-pytest'} <= test_depends


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split('.')[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


def test_every_ros_package_the_node_and_the_launch_file_import_is_an_exec_depend() -> None:
    """rosdep installs only what package.xml names: an import missing there breaks a fresh robot install."""
    exec_depends = {element.text for element in ElementTree.parse(REPOSITORY / 'package.xml').getroot()
                    .findall('exec_depend')}
    rosdep_keys = {'numpy': 'python3-numpy', 'torch': 'python3-torch', 'yaml': 'python3-yaml', 'PIL': 'python3-pil'}
    pip_only = {'rosbags'}  # no rosdep key: package.xml's comment must tell the user to pip install it
    files = [*(REPOSITORY / 'stereonet_ros' / 'ros').glob('*.py'), *(REPOSITORY / 'launch').glob('*.py')]
    imported = set().union(*(_top_level_imports(path) for path in files))
    imported -= set(sys.stdlib_module_names) | {'stereonet_ros', '__future__'}
    assert {'rclpy', 'launch', 'launch_ros', 'rcl_interfaces'} <= imported  # the scan sees the imports
    missing = {name for name in imported - pip_only if rosdep_keys.get(name, name) not in exec_depends}
    assert missing == set()
    package_xml = (REPOSITORY / 'package.xml').read_text()
    assert all(f'pip install {name}' in package_xml for name in pip_only | {'safetensors'})


def test_setup_cfg_installs_executables_where_ros2_run_finds_them() -> None:
    parser = configparser.ConfigParser()
    parser.read(REPOSITORY / 'setup.cfg')
    assert parser['develop']['script_dir'] == '$base/lib/stereonet_ros'
    assert parser['install']['install_scripts'] == '$base/lib/stereonet_ros'
    assert (REPOSITORY / 'resource' / 'stereonet_ros').is_file()


def test_console_scripts_are_installed_in_the_environment() -> None:
    for program in ('stereonet-infer', 'stereonet-convert'):
        assert (Path(sys.executable).parent / program).is_file(), f'{program} missing: run scripts/setup'


def test_rclpy_is_imported_only_under_stereonet_ros_ros() -> None:
    offenders = []
    for path in (REPOSITORY / 'stereonet_ros').rglob('*.py'):
        if 'ros' in path.relative_to(REPOSITORY / 'stereonet_ros').parts[:1]:
            continue
        text = path.read_text()
        if 'import rclpy' in text or 'from rclpy' in text or 'sensor_msgs.msg' in text:
            offenders.append(str(path.relative_to(REPOSITORY)))
    assert offenders == []
