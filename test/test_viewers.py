"""config/stereonet.rviz and config/stereonet.foxglove.json: every topic they name is one the node publishes.

The node's outputs come from ``node_config.OUTPUT_TOPICS`` (the node creates its publishers from it, and
test_node.py checks over DDS that it publishes exactly those); the layouts are loaded as rviz2 and Foxglove
load them (YAML, JSON) and walked, not grepped.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stereonet_ros.evaluation.makebag import DEFAULT_FRAME_ID
from stereonet_ros.node_config import DIAGNOSTICS_TOPIC, OUTPUT_TOPICS

REPOSITORY = Path(__file__).resolve().parents[1]
RVIZ = REPOSITORY / 'config' / 'stereonet.rviz'
FOXGLOVE = REPOSITORY / 'config' / 'stereonet.foxglove.json'

# What the node publishes, as a viewer in the root namespace subscribes it: absolute topic -> message type.
NODE_TOPICS = {f'/{topic}': kind for topic, kind in OUTPUT_TOPICS.items()} | {
    DIAGNOSTICS_TOPIC: 'diagnostic_msgs/msg/DiagnosticArray'}
# rviz2 display classes and Foxglove panels, and the message types they show.
RVIZ_DISPLAYS = {'rviz_default_plugins/Image': {'sensor_msgs/msg/Image'},
                 'rviz_default_plugins/PointCloud2': {'sensor_msgs/msg/PointCloud2'}}
WANTED = {'/disparity/image_color', '/depth', '/points2'}  # disparity image, depth image, cloud


def rviz_displays(displays: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for display in displays:
        yield display
        yield from rviz_displays(display.get('Displays', []))  # groups


def rviz_topics(path: Path = RVIZ) -> dict[str, str]:
    """Topic -> display class of every display that subscribes to a topic."""
    document = yaml.safe_load(path.read_text())
    topics = {}
    for display in rviz_displays(document['Visualization Manager']['Displays']):
        topic = display.get('Topic')
        if topic is not None:
            topics[topic['Value'] if isinstance(topic, dict) else topic] = display['Class']
    return topics


def foxglove_panels(node: Any) -> Iterator[str]:
    """Panel ids of a Foxglove mosaic layout tree."""
    if isinstance(node, str):
        yield node
    else:
        yield from foxglove_panels(node['first'])
        yield from foxglove_panels(node['second'])


def foxglove_topics(document: dict[str, Any]) -> dict[str, str]:
    """Topic -> panel type of every panel in the layout that subscribes to a topic."""
    topics = {}
    for panel_id in foxglove_panels(document['layout']):
        config, kind = document['configById'][panel_id], panel_id.split('!', 1)[0]
        named = list(config.get('topics', {}))  # 3D panel
        named += [config['imageMode'][key] for key in ('imageTopic', 'calibrationTopic')
                  if key in config.get('imageMode', {})]
        named += [config['topicToRender']] if 'topicToRender' in config else []
        topics.update({topic: kind for topic in named})
    return topics


def test_the_rviz_layout_shows_disparity_depth_and_points_from_topics_the_node_publishes() -> None:
    topics = rviz_topics()
    assert WANTED <= set(topics), topics
    for topic, display in topics.items():
        assert topic in NODE_TOPICS, f'{RVIZ.name} names {topic}, which the node does not publish'
        assert NODE_TOPICS[topic] in RVIZ_DISPLAYS[display], (topic, display)


def test_the_rviz_fixed_frame_is_the_left_optical_frame_the_bag_tools_write() -> None:
    options = yaml.safe_load(RVIZ.read_text())['Visualization Manager']['Global Options']
    assert options['Fixed Frame'] == DEFAULT_FRAME_ID  # the outputs' frame: the left image's
    assert f'Fixed Frame: {DEFAULT_FRAME_ID}' in RVIZ.read_text().split('Panels:')[0]  # documented in its header


def test_the_foxglove_layout_is_complete_and_names_only_topics_the_node_publishes() -> None:
    document = json.loads(FOXGLOVE.read_text())
    panels = list(foxglove_panels(document['layout']))
    assert sorted(panels) == sorted(document['configById']), 'every panel laid out once, every config used'
    topics = foxglove_topics(document)
    assert WANTED <= set(topics), topics
    for topic, panel in topics.items():
        assert topic in NODE_TOPICS, f'{FOXGLOVE.name} names {topic}, which the node does not publish'
    assert {topic for topic, panel in topics.items() if panel == 'Image'} <= {
        topic for topic, kind in NODE_TOPICS.items() if kind == 'sensor_msgs/msg/Image'}
    assert topics['/points2'] == '3D'
    (three_d,) = [document['configById'][p] for p in panels if p.startswith('3D!')]
    assert three_d['followTf'] == DEFAULT_FRAME_ID


@pytest.mark.parametrize('path', [RVIZ, FOXGLOVE], ids=lambda path: path.name)
def test_a_layout_naming_a_topic_the_node_lacks_is_caught(path: Path, tmp_path: Path) -> None:
    """The check above can fail: a renamed output (here /depth -> /depth_image) is reported."""
    broken = tmp_path / path.name
    broken.write_text(path.read_text().replace('/depth', '/depth_image'))
    topics = set(rviz_topics(broken) if path == RVIZ else foxglove_topics(json.loads(broken.read_text())))
    assert '/depth_image' in topics and not topics <= set(NODE_TOPICS)
