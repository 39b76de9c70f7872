"""The left-right check: the right view's answer (the same network and steps on the mirrored pair) marks the left
answer's pixels it disagrees with as unsure; the occlusion fill takes them as its hidden pixels."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from stereonet_ros.left_right_check import (CONFIDENCE_FACTOR, TOLERANCE_PX, checked_confidence, mirrored,
                                            right_view_disagrees)


def _rows(left: float, right: float, width: int = 12) -> tuple[np.ndarray, np.ndarray]:
    return np.full((2, width), left, np.float32), np.full((2, width), right, np.float32)


def test_a_difference_of_exactly_the_tolerance_agrees_and_the_next_float_does_not() -> None:
    left, right = _rows(5.0, 6.0)
    assert TOLERANCE_PX == 1.0
    assert not right_view_disagrees(left, right)[:, 5:].any()  # |6 - 5| = 1: at the tolerance
    right[:] = np.nextafter(np.float32(6.0), np.float32(7.0))
    assert right_view_disagrees(left, right)[:, 5:].all()
    # Columns 0-4 land left of the right image (x - 5 < -0.5): out of view, whatever the right view says.
    assert right_view_disagrees(left, left)[:, :5].all() and not right_view_disagrees(left, left)[:, 5:].any()


def test_the_match_is_the_nearest_column_halves_up_and_half_a_pixel_outside_is_still_the_first_column() -> None:
    width = 12
    right = np.tile(np.arange(width, dtype=np.float32) * 10.0, (1, 1))  # the right view's answer names its column
    left = np.zeros((1, width), np.float32)
    left[0, 4] = 1.5   # 4 - 1.5 = 2.5 -> column 3 (30 px: disagrees with 1.5 unless read at column 0)
    left[0, 0] = 0.5   # 0 - 0.5 = -0.5 -> column 0, inside
    left[0, 1] = np.nextafter(np.float32(1.5), np.float32(2.0))  # 1 - 1.5000001 < -0.5: outside
    right[0, 3] = 1.5
    right[0, 0] = 0.5
    disagrees = right_view_disagrees(left, right)
    assert not disagrees[0, 4] and not disagrees[0, 0] and disagrees[0, 1]
    right[0, 3], right[0, 2] = 30.0, 1.5  # read at column 2 instead (rounding half down) it would agree
    assert right_view_disagrees(left, right)[0, 4]


def test_an_unknown_answer_on_either_side_disagrees() -> None:
    left, right = _rows(5.0, 5.0)
    left[0, 8] = np.nan
    right[1, 3] = np.inf  # read by left column 8 of row 1 (8 - 5)
    disagrees = right_view_disagrees(left, right)
    assert disagrees[0, 8] and disagrees[1, 8]
    assert disagrees.sum() == 2 * 5 + 2  # the out-of-view columns and those two


@pytest.mark.parametrize('left_shape, right_shape, tolerance, message', [
    ((2, 5), (2, 6), 1.0, r'must be one \(H, W\) size'),
    ((2, 5, 1), (2, 5, 1), 1.0, r'must be one \(H, W\) size'),
    ((2, 5), (2, 5), -0.5, r'tolerance_px -0\.5: must be finite and >= 0'),
    ((2, 5), (2, 5), float('nan'), r'tolerance_px nan'),
])
def test_bad_arguments_are_refused_with_a_reason(left_shape: tuple[int, ...], right_shape: tuple[int, ...],
                                                 tolerance: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        right_view_disagrees(np.zeros(left_shape, np.float32), np.zeros(right_shape, np.float32), tolerance)


def test_on_exact_ground_truth_the_check_finds_the_generator_s_occlusions() -> None:
    """The generator renders both views' exact disparities and the left view's occlusion mask (its own geometry,
    not this module's): the check on the two ground truths marks nearly every occluded pixel and nearly no other.
    The wrong mirror or sign would agree almost nowhere."""
    from stereonet_ros.data.synthetic import SyntheticConfig, generate_sample

    config = SyntheticConfig(height=96, width=192, disparity_range=(6.0, 64.0),
                             max_disparity=72.0).without_rig_augmentation()
    samples = [generate_sample(config, 7, index) for index in range(6)]
    disagrees = np.stack([right_view_disagrees(s.disp_left, s.disp_right) for s in samples])
    occluded = np.stack([s.occluded_left for s in samples])
    # Measured: 0.966 and 0.992 (subpixel matches beside slanted edges round to the other surface's column).
    assert disagrees[occluded].mean() > 0.93 and (~disagrees[~occluded]).mean() > 0.98


def test_checked_confidence_halves_the_disagreeing_pixels_only() -> None:
    confidence = np.array([[1.0, 0.8, 0.3, 0.0]], np.float32)
    disagrees = np.array([[True, False, True, True]])
    checked = checked_confidence(confidence, disagrees)
    assert checked.dtype == np.float32
    assert np.array_equal(checked, np.array([[0.5, 0.8, 0.15, 0.0]], np.float32))
    assert CONFIDENCE_FACTOR == 0.5  # at most 0.5, the occlusion fill's threshold (test below), whatever it was
    assert np.array_equal(confidence, np.array([[1.0, 0.8, 0.3, 0.0]], np.float32))  # not written


def test_mirrored_is_a_contiguous_left_to_right_mirror() -> None:
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    flipped = mirrored(image)
    assert flipped.flags.c_contiguous and np.array_equal(flipped[:, 0], image[:, 3])
    assert np.array_equal(mirrored(flipped), image)


def _motorcycle_crop() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    crop = np.s_[100:300, 150:550]
    return sample.left[crop], sample.right[crop], sample.disparity[crop]


def test_the_predictor_runs_the_steps_on_the_mirrored_pair_and_fills_and_lowers_by_the_disagreement() -> None:
    """The check, composed by hand from the same parts, gives the Predictor's answer bit for bit; on the whole of
    Motorcycle it helps the dense EPE (measured 1.461 -> 1.435 px) and the most confident pixels' more (below)."""
    from stereonet_ros.backends import open_predictor
    from stereonet_ros.evaluation.metrics import disparity_metrics
    from stereonet_ros.occlusion_fill import BELOW_CONFIDENCE, background_where_hidden

    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    left, right, truth = sample.left, sample.right, sample.disparity
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        predictor = open_predictor(None, device='cpu', backend='pytorch', precision='fp32')
    plain = predictor.infer(left, right, with_confidence=True, local_search=4, fill_occlusions=False)
    right_view = predictor.infer(mirrored(right), mirrored(left), with_confidence=True, local_search=4,
                                 fill_occlusions=False)
    checked = predictor.infer(left, right, with_confidence=True, local_search=4, left_right_check=True)
    assert plain.confidence is not None and checked.confidence is not None
    disagrees = right_view_disagrees(plain.disparity, mirrored(right_view.disparity))
    assert 0.02 < disagrees.mean() < 0.3
    expected, filled = background_where_hidden(plain.disparity, plain.confidence, disagrees)
    np.testing.assert_array_equal(checked.disparity, expected)
    np.testing.assert_array_equal(checked.confidence, checked_confidence(plain.confidence, disagrees))
    assert (checked.confidence[disagrees] <= np.float32(BELOW_CONFIDENCE)).all() and filled.any()
    # Off (the default), the occlusion fill's own mask, from the left answer's geometry.
    default = predictor.infer(left, right, with_confidence=True, local_search=4)
    np.testing.assert_array_equal(default.disparity, background_where_hidden(plain.disparity, plain.confidence)[0])
    without = disparity_metrics(default.disparity, truth, max_disparity=plain.max_disparity)
    with_it = disparity_metrics(checked.disparity, truth, max_disparity=plain.max_disparity)
    assert with_it.epe < without.epe - 0.02
    # The most confident 85 % of the pixels (the matched view's idea), scored where the truth is known: measured
    # 0.740 -> 0.638 px.
    known = np.isfinite(truth) & (truth > 0)

    def kept_epe(answer: np.ndarray, confidence: np.ndarray) -> float:
        order = np.argsort(-confidence[known], kind='stable')[:int(0.85 * known.sum())]
        return float(np.abs(answer[known] - truth[known])[order].mean())

    assert kept_epe(checked.disparity, checked.confidence) < kept_epe(default.disparity, default.confidence) - 0.05


def test_the_right_view_runs_only_where_the_steps_do() -> None:
    """No search (a GPU's default, or local_search 0), or a pair beyond the pixel budget: the mirrored pass would
    change nothing, so it is not run."""
    from stereonet_ros.inference_common import Inference, searched

    left, right, _ = _motorcycle_crop()
    network = Inference(disparity=np.full(left.shape[:2], 20.0, np.float32),
                        confidence=np.full(left.shape[:2], 0.9, np.float32), max_disparity=192.0,
                        network_size=left.shape[:2], scale=1.0)

    def must_not_run() -> Inference:
        raise AssertionError('the right view was computed')

    for reach, budget in ((0, 10**9), (4, left.shape[0] * left.shape[1] - 1)):
        answer = searched(network, left, right, reach, 'cpu', budget, right_view=must_not_run)
        assert answer.disparity is network.disparity
    assert searched(network, left, right, 4, 'cpu', 10**9, right_view=lambda: network).disparity is not None


def test_the_node_s_parameter_reaches_the_answer_it_publishes() -> None:
    """``left_right_check`` (default false, as config/stereonet.yaml) through the node's processing: true publishes
    the checked answer and its confidence, nowhere higher than without the check."""
    from stereonet_ros.backends import open_predictor
    from stereonet_ros.camera import StereoCamera
    from stereonet_ros.node_config import NodeConfig
    from stereonet_ros.processing import OutputSelection, StereoProcessor

    left, right, _ = _motorcycle_crop()
    camera = StereoCamera(width=400, height=200, fx=100.0, fy=100.0, cx=200.0, cy=100.0, cx_right=200.0,
                          focal=100.0, baseline=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        processor = StereoProcessor(open_predictor(None, device='cpu'))
    assert NodeConfig().left_right_check is False
    outputs = {check: processor.process(left, right, camera, NodeConfig(local_search_px=4, left_right_check=check),
                                        OutputSelection())
               for check in (False, True)}
    for check, published in outputs.items():
        expected = processor.predictor.infer(left, right, local_search=4, left_right_check=check).disparity
        np.testing.assert_array_equal(published.disparity[published.valid], expected[published.valid])
    assert not np.array_equal(outputs[True].disparity, outputs[False].disparity)
    assert (outputs[True].confidence <= outputs[False].confidence).all()


def test_both_backends_check_alike() -> None:
    """ONNX Runtime's network runs the mirrored pass too; the answers differ as they do without the check (the
    thresholds turn the backends' 0.0002 px into different choices at rare pixels: test_sgbm_fallback). Measured on
    this crop: 6.1 % of the pixels more than 0.1 px apart, 0.40 % more than 1 px, 0.039 px on average (without the
    check 6.0 %, 0.37 %, 0.039 px)."""
    pytest.importorskip('onnxruntime')
    from stereonet_ros.backends import open_predictor

    left, right, _ = _motorcycle_crop()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        answers = [open_predictor(None, device='cpu', backend=backend, precision='fp32').infer(
            left, right, local_search=4, left_right_check=True).disparity for backend in ('pytorch', 'onnxruntime')]
    apart = np.abs(answers[0] - answers[1])
    assert float((apart > 0.1).mean()) < 0.1 and float((apart > 1.0).mean()) < 0.01 and float(apart.mean()) < 0.08
