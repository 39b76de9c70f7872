"""stereonet-evaluate: score a checkpoint on stereo sets, beside OpenCV SGBM measured in the same run.

    stereonet-evaluate [--checkpoint PATH] [--sets synthetic,motorcycle,aloe,middlebury2014:ROOT,...]
                       [--synthetic-samples 32] [--device auto] [--precision fp32] [--inference-scale 1.0]
                       [--no-refine] [--local-search PX] [--no-sgbm-fallback] [--no-fill-occlusions]
                       [--min-confidence T]
                       [--no-sgbm] [--out results.json]

Sets:

- ``synthetic``: held-out pairs of our generator (seed :data:`HELD_OUT_SEED`, never used by
  ``stereonet-train``), 256x512, disparities up to the model's range.
- ``motorcycle``: the real Middlebury 2014 Motorcycle pair at quarter scale that ships with
  scikit-image (``inf`` = no ground truth).
- ``aloe``: the real Middlebury 2006 Aloe pair at half size (641x555), from OpenCV's sample data
  (Debian's ``opencv-doc``; ``python -m stereonet_ros.opencv_data`` fetches it); never used to choose
  a checkpoint, so the held-out real pair.
- ``sceneflow:ROOT``, ``kitti2012:ROOT``, ``kitti2015:ROOT``, ``middlebury2014:ROOT``,
  ``keystone:ROOT``, ``folder:ROOT``: the public formats of :mod:`stereonet_ros.data.datasets`.

Pixels scored: finite ground truth below the model's max disparity (KITTI: and non-zero), occluded
pixels included. Every method is scored in three views (:mod:`stereonet_ros.evaluation.views`), each
with EPE, bad-1/2/3, D1 and density computed on one set of pixels:

- ``dense`` (the headline): SGBM's holes filled the KITTI devkit way, every pixel scored;
- ``answered``: each method only where it answered, with its density;
- ``matched``: ours keeps its most confident pixels (its matching confidence) down to the density
  ``sgbm-stereo_image_proc`` reached on the same frame; the SGBMs are scored where they answered.

The JSON has, per set and method, ``dense``, ``answered`` and ``matched`` (null for ours when there
is no SGBM run to match), the dense view's metrics repeated at the top level, and ``seconds_per_frame``
(ours: network and confidence at ``--inference-scale``).

Classical baselines, on the gray images (what stereo_image_proc matches on):

- ``sgbm-stereo_image_proc``: stereo_image_proc's SGBM defaults (block 15, P1 200, P2 400,
  uniqueness 15, speckle window 100 / range 4, prefilter cap 31, disp12MaxDiff 0), the disparity
  range widened to cover each set (a multiple of 16 above its largest ground truth);
- ``sgbm-tuned``: the best of a small grid (block size, uniqueness, mode) chosen by dense bad-3 on a
  *separate* synthetic tuning stream (seed :data:`SGBM_TUNING_SEED`), never on the scored sets.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from stereonet_ros.cli import PRECISION_HELP, PRECISIONS, add_after_search_flags
from stereonet_ros.evaluation.views import VIEWS, ViewCounts, dense_method_views, three_views
from stereonet_ros.sgbm import STEREO_IMAGE_PROC_SGBM, SgbmParams, sgbm_disparity

if TYPE_CHECKING:  # the inference module loads torch; --help answers without it
    from stereonet_ros.inference import Precision

PROGRAM = 'stereonet-evaluate'
HELD_OUT_SEED = 2_000_003
SGBM_TUNING_SEED = 3_000_017
F32 = npt.NDArray[np.float32]


class EvaluationError(ValueError):
    """A set cannot be evaluated (unknown name, unreadable data); the message says which."""


@dataclass(frozen=True)
class Frame:
    """One scored pair: images in 0..255 ((H, W) gray or (H, W, 3) RGB) and left ground truth."""

    name: str
    left: F32
    right: F32
    disparity: F32
    """(H, W) pixels; non-finite = no ground truth."""


def sgbm_candidates() -> list[SgbmParams]:
    """The tuning grid: block size, uniqueness and mode; P1/P2 from OpenCV's rule 8/32 * block^2."""
    grid = []
    for block, uniqueness, mode in itertools.product((3, 5, 7, 9), (5, 10), ('sgbm', 'hh')):
        grid.append(SgbmParams(block_size=block, p1=8 * block * block, p2=32 * block * block,
                               uniqueness_ratio=uniqueness, speckle_size=100, speckle_range=2, prefilter_cap=63,
                               disp12_max_diff=1, mode=mode))  # type: ignore[arg-type]
    return grid


def sgbm_method(params: SgbmParams, num_disparities: int) -> Callable[[Frame], F32]:
    """A frame -> disparity function for :func:`score`."""
    def predict(frame: Frame) -> F32:
        return sgbm_disparity(frame.left, frame.right, params, num_disparities)
    return predict


def covering_range(frames: Sequence[Frame]) -> int:
    """SGBM numDisparities: a multiple of 16 above every finite ground-truth value."""
    largest = max(float(np.nanmax(np.where(np.isfinite(f.disparity), f.disparity, np.nan))) for f in frames)
    return int(16 * math.ceil((largest + 1) / 16))


# --- sets --------------------------------------------------------------------------------------------

def _synthetic_frames(count: int, seed: int, max_disparity: float, channels: int) -> list[Frame]:
    from stereonet_ros.data.synthetic import SyntheticConfig, generate_sample

    config = SyntheticConfig(height=256, width=512, channels=channels, max_disparity=max_disparity,
                             disparity_range=(24.0, min(180.0, 0.95 * max_disparity))).without_rig_augmentation()
    # The held-out set stays the clean generator's, so its scores compare across recipes.
    frames = []
    for index in range(count):
        sample = generate_sample(config, seed, index)
        left, right = (sample.left[:, :, 0], sample.right[:, :, 0]) if channels == 1 else (sample.left, sample.right)
        frames.append(Frame(name=f'synthetic-{seed}-{index}', left=left, right=right, disparity=sample.disp_left))
    return frames


def _real_pair_frames(name: str) -> list[Frame]:
    """``motorcycle`` or ``aloe`` (:data:`stereonet_ros.samples.PAIRS`) as one frame."""
    from stereonet_ros.opencv_data import OpenCvDataError
    from stereonet_ros.samples import PAIRS

    try:
        sample = PAIRS[name]()
    except OpenCvDataError as err:  # Aloe not fetched on this machine
        raise EvaluationError(f'{name}: {err}') from err
    return [Frame(name=sample.name, left=sample.left.astype(np.float32), right=sample.right.astype(np.float32),
                  disparity=sample.disparity)]


def _hwc(tensor: Any) -> F32:
    """(C, H, W) tensor -> (H, W, C) float32 array."""
    return np.ascontiguousarray(tensor.permute(1, 2, 0).numpy(), dtype=np.float32)


def _dataset_frames(kind: str, root: str) -> Iterator[Frame]:
    from stereonet_ros.data import datasets

    constructors: dict[str, Callable[[str], Any]] = {
        'sceneflow': datasets.SceneFlowDataset, 'kitti2012': datasets.Kitti2012Dataset,
        'kitti2015': datasets.Kitti2015Dataset, 'middlebury2014': datasets.Middlebury2014Dataset,
        'keystone': datasets.KeystoneDataset, 'folder': datasets.PairFolderDataset,
    }
    try:
        dataset = constructors[kind](root)
    except datasets.DatasetError as err:
        raise EvaluationError(str(err)) from err
    for index in range(len(dataset)):
        item = dataset[index]
        if 'disp_left' not in item:
            raise EvaluationError(f'{kind}:{root} has no ground-truth disparity for {item["name"]}')
        yield Frame(name=str(item['name']), left=_hwc(item['left']), right=_hwc(item['right']),
                    disparity=item['disp_left'][0].numpy().astype(np.float32))


KNOWN_SETS = ('synthetic', 'motorcycle', 'aloe', 'sceneflow:ROOT', 'kitti2012:ROOT', 'kitti2015:ROOT',
              'middlebury2014:ROOT', 'keystone:ROOT', 'folder:ROOT')


def load_set(spec: str, synthetic_samples: int, max_disparity: float, channels: int) -> list[Frame]:
    kind, _, root = spec.partition(':')
    if kind == 'synthetic' and not root:
        return _synthetic_frames(synthetic_samples, HELD_OUT_SEED, max_disparity, channels)
    if kind in ('motorcycle', 'aloe') and not root:
        return _real_pair_frames(kind)
    if kind in ('sceneflow', 'kitti2012', 'kitti2015', 'middlebury2014', 'keystone', 'folder') and root:
        frames = list(_dataset_frames(kind, root))
        if not frames:
            raise EvaluationError(f'{spec}: no pairs found')
        return frames
    raise EvaluationError(f'unknown set {spec!r}; known: {", ".join(KNOWN_SETS)}')


# --- scoring -----------------------------------------------------------------------------------------

OURS = 'stereonet'
REFERENCE = 'sgbm-stereo_image_proc'
"""The method whose density ours is thinned to in the matched view."""

Predict = Callable[[Frame], F32]


@dataclass
class MethodScores:
    """A method's view totals over a set's frames and its time per frame."""

    views: dict[str, ViewCounts]
    seconds: float = 0.0
    frames: int = 0

    def add(self, counts: dict[str, ViewCounts], seconds: float) -> None:
        for view, value in counts.items():
            self.views[view] = self.views.get(view, ViewCounts()) + value
        self.seconds += seconds
        self.frames += 1

    def as_json(self) -> dict[str, Any]:
        """``dense``/``answered``/``matched`` metrics dicts (``matched`` None when not measured); the dense
        view's metrics also at the top level, where older readers look for ``epe``/``bad3``."""
        views: dict[str, Any] = {view: dataclasses.asdict(self.views[view].metrics()) if view in self.views else None
                                 for view in VIEWS}
        return {**views['dense'], **views, 'seconds_per_frame': self.seconds / max(self.frames, 1)}


def _timed(predict: Predict, frame: Frame) -> tuple[F32, float]:
    start = time.perf_counter()
    prediction = predict(frame)
    return prediction, time.perf_counter() - start


def score(frames: Sequence[Frame], predict: Predict, max_disparity: float, gt_zero_invalid: bool) -> MethodScores:
    """A method's three views on the frames (its matched view = its answered view)."""
    scores = MethodScores({})
    for frame in frames:
        prediction, seconds = _timed(predict, frame)
        scores.add(three_views(prediction, frame.disparity, gt_zero_invalid=gt_zero_invalid,
                               max_disparity=max_disparity), seconds)
    return scores


def tune_sgbm(max_disparity: float, samples: int = 12) -> tuple[SgbmParams, dict[str, float]]:
    """Pick the grid point with the lowest dense bad-3 on a synthetic tuning stream (not a scored set)."""
    frames = _synthetic_frames(samples, SGBM_TUNING_SEED, max_disparity, channels=1)
    range_ = covering_range(frames)
    best: tuple[float, SgbmParams] | None = None
    for params in sgbm_candidates():
        scores = score(frames, sgbm_method(params, range_), max_disparity, gt_zero_invalid=False)
        bad3 = scores.views['dense'].metrics().bad3
        if best is None or bad3 < best[0]:
            best = (bad3, params)
    assert best is not None
    return best[1], {'tuning_dense_bad3': best[0], 'tuning_samples': float(samples)}


def check_inference_scale(scale: float) -> None:
    """The node's and the Predictor's range (:func:`stereonet_ros.inference.check_inference_scale`)."""
    from stereonet_ros.inference import InputError, check_inference_scale as predictor_check

    try:
        predictor_check(scale)
    except InputError as err:
        raise EvaluationError(str(err)) from None


def score_set(frames: Sequence[Frame], ours: Callable[[Frame], tuple[F32, F32 | None]],
              baselines: Sequence[tuple[str, Predict]], max_disparity: float,
              gt_zero_invalid: bool) -> dict[str, MethodScores]:
    """Every method's three views on the frames, ours last so that its matched view can use the density
    :data:`REFERENCE` reached on the same frame.

    Args:
        ours: frame -> (``(H, W)`` disparity, ``(H, W)`` confidence or None), pixels.
        baselines: (name, frame -> ``(H, W)`` disparity with NaN holes), in table order.
    """
    rules: dict[str, Any] = {'gt_zero_invalid': gt_zero_invalid, 'max_disparity': max_disparity}
    scores = {name: MethodScores({}) for name, _ in baselines}
    ours_scores = MethodScores({})
    for frame in frames:
        reference: ViewCounts | None = None
        for name, predict in baselines:
            prediction, seconds = _timed(predict, frame)
            counts = three_views(prediction, frame.disparity, **rules)
            scores[name].add(counts, seconds)
            if name == REFERENCE:
                reference = counts['answered']
        start = time.perf_counter()
        prediction, confidence = ours(frame)
        seconds = time.perf_counter() - start
        # No 'matched' without a density to match (no reference run, or no confidence).
        ours_scores.add(dense_method_views(prediction, frame.disparity, confidence, reference, **rules), seconds)
    return {OURS: ours_scores, **scores}


def evaluate(checkpoint: str | None, sets: Sequence[str], *, device: str = 'auto', synthetic_samples: int = 32,
             with_sgbm: bool = True, log: Callable[[str], None] = print,
             precision: Precision = 'fp32', inference_scale: float = 1.0,
             sgbm_tuning_samples: int = 12, refine: bool = True, local_search: int = 0,
             min_confidence: float = 0.0, sgbm_fallback: bool = True, fill_occlusions: bool = True,
             left_right_check: bool = False) -> dict[str, Any]:
    """Score the checkpoint (and SGBM) on every set in the three views. Returns the JSON-ready results.

    ``sgbm_tuning_samples``: pairs of the synthetic tuning stream the tuned SGBM is chosen on
    (:func:`tune_sgbm`; fewer only to rehearse a run quickly). ``refine=False``: ours without its refiners
    (:func:`~stereonet_ros.inference.without_refiners`). ``local_search``: the node's ``local_search_px``
    (:mod:`stereonet_ros.local_search`; 0 = the network's answer as it is). ``sgbm_fallback``: the node's
    parameter: with the local search, SGBM's answer where ours is unsure (:mod:`stereonet_ros.sgbm_fallback`; as
    the node, on by default). ``fill_occlusions``: the node's parameter: with the local search, last, the hidden
    pixels it is unsure of take their row's background (:mod:`stereonet_ros.occlusion_fill`; on by default).
    ``left_right_check``: the node's parameter: with the local search, the right view's answer too, and the pixels
    it disagrees with are unsure (:mod:`stereonet_ros.left_right_check`; off by default).
    ``min_confidence``: the node's
    parameter, in [0, 1]: ours leaves a hole where its confidence is below it
    (:func:`~stereonet_ros.processing.confident`), so its answered view has a density, as SGBM's does.

    Ours runs through :meth:`StereoProcessor.infer` at ``inference_scale`` (the node's path), with its
    confidence for the matched view. Ground truth is scored below the checkpoint's ``max_disparity``
    whatever the scale, so that every scale is scored on the same pixels.

    Raises:
        EvaluationError: a set cannot be loaded, or ``inference_scale`` is outside the node's range [0.1, 2.5].
    """
    import warnings

    from stereonet_ros.inference import InputError, Predictor, UntrainedPlaceholderWarning, check_min_confidence
    from stereonet_ros.processing import StereoProcessor, with_confident_only

    check_inference_scale(inference_scale)
    try:
        check_min_confidence(min_confidence)
    except InputError as err:
        raise EvaluationError(str(err)) from None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UntrainedPlaceholderWarning)
        predictor = Predictor.from_checkpoint(checkpoint, device=device, precision=precision, refine=refine)
    processor = StereoProcessor(predictor)
    max_disparity = float(predictor.contract.max_disparity)
    tuned: SgbmParams | None = None
    tuning: dict[str, float] = {}
    if with_sgbm:
        log('tuning SGBM on the synthetic tuning stream ...')
        tuned, tuning = tune_sgbm(max_disparity, samples=sgbm_tuning_samples)
    results: dict[str, Any] = {
        'checkpoint': checkpoint or 'bundled default',
        'placeholder': predictor.is_placeholder,
        'provenance': predictor.checkpoint.provenance,
        'device': str(predictor.device),
        'precision': predictor.precision,
        'inference_scale': inference_scale,
        'refine': refine,
        'local_search': local_search,
        'min_confidence': min_confidence,
        'sgbm_fallback': sgbm_fallback,
        'fill_occlusions': fill_occlusions,
        'left_right_check': left_right_check,
        'max_disparity': max_disparity,
        'views': {'dense': 'holes filled (KITTI devkit, row-wise min of the nearest valid neighbours), every '
                           'valid-ground-truth pixel scored',
                  'answered': 'each method scored where it answered; density = answered / valid',
                  'matched': f'ours thinned to its most confident pixels down to {REFERENCE} density on each '
                             'frame; SGBM scored where it answered'},
        'sgbm_tuned_params': dataclasses.asdict(tuned) if tuned else None,
        'sgbm_tuning': tuning,
        'sets': {},
    }

    def ours(frame: Frame) -> tuple[F32, F32 | None]:
        shift, confidence, _ = processor.infer(frame.left, frame.right, inference_scale, with_confidence=True,
                                               local_search=local_search, sgbm_fallback=sgbm_fallback,
                                               fill_occlusions=fill_occlusions, left_right_check=left_right_check)
        return with_confident_only(shift, confidence, min_confidence), confidence

    for spec in sets:
        frames = load_set(spec, synthetic_samples, max_disparity, predictor.contract.channels)
        baselines: list[tuple[str, Predict]] = []
        detail: dict[str, Any] = {}
        if with_sgbm and tuned is not None:
            range_ = covering_range(frames)
            detail = {'num_disparities': range_}
            baselines = [(REFERENCE, sgbm_method(STEREO_IMAGE_PROC_SGBM, range_)),
                         ('sgbm-tuned', sgbm_method(tuned, range_))]
        scores = score_set(frames, ours, baselines, max_disparity, gt_zero_invalid=spec.startswith('kitti'))
        results['sets'][spec] = {
            'frames': len(frames),
            'methods': {name: {**method.as_json(), **(detail if name != OURS else {})}
                        for name, method in scores.items()},
        }
        log(f'{spec}: {len(frames)} frame(s) scored')
    return results


def _cell(value: float | None, digits: int) -> str:
    return '-' if value is None or not math.isfinite(value) else f'{value:.{digits}f}'


def format_table(results: dict[str, Any]) -> str:
    """One markdown table: per set and method, the dense, answered and matched views (EPE px, bad-3 %)."""
    lines = ['| set | method | dense EPE px | dense bad-3 % | answered EPE px | answered bad-3 % | answered density '
             '| matched EPE px | matched bad-3 % | matched density | s/frame |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    unrefined = '' if results.get('refine', True) else ', no refiner'
    searched = f', local search {results["local_search"]} px' if results.get('local_search') else ''
    if searched and results.get('sgbm_fallback', False):
        searched += ' + SGBM fallback'
    if searched and results.get('fill_occlusions', False):
        searched += ' + occlusion fill'
    if searched and results.get('left_right_check', False):
        searched += ' + left-right check'
    if results.get('min_confidence'):
        searched += f', min confidence {results["min_confidence"]:g}'
    scale = results.get('inference_scale', 1.0)
    ours_label = f'{OURS} ({results.get("precision", "fp32")}, scale {scale:g}{unrefined}{searched})'
    for spec, entry in results['sets'].items():
        for method, m in entry['methods'].items():
            cells = []
            for view in VIEWS:
                v = m.get(view) or {}
                cells += [_cell(v.get('epe'), 2), _cell(v.get('bad3'), 1)]
                if view != 'dense':
                    cells.append(_cell(v.get('density'), 3))
            label = ours_label if method == OURS else method
            lines.append(f'| {spec} ({entry["frames"]}) | {label} | {" | ".join(cells)} | '
                         f'{m["seconds_per_frame"]:.3f} |')
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from stereonet_ros.inference import MAX_INFERENCE_SCALE, MIN_INFERENCE_SCALE

    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument('--checkpoint', help='ours (.safetensors) or a seed .ckpt; default: the bundled checkpoint')
    parser.add_argument('--sets', default='synthetic,motorcycle', help=f'comma-separated: {", ".join(KNOWN_SETS)}')
    parser.add_argument('--synthetic-samples', type=int, default=32, help='held-out synthetic pairs to score')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--precision', default='fp32', choices=PRECISIONS, help=PRECISION_HELP)
    parser.add_argument('--inference-scale', type=float, default=1.0,
                        help=f'run the network on images resized by this factor, in [{MIN_INFERENCE_SCALE:g}, '
                             f'{MAX_INFERENCE_SCALE:g}] as the node; disparities come back in input pixels')
    parser.add_argument('--no-refine', action='store_true',
                        help="ours without its refiners: the soft argmin carried to the input size (the node's "
                        'refine false)')
    parser.add_argument('--local-search', type=int, default=0, metavar='PX',
                        help="search the photometric cost within PX pixels of ours' answer (the node's "
                        'local_search_px; 0 = the network alone, the default here)')
    add_after_search_flags(parser, ' (with --local-search)')
    parser.add_argument('--min-confidence', type=float, default=0.0, metavar='T',
                        help="ours leaves a hole where its confidence is below T, in [0, 1] (the node's "
                        'min_confidence; 0 = keep all, the default)')
    parser.add_argument('--no-sgbm', action='store_true', help='skip the SGBM baselines')
    parser.add_argument('--out', type=Path, help='also write the results as JSON here')
    arguments = parser.parse_args(argv)

    from stereonet_ros.cli import fail
    from stereonet_ros.inference import InputError, check_local_search, check_min_confidence
    from stereonet_ros.model.checkpoint import CheckpointError

    if arguments.synthetic_samples < 1:
        fail(PROGRAM, f'--synthetic-samples {arguments.synthetic_samples}: must be >= 1', status=2)
    try:
        check_inference_scale(arguments.inference_scale)
    except EvaluationError:
        fail(PROGRAM, f'--inference-scale {arguments.inference_scale}: must be in [{MIN_INFERENCE_SCALE:g}, '
                      f'{MAX_INFERENCE_SCALE:g}]', status=2)
    try:
        check_local_search(arguments.local_search)
    except InputError as err:
        fail(PROGRAM, f'--local-search: {err}', status=2)
    try:
        check_min_confidence(arguments.min_confidence)
    except InputError as err:
        fail(PROGRAM, f'--min-confidence: {err}', status=2)
    sets = [spec.strip() for spec in arguments.sets.split(',') if spec.strip()]
    try:
        results = evaluate(arguments.checkpoint, sets, device=arguments.device, precision=arguments.precision,
                           inference_scale=arguments.inference_scale, refine=not arguments.no_refine,
                           local_search=arguments.local_search, min_confidence=arguments.min_confidence,
                           sgbm_fallback=not arguments.no_sgbm_fallback,
                           fill_occlusions=not arguments.no_fill_occlusions,
                           left_right_check=arguments.left_right_check,
                           synthetic_samples=arguments.synthetic_samples, with_sgbm=not arguments.no_sgbm,
                           log=lambda text: print(f'{PROGRAM}: {text}', file=sys.stderr))
    except (EvaluationError, CheckpointError, InputError) as err:
        fail(PROGRAM, str(err))
    print(format_table(results))
    if results['placeholder']:
        print(f'{PROGRAM}: note: the checkpoint is the UNTRAINED placeholder; its rows are not StereoNet\'s accuracy')
    if arguments.out:
        arguments.out.write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
