"""The node on a robot without PyTorch: the bundled default on a CPU runs in ONNX Runtime (issue 13).

A module of its own: the node it starts shares test_node.py's ROS domain, and no other node (such as
test_onnx_node.py's module-long one) may be up on it meanwhile, or the client would talk to that one.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime')

from test_node import (CX_LEFT, CX_RIGHT, INPUT_TOPICS, Client, as_float_image, make_pair,  # noqa: E402
                       model_shift, start_node)

from stereonet_ros.inference import Predictor  # noqa: E402

pytestmark = [pytest.mark.timeout(400)]


@pytest.mark.parametrize('refine', [True, False])
def test_the_bundled_default_runs_on_a_cpu_in_onnx_runtime_without_pytorch(
        tmp_path: Path, refine: bool) -> None:
    """Issue 13: on a CPU the node's default is ONNX Runtime, and it must start and answer with no PyTorch:
    ``torch`` and ``onnx`` packages that refuse to import come first on the node's path, so any import of
    either fails. ``refine`` false runs the default's export without its refiners, the same way."""
    from stereonet_ros.backends import NVIDIA_DEVICE_NODES, default_onnx_is_current, export_path
    from stereonet_ros.inference import DEFAULT_CHECKPOINT

    if any(node.exists() for node in NVIDIA_DEVICE_NODES):
        pytest.skip('an NVIDIA device node exists: device auto may choose CUDA here')
    assert default_onnx_is_current(refine=refine), f'{export_path(DEFAULT_CHECKPOINT, refine)} is not the export ' \
        f'of {DEFAULT_CHECKPOINT}'
    blocked = tmp_path / 'blocked'
    for package in ('torch', 'onnx'):  # a robot with ONNX Runtime alone: neither PyTorch nor the onnx package
        (blocked / package).mkdir(parents=True)
        (blocked / package / '__init__.py').write_text(f"raise ImportError('{package} is blocked for this test')\n")
    import os

    path = os.pathsep.join(filter(None, [str(blocked), os.environ.get('PYTHONPATH')]))
    params = {'stereonet_node': {'ros__parameters': {
        'diagnostics_period_seconds': 0.5, 'refine': refine,  # checkpoint '' and device 'auto': the defaults
        'qos_overrides': {f'/{topic}': {'subscription': {'reliability': 'reliable', 'depth': 10}}
                          for topic in INPUT_TOPICS}}}}
    handle = start_node(tmp_path, params, env={'PYTHONPATH': path})
    client = Client(handle)
    try:
        client.wait_for_node()
        left, right = make_pair()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the default is marked preliminary
            expected = model_shift(Predictor.from_checkpoint(DEFAULT_CHECKPOINT, device='cpu', refine=refine), left,
                                   right) - (CX_LEFT - CX_RIGHT)
        outputs = client.send_good(left, right, topics=('disparity',))
        values = as_float_image(outputs['disparity'].image)
        valid = values >= outputs['disparity'].min_disparity
        assert valid.mean() > 0.5
        # The export's parity bound (0.01 px) but at the rare pixel where a threshold of the steps after the network
        # (search, SGBM fallback, occlusion fill) flips between the backends: 1 of 3,276 on this pair with refine
        # false (1.2 px), none with it (measured).
        apart = np.abs(values - expected)[valid]
        assert float((apart > 0.01).mean()) < 0.002 and float(apart.max()) < 4.0, (apart > 0.01).sum()
        assert client.spin_until(lambda: 'ONNX Runtime' in client.diagnostics.get('backend', '')), client.diagnostics
    finally:
        client.close()
        handle.stop()
    text = handle.text()
    assert handle.process.returncode == 0 and 'Traceback' not in text, text
    assert 'ONNX Runtime (CPUExecutionProvider)' in text  # the start-up line names the backend
    assert f'{1 if refine else 0} refiner(s)' in text
