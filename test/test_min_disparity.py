"""min_disparity and disparity_range as stereo_image_proc takes them: a validity window, never a search range."""
from __future__ import annotations

import numpy as np

from stereonet_ros.camera import StereoCamera
from stereonet_ros.node_config import NodeConfig
from stereonet_ros.processing import OutputSelection, postprocess

CAMERA = StereoCamera(width=8, height=1, fx=100.0, fy=100.0, cx=4.0, cy=0.0, cx_right=4.0, focal=100.0, baseline=0.1)


def test_a_negative_floor_keeps_every_positive_disparity_and_writes_invalid_as_min_minus_one() -> None:
    shift = np.array([[0.0, 0.0, 1.0, 2.5, 3.0, 4.0, -0.5, np.nan]], dtype=np.float32)
    outputs = postprocess(shift, None, 6.0, CAMERA, NodeConfig(min_disparity=-16), OutputSelection())
    # d <= 0 has no finite depth: invalid whatever the floor (columns 0, 1, 6); NaN is invalid (7).
    assert outputs.valid.tolist() == [[False, False, True, True, True, True, False, False]]
    assert outputs.disparity[0, [0, 1, 6, 7]].tolist() == [-17.0] * 4  # stereo_image_proc's min - 1
    assert outputs.min_disparity == -16.0
    assert outputs.depth is not None and np.allclose(outputs.depth[0, 2:6], 10.0 / shift[0, 2:6])
    # The colour map spans the disparities the node can publish, not the unreachable -16..0.
    assert outputs.disparity_color is not None
    assert outputs.disparity_color[0, 2].tolist() != outputs.disparity_color[0, 5].tolist()
    zero_floor = postprocess(shift, None, 6.0, CAMERA, NodeConfig(min_disparity=0), OutputSelection())
    assert np.array_equal(outputs.disparity_color, zero_floor.disparity_color)


def test_disparity_range_caps_validity_and_max_disparity_at_stereo_image_proc_s_largest() -> None:
    wide_camera = StereoCamera(width=16, height=1, fx=100.0, fy=100.0, cx=8.0, cy=0.0, cx_right=8.0, focal=100.0,
                               baseline=0.1)
    shift = np.zeros((1, 16), dtype=np.float32)
    shift[0, 8:] = [1.0, 2.0, 3.0, 3.0001, 4.0, 5.0, 5.5, 6.0]  # columns >= 8: every match inside the right image
    config = NodeConfig(min_disparity=-1, disparity_range=5)  # stereo_image_proc searches -1..3
    outputs = postprocess(shift, None, 6.0, wide_camera, config, OutputSelection())
    assert outputs.max_disparity == 3.0
    assert outputs.valid[0, 8:].tolist() == [True, True, True, False, False, False, False, False]
    whole = postprocess(shift, None, 6.0, wide_camera, NodeConfig(min_disparity=-1), OutputSelection())
    assert whole.max_disparity == 6.0 and whole.valid[0, 8:].all()
    wide = postprocess(shift, None, 6.0, wide_camera, NodeConfig(disparity_range=4096), OutputSelection())
    assert wide.max_disparity == 6.0  # never above what the network can express
