"""The SGBM fallback: where the searched answer is unsure, SGBM's answer if the images and the network agree."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from stereonet_ros.local_search import photometric_agreement
from stereonet_ros.processing import confident
from stereonet_ros.sgbm import STEREO_IMAGE_PROC_SGBM, fitting_range, sgbm_disparity
from stereonet_ros.sgbm_fallback import (BELOW_CONFIDENCE, MIN_AGREEMENT_GAIN, NEIGHBOURHOOD_RADIUS_PX,
                                         NEIGHBOURHOOD_SLACK_PX, SGBM_PARAMS, neighbourhood_range, sgbm_fallback)

SHIFT = 20


def _pair(height: int = 64, width: int = 160, shift: int = SHIFT) -> tuple[np.ndarray, np.ndarray]:
    """A textured rectified pair whose true left-view disparity is ``shift`` everywhere."""
    rng = np.random.default_rng(7)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (height, width + shift)).astype(np.float32), (0, 0), 1.0)
    texture = (texture - texture.min()) * (255.0 / (texture.max() - texture.min()))
    return (np.ascontiguousarray(texture[:, :width], np.float32),
            np.ascontiguousarray(texture[:, shift:shift + width], np.float32))


def _wrong_block(confidence_there: float) -> tuple[np.ndarray, np.ndarray]:
    """The answer right (20 px) everywhere but a block 6 px off, whose confidence is ``confidence_there``."""
    answer = np.full((64, 160), float(SHIFT), np.float32)
    answer[20:40, 80:110] = SHIFT + 6
    confidence = np.full(answer.shape, 0.9, np.float32)
    confidence[20:40, 80:110] = confidence_there
    return answer, confidence


def test_constants_are_the_measured_choice() -> None:
    # docs/depth_quality.md, "SGBM where the network is unsure": the min_confidence that beats SGBM's answered
    # pixels on every set (README), a gain of 0.02 in (1 + ZNCC) / 2, three 8 px cells, the search's reach.
    assert (BELOW_CONFIDENCE, MIN_AGREEMENT_GAIN, NEIGHBOURHOOD_RADIUS_PX, NEIGHBOURHOOD_SLACK_PX) == (0.7, 0.02, 24,
                                                                                                        4.0)
    # OpenCV's StereoSGBM documentation: "P1 = 8*number_of_image_channels*blockSize*blockSize and
    # P2 = 32*number_of_image_channels*blockSize*blockSize", one (grey) channel; a point of the evaluators' grid.
    assert (SGBM_PARAMS.block_size, SGBM_PARAMS.p1, SGBM_PARAMS.p2, SGBM_PARAMS.mode) == (5, 8 * 1 * 25, 32 * 1 * 25,
                                                                                            'sgbm')
    from stereonet_ros.evaluation.evaluate import sgbm_candidates

    assert SGBM_PARAMS in sgbm_candidates()


def test_an_unsure_wrong_block_takes_sgbm_s_answer_and_nothing_else_moves() -> None:
    left, right = _pair()
    answer, confidence = _wrong_block(0.3)
    fixed, taken = sgbm_fallback(answer, confidence, photometric_agreement(answer, left, right), left, right, 30.0)
    block = np.zeros(answer.shape, bool)
    block[20:40, 80:110] = True
    assert not taken[~block].any() and np.array_equal(fixed[~block], answer[~block])
    assert taken[block].mean() > 0.95
    assert float(np.abs(fixed[taken] - SHIFT).max()) < 0.5
    assert np.array_equal(fixed[taken], sgbm_disparity(left, right, SGBM_PARAMS, 32)[taken])
    assert fixed is not answer and answer[30, 90] == SHIFT + 6  # the input is not written


def test_a_pixel_at_the_confidence_threshold_keeps_its_answer_as_min_confidence_keeps_it() -> None:
    """Below the threshold only, compared in float32 as the node's min_confidence compares: every pixel that
    min_confidence 0.7 keeps is the network's, every one it removes may be SGBM's."""
    left, right = _pair()
    at = np.float32(BELOW_CONFIDENCE)
    just_below = np.nextafter(at, np.float32(0))
    for value, expect_taken in ((at, False), (just_below, True)):
        answer, confidence = _wrong_block(float(value))
        _, taken = sgbm_fallback(answer, confidence, photometric_agreement(answer, left, right), left, right, 30.0)
        assert taken.any() == expect_taken, value
        assert bool(confident(confidence, BELOW_CONFIDENCE)[30, 90]) != expect_taken


def test_sgbm_s_answer_must_beat_the_searched_one_s_agreement_by_the_margin() -> None:
    left, right = _pair()
    answer, confidence = _wrong_block(0.3)
    sgbm = sgbm_disparity(left, right, SGBM_PARAMS, 32)
    sgbm_agreement = photometric_agreement(sgbm, left, right)
    _, taken = sgbm_fallback(answer, confidence, sgbm_agreement - 0.03, left, right, 30.0)
    assert taken[20:40, 80:110].mean() > 0.95
    _, taken = sgbm_fallback(answer, confidence, sgbm_agreement - 0.01, left, right, 30.0)
    assert not taken.any()


def test_sgbm_s_answer_must_lie_within_the_range_of_the_answers_around_it() -> None:
    """An answer no surface within 24 px holds (an alias, on repeated texture) is not taken: with the answer 60 px
    everywhere but a 20 px column, only the pixels within 24 columns of it take SGBM's 20."""
    left, right = _pair()
    answer = np.full(left.shape, 60.0, np.float32)
    answer[:, 100] = SHIFT
    confidence = np.full(left.shape, 0.3, np.float32)
    fixed, taken = sgbm_fallback(answer, confidence, photometric_agreement(answer, left, right), left, right, 64.0)
    sgbm = sgbm_disparity(left, right, SGBM_PARAMS, 64)
    answered = np.isfinite(sgbm)
    columns = np.broadcast_to(np.arange(left.shape[1]), left.shape)
    near = np.abs(columns - 100) <= NEIGHBOURHOOD_RADIUS_PX
    assert answered[:, 76:125].mean() > 0.95
    assert not taken[~near].any()
    assert taken[:, 76].mean() > 0.9 and taken[:, 124].mean() > 0.9  # 24 columns away: in range
    assert float(np.abs(fixed[taken] - SHIFT).max()) < 0.5
    np.testing.assert_array_equal(fixed[~taken], answer[~taken])


def test_the_neighbourhood_range_is_a_square_of_the_radius_and_ignores_non_finite_values() -> None:
    disparity = np.full((9, 60), 10.0, np.float32)
    disparity[4, 30] = 50.0
    disparity[4, 31] = np.nan
    low, high = neighbourhood_range(disparity, 3)
    assert high[4, 27] == 50.0 and high[4, 26] == 10.0  # 3 columns away in, 4 out
    assert high[1, 33] == 50.0 and high[0, 33] == 10.0  # a square: 3 rows and 3 columns away in
    assert float(np.nanmin(low)) == 10.0 and np.isfinite(low).all() and np.isfinite(high).all()
    nothing = np.full((5, 5), np.nan, np.float32)
    low, high = neighbourhood_range(nothing, 1)
    assert np.isposinf(low).all() and np.isneginf(high).all()


def test_sgbm_searches_only_as_far_as_an_answer_could_be_taken() -> None:
    """With the network's range 192 px SGBM could answer no column left of 192 on this 160-column pair; the largest
    answer (26 px) + the slack bounds what could be taken, so SGBM searches 32 and the block at columns 80-110 is
    answered. With no finite answer there is nothing to bound and nothing changes."""
    left, right = _pair()
    answer, confidence = _wrong_block(0.3)
    _, taken = sgbm_fallback(answer, confidence, photometric_agreement(answer, left, right), left, right, 192.0)
    assert taken[20:40, 80:110].mean() > 0.95
    unusable = np.full(left.shape, np.nan, np.float32)
    fixed, taken = sgbm_fallback(unusable, np.zeros(left.shape, np.float32), np.zeros(left.shape, np.float32),
                                 left, right, 192.0)
    assert not taken.any() and np.isnan(fixed).all()


def test_no_answer_above_the_network_s_range_is_taken() -> None:
    left, right = _pair()
    answer, confidence = _wrong_block(0.3)
    fixed, taken = sgbm_fallback(answer, confidence, photometric_agreement(answer, left, right), left, right, 19.5)
    assert float(fixed[taken].max(initial=0.0)) <= 19.5
    assert taken.mean() < 0.05  # SGBM's ~20 px answers lie above 19.5


def test_too_narrow_an_image_for_sgbm_keeps_the_answer() -> None:
    # fitting_range: width - numDisparities > block // 2, so with the fallback's 5x5 block 16 disparities need 19
    # columns (OpenCV 5.0 raises on 18, runs on 19; with stereo_image_proc's 15x15, 24); at 18 the fallback keeps
    # every answer, even with no confidence and no agreement.
    assert (fitting_range(30.0, 18, 5), fitting_range(30.0, 19, 5)) == (0, 16)
    assert (fitting_range(30.0, 23, 15), fitting_range(30.0, 24, 15)) == (0, 16)
    for params, narrow in ((SGBM_PARAMS, 18), (STEREO_IMAGE_PROC_SGBM, 23)):
        with pytest.raises(cv2.error):
            sgbm_disparity(*_pair(width=narrow, shift=4), params, 16)
        assert sgbm_disparity(*_pair(width=narrow + 1, shift=4), params, 16).shape == (64, narrow + 1)
    left, right = _pair(width=18, shift=4)
    answer = np.full(left.shape, 9.0, np.float32)
    confidence = np.zeros(left.shape, np.float32)
    fixed, taken = sgbm_fallback(answer, confidence, np.zeros_like(answer), left, right, 30.0)
    assert not taken.any() and np.array_equal(fixed, answer)


def test_shapes_must_agree() -> None:
    left, right = _pair()
    answer, confidence = _wrong_block(0.3)
    with pytest.raises(ValueError, match='one \\(H, W\\) size'):
        sgbm_fallback(answer, confidence[:, 1:], confidence, left, right, 30.0)


def test_the_predictor_searches_again_from_sgbm_s_answers_and_keeps_them_below_the_threshold() -> None:
    """Through the one inference path: the fallback's answer is searched again; the confidence is the lesser of the
    first search's and the network's times the final answer's agreement, so every pixel that took SGBM's answer
    stays below 0.7; and on the real Motorcycle pair the dense error falls (measured: 1.65 -> 1.50 px)."""
    import warnings

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.evaluation.metrics import disparity_metrics
    from stereonet_ros.inference_common import as_float_image, to_contract_color
    from stereonet_ros.local_search import local_search
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        predictor = open_predictor(None, device='cpu', backend='pytorch')
    network = predictor.infer(sample.left, sample.right, with_confidence=True)
    kept = predictor.infer(sample.left, sample.right, with_confidence=True, local_search=4, sgbm_fallback=False,
                           fill_occlusions=False)
    fallen = predictor.infer(sample.left, sample.right, with_confidence=True, local_search=4, fill_occlusions=False)
    assert network.confidence is not None and kept.confidence is not None and fallen.confidence is not None
    left, right = (to_contract_color(as_float_image(image, name), 'gray')[0]
                   for image, name in ((sample.left, 'l'), (sample.right, 'r')))
    fused, taken = sgbm_fallback(kept.disparity, kept.confidence, photometric_agreement(kept.disparity, left, right),
                                 left, right, kept.max_disparity)
    assert 0.01 < taken.mean() < 0.1
    np.testing.assert_array_equal(fallen.disparity, local_search(fused, left, right, 4, kept.max_disparity))
    np.testing.assert_array_equal(fallen.confidence, np.minimum(
        kept.confidence, network.confidence * photometric_agreement(fallen.disparity, left, right)))
    assert (fallen.confidence[taken] < np.float32(BELOW_CONFIDENCE)).all()
    without = disparity_metrics(kept.disparity, sample.disparity, max_disparity=kept.max_disparity)
    with_it = disparity_metrics(fallen.disparity, sample.disparity, max_disparity=kept.max_disparity)
    assert with_it.epe < without.epe - 0.1 and with_it.bad3 < without.bad3 - 0.8
    # Without asking for the confidence the answer is the same (the pass computes it for the fallback).
    plain = predictor.infer(sample.left, sample.right, local_search=4, fill_occlusions=False)
    assert plain.confidence is None and np.array_equal(plain.disparity, fallen.disparity)
    # Then, by default, the occlusion fill, last, by that confidence (test_occlusion_fill).
    from stereonet_ros.occlusion_fill import background_where_hidden

    filled = predictor.infer(sample.left, sample.right, with_confidence=True, local_search=4)
    np.testing.assert_array_equal(filled.disparity, background_where_hidden(fallen.disparity, fallen.confidence)[0])
    np.testing.assert_array_equal(filled.confidence, fallen.confidence)
    assert disparity_metrics(filled.disparity, sample.disparity, max_disparity=kept.max_disparity).epe < with_it.epe


def test_both_backends_answer_alike_with_it() -> None:
    """The fallback and the search after it run on the host after either backend. Their thresholds (confidence 0.7,
    the agreement's margin, the search's) turn the backends' 0.0002 px into a different choice at rare pixels, and
    the second search carries it to neighbours: on this Motorcycle crop 7.4 % of the pixels lie more than 0.1 px
    apart, 0.41 % more than 1 px, 0.039 px on average (the search alone: 2.5 %, 0.13 %, 0.011 px)."""
    pytest.importorskip('onnxruntime')
    import warnings

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    left, right = sample.left[100:300, 200:500], sample.right[100:300, 200:500]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        answers = [open_predictor(None, device='cpu', backend=backend).infer(left, right, local_search=4).disparity
                   for backend in ('pytorch', 'onnxruntime')]
    apart = np.abs(answers[0] - answers[1])
    assert float((apart > 0.1).mean()) < 0.1 and float((apart > 1.0).mean()) < 0.008 and float(apart.mean()) < 0.06


def test_the_node_s_parameter_reaches_the_answer_it_publishes() -> None:
    """``sgbm_fallback`` (default true, as config/stereonet.yaml) through the node's processing: false publishes the
    searched answer, true the fallback's, with a confidence nowhere higher."""
    import warnings

    from stereonet_ros.backends import open_predictor
    from stereonet_ros.camera import StereoCamera
    from stereonet_ros.node_config import NodeConfig
    from stereonet_ros.processing import OutputSelection, StereoProcessor
    from stereonet_ros.samples import motorcycle

    sample = motorcycle()
    crop = np.s_[100:260, 100:400]  # 1.9 % of its pixels take SGBM's answer (measured)
    left, right = sample.left[crop], sample.right[crop]
    camera = StereoCamera(width=300, height=160, fx=100.0, fy=100.0, cx=150.0, cy=80.0, cx_right=150.0,
                          focal=100.0, baseline=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        processor = StereoProcessor(open_predictor(None, device='cpu'))
    assert NodeConfig().sgbm_fallback is True
    outputs = {fallback: processor.process(left, right, camera, NodeConfig(local_search_px=4, sgbm_fallback=fallback),
                                           OutputSelection())
               for fallback in (False, True)}
    for fallback, published in outputs.items():
        expected = processor.predictor.infer(left, right, local_search=4, sgbm_fallback=fallback).disparity
        np.testing.assert_array_equal(published.disparity[published.valid], expected[published.valid])
    assert not np.array_equal(outputs[True].disparity, outputs[False].disparity)
    assert (outputs[True].confidence <= outputs[False].confidence).all()
