"""stereonet_node running an exported .onnx model over DDS, and switching between .onnx and .safetensors at run time.

Reuses test_node.py's node process and client helpers (real rclpy, the node as its console script).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime')

from test_node import (CX_LEFT, CX_RIGHT, INPUT_TOPICS, Client, NodeProcess, as_float_image,  # noqa: E402
                       make_pair, model_shift, start_node)

from stereonet_ros.inference import Predictor  # noqa: E402
from stereonet_ros.model.checkpoint import load_checkpoint  # noqa: E402
from stereonet_ros.model.onnx_export import export_onnx  # noqa: E402

pytestmark = [pytest.mark.timeout(400),
              pytest.mark.filterwarnings('ignore::stereonet_ros.inference.UntrainedPlaceholderWarning')]


@pytest.fixture(scope='module')
def placeholder_onnx(tmp_path_factory: pytest.TempPathFactory, placeholder_checkpoint_path: Path) -> Path:
    path = tmp_path_factory.mktemp('onnx_node') / 'placeholder.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        export_onnx(load_checkpoint(placeholder_checkpoint_path), path, source=placeholder_checkpoint_path,
                    with_confidence=True)  # the node's confidence output needs it
    return path


@pytest.fixture(scope='module')
def onnx_node(tmp_path_factory: pytest.TempPathFactory, placeholder_onnx: Path) -> Iterator[NodeProcess]:
    folder = tmp_path_factory.mktemp('onnx_node_run')
    params = {'stereonet_node': {'ros__parameters': {
        'diagnostics_period_seconds': 0.5, 'device': 'cpu', 'checkpoint': str(placeholder_onnx),
        'qos_overrides': {f'/{topic}': {'subscription': {'reliability': 'reliable', 'depth': 10}}
                          for topic in INPUT_TOPICS}}}}
    handle = start_node(folder, params)
    yield handle
    handle.stop()
    assert handle.process.returncode == 0 and 'Traceback' not in handle.text(), handle.text()


def test_the_node_runs_an_onnx_model_and_switches_to_safetensors_and_back(
        onnx_node: NodeProcess, placeholder_onnx: Path, placeholder_checkpoint_path: Path) -> None:
    client = Client(onnx_node)
    try:
        client.wait_for_node()
        left, right = make_pair()
        # What the node publishes: the model's shift minus the principal-point offset (CONVENTIONS).
        expected = model_shift(Predictor.from_checkpoint(placeholder_checkpoint_path, device='cpu'), left, right) \
            - (CX_LEFT - CX_RIGHT)
        for checkpoint in (None, placeholder_checkpoint_path, placeholder_onnx):
            if checkpoint is not None:
                result = client.set_parameter('checkpoint', str(checkpoint))
                assert result.successful, result.reason
            outputs = client.send_good(left, right, topics=('disparity', 'confidence'))
            values = as_float_image(outputs['disparity'].image)
            valid = values >= outputs['disparity'].min_disparity
            assert valid.mean() > 0.5, checkpoint
            np.testing.assert_allclose(values[valid], expected[valid], atol=0.01, err_msg=str(checkpoint))
            in_use = str(checkpoint or placeholder_onnx)
            assert client.spin_until(lambda: in_use in client.diagnostics.get('checkpoint', '')), client.diagnostics  # noqa: B023
    finally:
        client.close()

