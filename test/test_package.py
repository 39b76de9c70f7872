"""The ament_python package metadata: what colcon and rosdep read."""
from __future__ import annotations

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
            'python3-torch'} <= exec_depends
    test_depends = {element.text for element in root.findall('test_depend')}
    assert {'ament_copyright', 'ament_flake8', 'ament_pep257', 'python3-pytest'} <= test_depends


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
