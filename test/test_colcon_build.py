"""``colcon build`` of this package in a temporary workspace installs what ``ros2 run``/``ros2 launch`` find."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
COLCON = Path(sys.executable).parent / 'colcon'

pytestmark = pytest.mark.timeout(400)


@pytest.mark.skipif(not COLCON.exists(), reason='colcon not installed (requirements.txt pins colcon-common-extensions)')
def test_colcon_build_installs_the_launch_file_config_manifest_and_the_node_executable(tmp_path: Path) -> None:
    source = tmp_path / 'src' / 'stereonet_ros'
    source.mkdir(parents=True)
    for name in ('package.xml', 'setup.py', 'setup.cfg'):
        shutil.copy2(REPOSITORY / name, source / name)
    for name in ('resource', 'launch', 'config', 'stereonet_ros'):
        shutil.copytree(REPOSITORY / name, source / name, ignore=shutil.ignore_patterns('__pycache__'))
    env = dict(os.environ, PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ.get("PATH", "")}')
    completed = subprocess.run([str(COLCON), 'build', '--packages-select', 'stereonet_ros', '--event-handlers',
                                'console_direct-'], cwd=tmp_path, capture_output=True, text=True, env=env,
                               timeout=360)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    install = tmp_path / 'install' / 'stereonet_ros'
    share = install / 'share' / 'stereonet_ros'
    assert (share / 'package.xml').is_file()
    assert (share / 'launch' / 'stereo.launch.py').is_file()
    assert (share / 'config' / 'stereonet.yaml').is_file()
    assert (share / 'config' / 'fastdds_large_images.xml').is_file()  # the Fast DDS profile for large images
    assert (share / 'config' / 'stereonet.rviz').is_file() and (share / 'config' / 'stereonet.foxglove.json').is_file()
    assert (install / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'stereonet_ros').is_file()
    executable = install / 'lib' / 'stereonet_ros' / 'stereonet_node'
    assert executable.is_file() and os.access(executable, os.X_OK)
    assert "'console_scripts', 'stereonet_node'" in executable.read_text()
    site_packages = list((install / 'lib').glob('python3*/site-packages/stereonet_ros/ros/node.py'))
    assert len(site_packages) == 1, 'the package modules were not installed'
