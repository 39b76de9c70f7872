"""The shipped Fast DDS profile (config/fastdds_large_images.xml): valid, and large best-effort images
arrive with it between two processes. The fraction is the benchmark's figure (benchmarks/dds_delivery.py);
this test only holds that the profile loads and delivers."""
from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

pytest.importorskip('rclpy')

REPOSITORY = Path(__file__).resolve().parents[1]
PROFILE = REPOSITORY / 'config' / 'fastdds_large_images.xml'
NS = {'f': 'http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles'}


def _benchmark():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location('dds_delivery', REPOSITORY / 'benchmarks' / 'dds_delivery.py')
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_profile_is_the_default_participant_profile_with_a_16_mib_shared_memory_segment() -> None:
    root = ElementTree.parse(PROFILE).getroot()
    segments = [int(e.text or 0) for e in root.iterfind('.//f:transport_descriptor[f:type="SHM"]/f:segment_size', NS)]
    assert segments == [16 * 2**20]  # holds several 640x480 rgb8 images (0.9 MiB each)
    participant = root.find('f:participant', NS)
    assert participant is not None and participant.get('is_default_profile') == 'true'
    used = {e.text for e in participant.iterfind('.//f:userTransports/f:transport_id', NS)}
    declared = {e.text for e in root.iterfind('.//f:transport_descriptor/f:transport_id', NS)}
    assert used == declared and len(used) == 2


@pytest.mark.timeout(300)
def test_with_the_profile_a_best_effort_publisher_s_640x480_images_arrive(tmp_path: Path) -> None:
    from stereonet_ros.evaluation.through_node import unique_domain_id

    received = _benchmark().deliver('profile', 640, 480, count=10, rate=5.0, domain=unique_domain_id(salt=61),
                                    folder=tmp_path)
    print(f'shipped profile, best effort, 640x480: {received}/10 delivered')
    assert received >= 1  # the participant came up with the profile's transports, and images went through it
