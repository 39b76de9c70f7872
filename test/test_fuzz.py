"""Fuzzing the node's pure path: random Image and CameraInfo fields through decode, camera and postprocess.

The property (issue 11): every input gives either a named error (what the node logs, throttled, before
dropping the pair) or outputs whose valid pixels are finite, inside [min_disparity, max_disparity], with a
depth > 0 and finite points, and whose DisparityImage constants are finite. Seeded and bounded: a few
thousand cases in well under a minute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

from stereonet_ros.camera import CameraModelError, from_camera_infos
from stereonet_ros.geometry import GeometryError
from stereonet_ros.image_codec import ImageCodecError, image_to_array, to_model_input
from stereonet_ros.inference import InputError, checked_image
from stereonet_ros.node_config import NodeConfig
from stereonet_ros.processing import OutputSelection, StereoInputError, postprocess

FUZZ = settings(max_examples=1500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ENCODINGS = ['mono8', 'mono16', 'rgb8', 'bgr8', 'rgba8', 'bgra8', '8UC1', '16UC1', '8UC3', '32FC1', 'yuv422',
             'bayer_rggb8', '', 'RGB8', 'mono8\x00', '64FC1']

# Values that break float32 arithmetic one way or another, beside ordinary ones.
EXTREME = st.sampled_from([0.0, -0.0, 1e-50, -1e-50, 1e-46, 1e-39, 1e38, -1e38, 1e39, -1e39, 3.4e38, float('nan'),
                           float('inf'), -float('inf'), 1.0, -1.0, 0.5])
NUMBER = st.one_of(EXTREME, st.floats(-2000.0, 2000.0, allow_nan=False), st.floats(allow_nan=True))


@dataclass
class Image:
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


@dataclass
class Header:
    frame_id: str = 'left_optical'


@dataclass
class Roi:
    x_offset: int = 0
    y_offset: int = 0
    width: int = 0
    height: int = 0


@dataclass
class Info:
    width: int
    height: int
    p: list[float]
    binning_x: int = 0
    binning_y: int = 0
    roi: Roi = field(default_factory=Roi)
    header: Header = field(default_factory=Header)


@st.composite
def images(draw: Any) -> Image:
    height = draw(st.integers(-1, 12))
    width = draw(st.integers(-1, 12))
    encoding = draw(st.sampled_from(ENCODINGS))
    step = draw(st.one_of(st.integers(-4, 64), st.just(max(width, 0) * 4)))
    size = draw(st.one_of(st.integers(0, 700), st.just(max(step, 0) * max(height, 0))))
    data = draw(st.binary(min_size=size, max_size=size))
    return Image(height, width, encoding, draw(st.integers(0, 2)), step, data)


@seed(11)
@FUZZ
@given(images(), st.sampled_from(['gray', 'rgb']))
def test_any_image_message_decodes_to_finite_pixels_or_a_named_error(image: Image, want: str) -> None:
    try:
        array = to_model_input(image, want)  # type: ignore[arg-type]
    except ImageCodecError:
        return
    assert array.shape[:2] == (image.height, image.width) and array.size > 0
    raw = image_to_array(image)  # type: ignore[arg-type]
    assert raw.shape[:2] == (image.height, image.width)
    # A NaN or inf pixel (a 32FC1 image can carry one) must not reach the network: the decode passes the
    # values on as they are, and the predictor's check refuses them with a named error.
    try:
        checked = checked_image(array, 'left')
    except InputError:
        assert not np.isfinite(array).all(), (image.encoding, array)
        return
    assert np.isfinite(checked.astype(np.float64)).all(), (image.encoding, checked)


@st.composite
def camera_pairs(draw: Any) -> tuple[Info, Info]:
    """Mostly plausible rectified pairs, with one to three constants replaced by hostile values (the ones
    that broke float32: tiny or huge focal lengths, baselines and principal points, NaN, inf)."""
    width, height = draw(st.integers(1, 16)), draw(st.integers(1, 8))

    def projection(right: bool) -> list[float]:
        fx, fy = draw(st.floats(20, 2000)), draw(st.floats(20, 2000))
        tx = -fx * draw(st.floats(0.01, 1.0)) if right else 0.0
        return [fx, 0.0, draw(st.floats(-20, 36)), tx, 0.0, fy, draw(st.floats(-10, 18)), 0.0, 0.0, 0.0, 1.0, 0.0]

    left, right = Info(width, height, projection(False)), Info(width, height, projection(True))
    for _ in range(draw(st.integers(0, 3))):
        info = draw(st.sampled_from([left, right]))
        info.p[draw(st.sampled_from([0, 2, 3, 5, 6]))] = draw(NUMBER)  # fx, cx, Tx, fy, cy
    if draw(st.integers(0, 9)) == 0:  # now and then a binning or an ROI, valid or not
        info = draw(st.sampled_from([left, right]))
        info.binning_x, info.binning_y = draw(st.integers(-1, 3)), draw(st.integers(-1, 3))
        info.roi = Roi(draw(st.integers(-2, 10)), draw(st.integers(-2, 10)), draw(st.integers(-2, 10)),
                       draw(st.integers(-2, 10)))
    return left, right


# Mostly shifts whose match lies inside these small images (so that pixels are valid and reach depth and
# points), with hostile values among them.
SHIFTS = st.one_of(st.floats(0.0, 16.0), st.floats(0.0, 16.0), st.floats(0.0, 1e-30), EXTREME,
                   st.floats(-5.0, 300.0, allow_nan=False), st.floats(allow_nan=True, width=32))


@seed(12)
@FUZZ
@given(camera_pairs(), st.data(), st.one_of(st.floats(-20.0, 4.0), st.floats(-2048.0, 2048.0)),
       st.one_of(st.just(0), st.integers(0, 300)), st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
       st.one_of(st.floats(1.0, 32.0), st.floats(1.0, 500.0)))
def test_any_camera_model_and_network_answer_give_valid_outputs_or_a_named_error(
        infos: tuple[Info, Info], data: Any, min_disparity: float, disparity_range: int, min_confidence: float,
        max_shift: float) -> None:
    try:
        camera = from_camera_infos(*infos)
    except CameraModelError:
        return
    height, width = camera.height, camera.width
    values = data.draw(st.lists(SHIFTS, min_size=height * width, max_size=height * width))
    with np.errstate(over='ignore'):  # a float64 beyond float32 becomes inf, as a network's overflow would
        shift = np.array(values, dtype=np.float32).reshape(height, width)
    event('reached postprocess')
    confidence = np.array(data.draw(st.lists(st.floats(0.0, 1.0, width=32), min_size=height * width,
                                             max_size=height * width)), dtype=np.float32).reshape(height, width)
    config = NodeConfig(min_disparity=min_disparity, disparity_range=disparity_range, min_confidence=min_confidence)
    try:
        out = postprocess(shift, confidence, max_shift, camera, config, OutputSelection())
    except (StereoInputError, GeometryError):
        return
    for name in ('min_disparity', 'max_disparity', 'delta_d'):
        assert np.isfinite(np.float32(getattr(out, name))), (name, getattr(out, name))
    valid = out.valid
    if valid.any():
        event('valid pixels published')
    published = out.disparity[valid]
    assert np.isfinite(published).all()
    assert (published >= np.float32(out.min_disparity)).all() and (published <= np.float32(out.max_disparity)).all()
    assert (out.disparity[~valid] == np.float32(config.min_disparity - 1.0)).all()
    assert out.depth is not None
    assert np.isfinite(out.depth[valid]).all() and (out.depth[valid] > 0).all()
    assert np.isnan(out.depth[~valid]).all()
    assert out.cloud is not None
    points = np.frombuffer(out.cloud.data, dtype=np.float32).reshape(height, width, -1)[:, :, :3]
    assert np.isfinite(points[valid]).all()
    assert np.isnan(points[~valid]).all()
