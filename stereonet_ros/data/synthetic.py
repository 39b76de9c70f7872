"""Synthetic stereo pairs with exact ground truth, generated on the fly.

A scene is a stack of textured layers seen by a rectified camera pair: a background (one plane, or a
floor meeting a wall) plus 10-30 occluding objects (superellipses, star polygons, thin bars and fences,
rings, noise blobs). Every layer is a surface ``d(x, y)`` given in LEFT-view pixel coordinates: a
slanted plane ``d = c + a (x - cx) + b (y - cy)`` or such a plane plus a Gaussian bump. Its outline and
texture are functions of the left-view point ``(x_L, y)`` it covers, so both views see the same surface.

Both views are rendered by inverse mapping, never by warping an image:

* left pixel ``(x, y)``: ``x_L = x``;
* right pixel ``(x, y)``: ``x_L`` solves ``x = x_L - d(x_L, y)`` (closed form for planes, Newton for
  bumps; ``|dd/dx| < 1`` keeps it one-to-one, so a surface never hides itself);

and at each pixel the front-most layer (largest disparity, a z-buffer) wins. Mask and texture are sampled
at ``(x_L, y)`` with the same bilinear filter in both views, from textures prefiltered (mip levels chosen
so a texel covers at least one pixel) so that neither view aliases differently. Camera effects (gain,
gamma, contrast, brightness, colour, blur, noise, 8-bit quantisation, JPEG) are drawn per view AFTER
rendering, independently, so the two views never share an exposure.

Real rigs (``SyntheticConfig`` fields from ``scale_probability`` on; :mod:`stereonet_ros.data.augment`):

* **scale and stretch**: the scene is drawn in a frame ``1 / (fx, fy)`` the output's and both views are
  resampled by (fx, fy), labels with them (disparity times fx; fy leaves it). ``disparity_range`` stays
  in output pixels: the disparities keep their distribution; the look changes (resampling blur or
  sharpening, pixel aspect).
* **misrectification**: the right view (image and right labels) is resampled as if its rows were off by a
  sub-pixel shift and a tiny rotation. The left labels stay: they describe the ideal rectified geometry
  the network should still output.
* **eraser**: boxes of the right view's mean colour, or of a patch copied from elsewhere in it, pasted
  over the right view (RAFT-Stereo, CREStereo). Right labels there are marked invalid (``erased_right``);
  left pixels whose match falls in a box keep valid labels, as RAFT-Stereo keeps them: still right
  geometrically, only unmatchable, as at a real occluder in front of one lens.
* **levels**: contrast and brightness per view (camera effects above).

Each view is resampled once (scale and misrectification composed into one read), with plain float
bilinear interpolation; labels are read at the same points (bilinear within a surface, nearest across
depth edges) and their occlusion masks follow (an interpolated label is occluded if any of its four
source pixels is, a nearest one if its source pixel is).
All rig probabilities 0 (``SyntheticConfig.without_rig_augmentation()``) gives the generator as it was
before them, bit for bit: every rig augmentation draws from its own child stream of the sample's seed.

Conventions (see CONVENTIONS.md): left disparity ``D_L``: the left pixel at column ``x`` is at
``x - D_L`` in the right image; right disparity ``D_R``: the right pixel at ``x`` is at ``x + D_R`` in
the left image. Both are exact float32 pixels (with scale or misrectification: the exact labels read
at the resampled points). A left pixel is occluded iff ``x - D_L < 0`` or a nearer
layer covers the right-view point ``(x - D_L, y)``; a right pixel iff ``x + D_R > W - 1`` or a nearer layer
covers the left-view point ``(x + D_R, y)``. Each sample is a pure function of ``(config, seed, index)``.

Example::

    >>> cfg = SyntheticConfig(height=64, width=128, disparity_range=(8.0, 40.0), max_disparity=48.0)
    >>> s = generate_sample(cfg, seed=0, index=3)
    >>> s.left.shape, s.disp_left.dtype
    ((64, 128, 1), dtype('float32'))
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from stereonet_ros.data.augment import Box, Taps, adjust_levels, erase, misrectify, pixel_grid, unscale
from stereonet_ros.image_codec import BT601_WEIGHTS

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
I16 = npt.NDArray[np.int16]
I64 = npt.NDArray[np.int64]

SHAPE_KINDS: Final = ('superellipse', 'polygon', 'bar', 'ring', 'blob')
"""Object outlines, in the order of ``SyntheticConfig.shape_weights``. 'bar' = thin bars, fences, grids."""

RIG_AUGMENTATIONS: Final = ('scale_probability', 'misrectify_probability', 'eraser_probability',
                             'contrast_probability', 'brightness_probability')
"""``SyntheticConfig`` probabilities of the real-rig augmentations; all 0 = the generator without them."""

TEXTURE_KINDS: Final = ('photo', 'fbm', 'stripes', 'checker', 'gradient')
"""Textures, in the order of ``SyntheticConfig.texture_weights``; 'flat' (near-textureless) is drawn apart."""

PHOTO_NAMES: Final = (
    'astronaut', 'coffee', 'chelsea', 'rocket', 'camera', 'brick', 'grass', 'gravel', 'text', 'moon',
    'page', 'coins', 'hubble_deep_field', 'immunohistochemistry', 'retina', 'cell', 'colorwheel', 'clock',
)
"""scikit-image photos bundled with 0.26 (no download). ``stereo_motorcycle`` is left out on purpose: it
is the Middlebury Motorcycle pair we evaluate on, and training on its texture would leak the test set."""

EXTRA_PHOTOS: Final = (
    ('sklearn', 'datasets/images/china.jpg'), ('sklearn', 'datasets/images/flower.jpg'),
    ('pywt', 'data/aero.npz'), ('pywt', 'data/ascent.npz'),
)
"""Photos bundled inside other installed packages (package, file inside it), read from disk without
importing the package: scikit-learn's two sample photos and PyWavelets' aerial view and staircase
(its ``camera`` is scikit-image's). ``SyntheticConfig.extra_photos`` adds them, and a mosaic of
scikit-image's 200 LFW faces, to :data:`PHOTO_NAMES`."""

# A curved layer's |dd/dx| stays below this so x_R = x_L - d(x_L) is strictly increasing (invertible,
# no self-occlusion) and the right view squeezes a texture by at most 1 / (1 - 0.6) = 2.5x.
_MAX_CURVED_SLOPE: Final = 0.6
# Disparity margin deciding "another layer is nearer" in the occlusion test: Newton solves to ~1e-10 px.
_OCCLUSION_EPS: Final = 1e-6
_FBM_TILE: Final = 256
# The child stream of a sample's seed that draws its palette (0-3 are the rig augmentations').
_PALETTE_STREAM: Final = 4
# Scene pixels beyond the output frame's edge at which a resampled view's correspondences are marked out
# of the frame before resampling. Each output pixel's own x -+ D lies within ~3 px of any pixel it reads:
# reads reach <= 1 px away, x -+ D moves < 1.6 px per pixel along x and < 1.1 along y within a surface
# (|dd/dx| < 0.6, |dd/dy| <= max_slant + bump), and labels spread <= 1 px where they are interpolated.
_FRAME_MARGIN = 4.0


class SyntheticConfigError(ValueError):
    """A ``SyntheticConfig`` field is out of range; the message names the field and its value."""


def _bad(key: str, value: object, why: str) -> SyntheticConfigError:
    return SyntheticConfigError(f'SyntheticConfig.{key}={value!r}: {why}')


@dataclass(frozen=True)
class SyntheticConfig:
    """What the generator draws from. Probabilities are per sample unless said per layer or per view.

    Ranges are ``(low, high)`` tuples, inclusive. Disparities and lengths are in pixels of the output.
    """

    height: int = 256  # output rows, pixels
    width: int = 512  # output columns, pixels; keep >= 2 * disparity_range[1] so far content survives
    channels: int = 1  # 1 = gray (the default StereoNet input), 3 = RGB
    n_layers: tuple[int, int] = (10, 30)  # number of objects in front of the background (uniform)
    disparity_range: tuple[float, float] = (24.0, 180.0)  # per-sample d_max is log-uniform in this range
    min_disparity_fraction: float = 0.3  # per-sample d_min ~ U(0, fraction * d_max)
    max_disparity: float = 192.0  # the model's range: valid masks keep D < max_disparity
    overshoot_probability: float = 0.01  # per sample: d_max = max_disparity * U(overshoot_range) instead
    overshoot_range: tuple[float, float] = (1.05, 1.15)  # so a few pixels lie past the model's range
    max_slant: float = 0.3  # |a|, |b| of layer planes, pixels of disparity per pixel; must be < 1
    curved_probability: float = 0.25  # per object: add a smooth Gaussian bump to its plane
    floor_wall_probability: float = 0.5  # background = floor meeting a wall, else one slanted plane
    shape_weights: tuple[float, float, float, float, float] = (0.3, 0.2, 0.25, 0.1, 0.15)  # SHAPE_KINDS
    texture_weights: tuple[float, float, float, float, float] = (0.55, 0.2, 0.1, 0.08, 0.07)  # TEXTURE_KINDS
    flat_probability: float = 0.07  # per layer: near-textureless (constant + <= 2 grey-level noise)
    texture_scale_range: tuple[float, float] = (0.5, 2.0)  # photo magnification, output px per photo px
    extra_photos: bool = False  # photos: also EXTRA_PHOTOS and an LFW face mosaic (23 sources, not 18)
    shading_strength: float = 0.3  # smooth multiplicative shading per layer, shared by both views
    # Per sample: every layer's mean level is drawn near one scene level (normal, std ``palette_spread``
    # grey levels) instead of independently, so a depth edge is often no brighter a step than the texture
    # on either side, as in real scenes. On Middlebury Motorcycle the median image gradient on depth edges
    # is 0.57x the 90th percentile of the gradient elsewhere; on the generator's scenes it is 1.20x, 0.74x
    # with this on (benchmarks/refiner_image_use.py), so a refiner can learn "strong edge = depth edge"
    # and find that false on a real camera. 0 = off, and the scene, its labels and every other draw are
    # the same with it on (a separate random stream).
    palette_probability: float = 0.0
    palette_spread: float = 15.0  # grey levels
    photometric: bool = True  # master switch; False = views differ by geometry only (exact GT tests)
    gain_probability: float = 0.8  # per view
    gain_range: tuple[float, float] = (0.8, 1.2)
    gamma_probability: float = 0.5  # per view
    gamma_range: tuple[float, float] = (0.8, 1.25)
    color_jitter_probability: float = 0.3  # per view, RGB only: per-channel gain 1 +- color_jitter
    color_jitter: float = 0.08
    blur_probability: float = 0.4  # per view, Gaussian sigma in pixels
    blur_sigma_range: tuple[float, float] = (0.3, 1.2)
    noise_probability: float = 0.7  # per view, additive Gaussian, std in grey levels (0..255)
    noise_std_range: tuple[float, float] = (0.5, 4.0)
    jpeg_probability: float = 0.25  # per view, after 8-bit quantisation
    jpeg_quality_range: tuple[int, int] = (30, 95)
    quantize: bool = True  # round to 8 bits (a real camera's output); only when photometric is on
    # Image samples per pixel side: 1 = each pixel shows the scene point at its centre (outlines aliased,
    # a staircase no camera makes); s = the mean of s x s points spread evenly over the pixel, i.e. each
    # layer weighted by the share of the pixel it covers (anti-aliased outlines, as a lens and a sensor
    # pixel's area give). Labels (disparity, occlusion, layer) stay the pixel centre's. Costs s^2 renders.
    supersample: int = 1
    # Real-rig augmentations (module docstring, "Real rigs"). Each draws from its own random stream, so
    # switching one on or off leaves the scene, the camera effects and the others untouched; all off
    # (``without_rig_augmentation()``) renders exactly what the generator rendered before they existed.
    scale_probability: float = 0.5  # per sample: both views and their labels resampled by (fx, fy)
    scale_range: tuple[float, float] = (0.8, 1.25)  # sqrt(fx * fy), log-uniform; disparity_range stays in output px
    stretch_range: tuple[float, float] = (0.9, 1.11)  # fx / fy, log-uniform (pixel aspect)
    misrectify_probability: float = 0.5  # per sample, the right view only: rows off by a fraction of a pixel
    misrectify_shift: float = 1.0  # vertical shift ~ U(-shift, shift), pixels
    misrectify_rotation: float = 0.1  # rotation about the image centre ~ U(-rotation, rotation), degrees
    eraser_probability: float = 0.5  # per sample, the right view only: boxes pasted over it (an occluder)
    eraser_boxes: tuple[int, int] = (1, 2)  # number of boxes, uniform
    eraser_size_range: tuple[float, float] = (24.0, 96.0)  # box width and height, each uniform, pixels
    eraser_texture_probability: float = 0.5  # per box: a patch from elsewhere in the right view, else its mean
    contrast_probability: float = 0.5  # per view, photometric only: contrast about the view's mean
    contrast_range: tuple[float, float] = (0.8, 1.2)
    brightness_probability: float = 0.5  # per view, photometric only: an offset, grey levels
    brightness_range: tuple[float, float] = (-20.0, 20.0)

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        def integer(key: str, low: int) -> int:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise _bad(key, value, f'must be an int >= {low}')
            return value

        def number(key: str, low: float, high: float) -> float:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise _bad(key, value, f'must be a number in [{low}, {high}]')
            return float(value)

        def pair(key: str, low: float, high: float, integral: bool = False) -> tuple[float, float]:
            value = getattr(self, key)
            kinds = (int,) if integral else (int, float)
            if (not isinstance(value, tuple) or len(value) != 2
                    or any(isinstance(v, bool) or not isinstance(v, kinds) for v in value)):
                raise _bad(key, value, f'must be a (low, high) tuple of {"ints" if integral else "numbers"}')
            if not low <= value[0] <= value[1] <= high:
                raise _bad(key, value, f'must satisfy {low} <= low <= high <= {high}')
            return float(value[0]), float(value[1])

        def weights(key: str, n: int) -> None:
            value = getattr(self, key)
            if (not isinstance(value, tuple) or len(value) != n
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in value)
                    or sum(value) <= 0):
                raise _bad(key, value, f'must be a tuple of {n} non-negative numbers with a positive sum')

        integer('height', 16)
        width = integer('width', 32)
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise _bad('channels', self.channels, 'must be 1 (gray) or 3 (RGB)')
        pair('n_layers', 0, 1000, integral=True)
        _, d_high = pair('disparity_range', 1.0, math.inf)
        if d_high >= width:
            raise _bad('disparity_range', self.disparity_range, f'high must be < width={width}')
        number('min_disparity_fraction', 0.0, 1.0)
        max_disp = number('max_disparity', 1.0, math.inf)
        number('overshoot_probability', 0.0, 1.0)
        _, over_high = pair('overshoot_range', 1.0, math.inf)
        if self.overshoot_probability > 0 and max_disp * over_high >= width:
            raise _bad('overshoot_range', self.overshoot_range,
                       f'max_disparity * high must be < width={width} when overshoot_probability > 0')
        number('max_slant', 0.0, 0.5)
        for key in ('curved_probability', 'floor_wall_probability', 'flat_probability', 'gain_probability',
                    'gamma_probability', 'color_jitter_probability', 'blur_probability', 'noise_probability',
                    'jpeg_probability'):
            number(key, 0.0, 1.0)
        weights('shape_weights', len(SHAPE_KINDS))
        weights('texture_weights', len(TEXTURE_KINDS))
        pair('texture_scale_range', 0.05, 20.0)
        number('shading_strength', 0.0, 1.0)
        number('palette_probability', 0.0, 1.0)
        number('palette_spread', 0.0, 128.0)
        if isinstance(self.supersample, bool) or not isinstance(self.supersample, int) \
                or not 1 <= self.supersample <= 8:
            raise _bad('supersample', self.supersample, 'must be an int in [1, 8]')
        for key in ('photometric', 'quantize', 'extra_photos'):
            if not isinstance(getattr(self, key), bool):
                raise _bad(key, getattr(self, key), 'must be a bool')
        pair('gain_range', 0.01, 100.0)
        pair('gamma_range', 0.05, 20.0)
        number('color_jitter', 0.0, 0.9)
        pair('blur_sigma_range', 0.0, 20.0)
        pair('noise_std_range', 0.0, 255.0)
        pair('jpeg_quality_range', 1, 100, integral=True)
        for key in RIG_AUGMENTATIONS:
            number(key, 0.0, 1.0)
        number('eraser_texture_probability', 0.0, 1.0)
        pair('scale_range', 0.25, 4.0)
        pair('stretch_range', 0.25, 4.0)
        number('misrectify_shift', 0.0, 8.0)
        number('misrectify_rotation', 0.0, 5.0)
        pair('eraser_boxes', 0, 64, integral=True)
        pair('eraser_size_range', 1.0, 1e4)
        pair('contrast_range', 0.0, 10.0)
        pair('brightness_range', -255.0, 255.0)

    def without_rig_augmentation(self) -> SyntheticConfig:
        """This config with every real-rig augmentation off (the probabilities in ``RIG_AUGMENTATIONS`` set
        to 0): the generator's output as before they existed, bit for bit. Camera effects stay as set."""
        return replace(self, scale_probability=0.0, misrectify_probability=0.0, eraser_probability=0.0,
                       contrast_probability=0.0, brightness_probability=0.0)


@dataclass(frozen=True)
class LayerInfo:
    """What one layer is, for inspection and tests (index = its id in ``layer_left`` / ``layer_right``)."""

    shape: str  # 'background', 'floor', 'wall' or one of SHAPE_KINDS
    texture: str  # one of TEXTURE_KINDS or 'flat'
    curved: bool


@dataclass(frozen=True)
class RigAugmentation:
    """The real-rig augmentations one sample drew (identity values = not applied), for inspection and tests."""

    scale: tuple[float, float] = (1.0, 1.0)  # (fx, fy): output pixels per scene pixel; disparity x fx
    shift: float = 0.0  # right view's content moved down by this many pixels ...
    rotation: float = 0.0  # ... after turning this many degrees about the image centre (augment.misrectify)
    boxes: tuple[Box, ...] = ()  # eraser boxes on the right view, (x0, y0, width, height) clipped to it
    box_sources: tuple[tuple[int, int] | None, ...] = ()  # per box: top-left of the copied patch, or None = mean
    # (contrast, brightness) of the left view, then of the right view
    levels: tuple[tuple[float, float], tuple[float, float]] = ((1.0, 0.0), (1.0, 0.0))

    @property
    def geometric(self) -> bool:
        """Whether the views are resampled (scale or misrectification), not rendered straight."""
        return self.scale != (1.0, 1.0) or self.shift != 0.0 or self.rotation != 0.0


@dataclass(frozen=True, eq=False)
class StereoSample:
    """One rendered pair with its exact ground truth. H, W = config height, width; C = config channels."""

    left: F32  # (H, W, C) float32, grey levels 0..255 (integers when quantised)
    right: F32  # (H, W, C) float32, grey levels 0..255
    disp_left: F32  # (H, W) float32, pixels: left (x, y) is at (x - D_L, y) in the right view
    disp_right: F32  # (H, W) float32, pixels: right (x, y) is at (x + D_R, y) in the left view
    occluded_left: Mask  # (H, W) bool: not visible in the right view (out of view or hidden)
    occluded_right: Mask  # (H, W) bool: not visible in the left view
    valid_left: Mask  # (H, W) bool: not occluded and 0 <= D_L < max_disparity
    valid_right: Mask  # (H, W) bool: not occluded, not erased and 0 <= D_R < max_disparity
    layer_left: I16  # (H, W) int16: index into ``layers`` of the front-most layer
    layer_right: I16  # (H, W) int16
    d_min: float  # the sample's drawn disparity range, pixels; D_L, D_R lie in [d_min, d_max]
    d_max: float
    layers: tuple[LayerInfo, ...]
    erased_right: Mask  # (H, W) bool: right pixels showing pasted content (eraser boxes), labels kept, invalid
    rig: RigAugmentation  # what the real-rig augmentations drew


# --------------------------------------------------------------------------------------------------
# Textures


def _package_file(package: str, relative: str) -> Path | None:
    """Path of a file shipped inside an installed package, without importing it (None if absent)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def _read_extra_photo(package: str, relative: str) -> npt.NDArray[np.uint8] | None:
    """One of :data:`EXTRA_PHOTOS` as (h, w) gray or (h, w, 3) RGB uint8; None if not installed."""
    path = _package_file(package, relative)
    if path is None:
        return None
    if path.suffix == '.npz':
        with np.load(path) as archive:
            return np.asarray(archive['data'], np.uint8)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _face_mosaic() -> npt.NDArray[np.uint8]:
    """scikit-image's 200 LFW faces (25x25 gray) tiled 10 rows by 20: skin, hair and eyes at pixel scale."""
    import skimage.data

    faces = np.asarray(skimage.data.lfw_subset(), np.float64)  # (200, 25, 25) in [0, 1]
    grid = faces.reshape(10, 20, 25, 25).transpose(0, 2, 1, 3).reshape(250, 500)
    return np.round(grid * 255.0).astype(np.uint8)


def _photos(extra: bool) -> list[npt.NDArray[np.generic]]:
    """The texture photos as loaded: :data:`PHOTO_NAMES`, then with ``extra`` EXTRA_PHOTOS and the mosaic."""
    import skimage.data  # heavy import, only needed once the first photo texture is drawn

    photos: list[npt.NDArray[np.generic]] = []
    for name in PHOTO_NAMES:
        try:
            photos.append(np.asarray(getattr(skimage.data, name)()))
        except (AttributeError, ImportError, OSError, ValueError):
            continue  # a photo missing from this install (pooch-only data) just narrows the choice
    if extra:
        for package, relative in EXTRA_PHOTOS:
            photo = _read_extra_photo(package, relative)
            if photo is not None:  # the package not installed: the choice narrows, as above
                photos.append(photo)
        photos.append(_face_mosaic())
    return photos


@functools.lru_cache(maxsize=4)
def _photo_mips(channels: int, extra: bool = False) -> tuple[tuple[F32, ...], ...]:
    """Bundled photos as float32 mip pyramids, (h, w, C) grey levels; loaded once per process.

    Level k is the photo shrunk 2**k times with INTER_AREA (a box prefilter), so any magnification in
    texture_scale_range can be met by a level whose texels cover >= 1 output pixel: no aliasing.
    """
    photos: list[tuple[F32, ...]] = []
    for photo in _photos(extra):
        image = photo.astype(np.float32)
        if image.ndim == 2:
            image = image[:, :, None]
        image = image[:, :, :3]
        if channels == 1 and image.shape[2] == 3:
            # ITU-R 601 luma, as cv2's RGB2GRAY (what a mono camera roughly sees)
            image = image @ np.array(BT601_WEIGHTS, np.float32).reshape(3, 1)
        levels = [np.ascontiguousarray(image)]
        while min(levels[-1].shape[:2]) >= 64 and len(levels) < 5:
            prev = levels[-1]
            small = cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA)
            levels.append(small.reshape(small.shape[0], small.shape[1], -1))
        photos.append(tuple(levels))
    return tuple(photos)


def _reflect_index(index: I64, size: int) -> I64:
    """Mirror integer texel indices into [0, size), as cv2.BORDER_REFLECT_101."""
    if size == 1:
        return np.zeros_like(index)
    low, high = (int(index.min()), int(index.max())) if index.size else (0, 0)
    if low >= 0 and high < size:  # the common case (a blob's field, most texture reads): nothing to mirror
        return index
    period = 2 * size - 2
    # |index| % period without the integer division when no index is a whole period away: the same values
    index = np.abs(index) if -size < low and high < period else np.abs(index) % period
    return np.where(index >= size, period - index, index)


def _bilinear(image: F32, x: F64, y: F64) -> F32:
    """Sample ``image`` (h, w, C) float32 at texel coordinates x, y (N,) float64 -> (N, C) float32.

    Plain float bilinear interpolation with mirrored borders. Not cv2.remap: it rounds coordinates to
    1/32 texel, an error that would differ between the two views.
    """
    h, w, c = image.shape
    x0f = np.floor(x)
    y0f = np.floor(y)
    fx = (x - x0f).astype(np.float32)
    fy = (y - y0f).astype(np.float32)
    x0 = x0f.astype(np.int64)
    y0 = y0f.astype(np.int64)
    ix0, ix1 = _reflect_index(x0, w), _reflect_index(x0 + 1, w)
    iy0, iy1 = _reflect_index(y0, h) * w, _reflect_index(y0 + 1, h) * w
    # np.take on the texels: the same values as fancy indexing without its overhead per row. One channel (a
    # gray texture, a blob's field) stays 1-D until the end: the same arithmetic as on (N, 1), faster.
    flat = image.reshape(h * w) if c == 1 else image.reshape(h * w, c)
    if c != 1:
        fx, fy = fx[:, None], fy[:, None]
    top = np.take(flat, iy0 + ix0, axis=0) * (1 - fx) + np.take(flat, iy0 + ix1, axis=0) * fx
    bottom = np.take(flat, iy1 + ix0, axis=0) * (1 - fx) + np.take(flat, iy1 + ix1, axis=0) * fx
    out: F32 = top * (1 - fy) + bottom * fy
    return out.reshape(-1, c)


def _fbm(rng: np.random.Generator, size: int, base: int, persistence: float) -> F32:
    """Fractal noise tile (size, size, 1) float32 in [0, 1]: octaves of bicubically upsampled noise."""
    acc = np.zeros((size, size), np.float32)
    amp = 1.0
    cells = base
    while cells <= size // 2:
        grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        acc += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        amp *= persistence
        cells *= 2
    acc -= acc.min()
    acc /= max(float(acc.max()), 1e-6)
    return acc[:, :, None]


@dataclass(frozen=True)
class _Texture:
    """A texture on a layer, sampled at texture-plane coordinates (u, v) in output pixels.

    kind 'photo', 'fbm', 'flat': ``image`` sampled at (u, v) / texel_size + offset; 'flat' is a low-amplitude
    fBm. 'stripes', 'checker', 'gradient': closed-form patterns. Procedural patterns p in [0, 1] become
    colour ``low + (high - low) p``; photos become ``contrast * image + brightness``, times ``tint``.
    """

    kind: str
    low: F32  # (C,) grey levels
    high: F32  # (C,)
    image: F32 | None = None  # (h, w, C) float32
    texel_size: float = 1.0  # output pixels per texel of ``image``
    offset: tuple[float, float] = (0.0, 0.0)  # texel coordinates of the layer's anchor
    period: float = 8.0  # stripes / checker period, pixels
    sharpness: float = 1.0  # tanh gain of stripes / checker edges; bounded so an edge spans >= ~1.4 px
    contrast: float = 1.0
    brightness: float = 0.0
    tint: F32 | None = None  # (C,)

    def sample(self, u: F64, v: F64) -> F32:
        """Colour at (u, v) (N,) float64 pixels -> (N, C) float32 grey levels (unclipped)."""
        if self.image is not None:
            texel = _bilinear(self.image, u / self.texel_size + self.offset[0], v / self.texel_size + self.offset[1])
            if self.kind == 'photo':
                out: F32 = texel * np.float32(self.contrast) + np.float32(self.brightness)
                return out * self.tint if self.tint is not None else out
            return self.low + (self.high - self.low) * texel
        omega = 2 * math.pi / self.period
        if self.kind == 'stripes':
            p = np.tanh(self.sharpness * np.sin(omega * u)) / math.tanh(self.sharpness)
        elif self.kind == 'checker':
            p = np.tanh(self.sharpness * np.sin(omega * u) * np.sin(omega * v)) / math.tanh(self.sharpness)
        else:  # gradient: one smooth ramp across ``period`` pixels
            p = np.tanh(u / self.period)
        p32 = (0.5 + 0.5 * p).astype(np.float32)[:, None]
        return self.low + (self.high - self.low) * p32


def _random_color(rng: np.random.Generator, channels: int, level: float) -> F32:
    """A colour (C,) around grey level ``level``: saturated enough to differ per channel in RGB."""
    if channels == 1:
        return np.array([level], np.float32)
    hue = rng.uniform(0.6, 1.4, size=3)
    color: F32 = np.clip(level * hue / hue.mean(), 0, 255).astype(np.float32)
    return color


def _draw_texture(rng: np.random.Generator, cfg: SyntheticConfig, flat: bool) -> _Texture:
    c = cfg.channels
    lo_level = rng.uniform(0, 200)
    hi_level = lo_level + rng.uniform(20, 255 - lo_level) if lo_level < 235 else 255.0
    low, high = _random_color(rng, c, lo_level), _random_color(rng, c, hi_level)
    if rng.random() < 0.5:
        low, high = high, low  # dark-on-bright as often as bright-on-dark
    if flat:
        # Near-textureless: +-1..2 grey levels of smooth noise, so a matcher sees (almost) nothing.
        amp = rng.uniform(0.5, 2.0)
        base = _random_color(rng, c, rng.uniform(20, 235))
        tile = _fbm(rng, _FBM_TILE // 2, 2, 0.5)
        return _Texture('flat', base - amp, base + amp, image=tile, texel_size=rng.uniform(2.0, 6.0),
                        offset=(rng.uniform(0, 128), rng.uniform(0, 128)))
    weights = np.asarray(cfg.texture_weights, np.float64)
    kind = TEXTURE_KINDS[int(rng.choice(len(TEXTURE_KINDS), p=weights / weights.sum()))]
    photos = _photo_mips(c, cfg.extra_photos) if kind == 'photo' else ()
    if kind == 'photo' and photos:
        levels = photos[int(rng.integers(len(photos)))]
        lo_s, hi_s = cfg.texture_scale_range
        scale = math.exp(rng.uniform(math.log(lo_s), math.log(hi_s)))  # output px per photo px
        level = 0
        while scale < 1.0 and level + 1 < len(levels):  # minification: use a prefiltered level
            scale *= 2.0
            level += 1
        image = levels[level]
        tint = None
        if c == 3 and (image.shape[2] == 1 or rng.random() < 0.3):
            tint = rng.uniform(0.6, 1.3, size=3).astype(np.float32)
        if image.shape[2] != c:
            image = np.repeat(image, c, axis=2)
        return _Texture('photo', low, high, image=image, texel_size=scale,
                        offset=(rng.uniform(0, image.shape[1]), rng.uniform(0, image.shape[0])),
                        contrast=rng.uniform(0.6, 1.2), brightness=rng.normal(0.0, 20.0), tint=tint)
    if kind in ('photo', 'fbm'):  # 'photo' lands here only when no photo could be loaded
        # Persistence 0.55-0.85 keeps texel-scale detail visible over the coarse octaves.
        tile = _fbm(rng, _FBM_TILE, int(rng.integers(2, 9)), rng.uniform(0.55, 0.85))
        return _Texture('fbm', low, high, image=tile, texel_size=rng.uniform(1.0, 4.0),
                        offset=(rng.uniform(0, _FBM_TILE), rng.uniform(0, _FBM_TILE)))
    if kind == 'gradient':
        return _Texture('gradient', low, high, period=_log_uniform(rng, 4.0, 60.0))
    period = math.exp(rng.uniform(math.log(4.0), math.log(48.0)))
    # Edge slope of tanh(k sin(2 pi u / P)) is k 2 pi / P per pixel; <= 0.7 keeps edges >= ~1.4 px wide
    # in the left view and still > 1 px where the right view squeezes the surface.
    sharpness = min(rng.uniform(0.5, 4.0), 0.7 * period / (2 * math.pi))
    return _Texture(kind, low, high, period=period, sharpness=max(sharpness, 0.3))


@dataclass(frozen=True)
class _Palette:
    """A scene whose layers' mean levels lie near one level (``SyntheticConfig.palette_probability``)."""

    level: float  # grey levels
    spread: float  # std of a layer's mean level about ``level``, grey levels
    rng: np.random.Generator  # the palette's own stream: one draw per layer, in drawing order

    def recolour(self, texture: _Texture) -> _Texture:
        """``texture`` shifted so its mean level is this scene's level plus the layer's own draw; its
        pattern, amplitude and contrast are kept."""
        target = float(np.clip(self.rng.normal(self.level, self.spread), 16.0, 239.0))
        if texture.kind == 'photo':  # contrast * image + brightness (times tint): set the brightness
            assert texture.image is not None
            gain = float(np.mean(texture.tint)) if texture.tint is not None else 1.0
            brightness = target / gain - texture.contrast * float(texture.image.mean())
            return replace(texture, brightness=brightness)
        shift = np.float32(target - 0.5 * float(np.mean(texture.low + texture.high)))
        return replace(texture, low=texture.low + shift, high=texture.high + shift)


def _draw_palette(cfg: SyntheticConfig, seed: int, index: int) -> _Palette | None:
    """Sample (seed, index)'s palette, or None: from its own child stream of the sample's seed, so the
    scene stream draws the same with the palette on or off."""
    if cfg.palette_probability <= 0:
        return None
    r = _rig_stream(seed, index, _PALETTE_STREAM)
    if r.random() >= cfg.palette_probability:
        return None
    return _Palette(level=float(r.uniform(48.0, 208.0)), spread=cfg.palette_spread, rng=r)


# --------------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class _Surface:
    """Disparity of a layer over the left view: ``c + a (x - cx) + b (y - cy) + h g(x, y)``, pixels.

    ``g = exp(-((x - bx)^2 + (y - by)^2) / (2 sigma^2))`` (h = 0: a plane). Invariant: |dd/dx| < 1.
    """

    c: float
    a: float
    b: float
    cx: float
    cy: float
    h: float = 0.0
    bx: float = 0.0
    by: float = 0.0
    sigma: float = 1.0

    def _bump(self, x: F64, y: F64) -> F64:
        out: F64 = np.exp(-((x - self.bx) ** 2 + (y - self.by) ** 2) / (2.0 * self.sigma**2))
        return out

    def disparity(self, x: F64, y: F64) -> F64:
        """d at left-view points (x, y) (broadcastable float64 arrays), pixels."""
        d: F64 = self.c + self.a * (x - self.cx) + self.b * (y - self.cy)
        if self.h != 0.0:
            d = d + self.h * self._bump(x, y)
        return d

    def slopes(self, x: F64, y: F64) -> tuple[F64, F64]:
        """(dd/dx, dd/dy) at (x, y), dimensionless."""
        gx = np.full(np.broadcast(x, y).shape, self.a)
        gy = np.full(gx.shape, self.b)
        if self.h != 0.0:
            g = self.h * self._bump(x, y) / self.sigma**2
            gx = gx - g * (x - self.bx)
            gy = gy - g * (y - self.by)
        return gx, gy

    def left_x(self, x_r: F64, y: F64) -> F64:
        """Solve ``x_r = x_L - d(x_L, y)`` for x_L: the left-view point seen at right-view (x_r, y)."""
        # Plane: x_r = x_L (1 - a) - c + a cx - b (y - cy), solved exactly.
        x_l: F64 = (x_r + self.c - self.a * self.cx + self.b * (y - self.cy)) / (1.0 - self.a)
        if self.h != 0.0:
            # Newton on f(x) = x - d(x) - x_r with f' = 1 - dd/dx in [0.4, 1.6]: a monotone function with
            # bounded slope, started at the plane's answer (off by <= |h| / 0.4); 8 steps reach ~1e-12 px.
            x_l = np.broadcast_to(x_l, np.broadcast(x_r, y).shape).copy()
            for _ in range(8):
                d, d_dx = self._disparity_and_x_slope(x_l, y)
                f = x_l - d - x_r
                x_l -= f / (1.0 - d_dx)
        return x_l

    def _disparity_and_x_slope(self, x: F64, y: F64) -> tuple[F64, F64]:
        """``disparity(x, y)`` and ``slopes(x, y)[0]`` from one evaluation of the bump (the same arithmetic,
        so the same values): Newton needs both at every step, and the exponential was half its cost."""
        bump = self._bump(x, y)
        d: F64 = self.c + self.a * (x - self.cx) + self.b * (y - self.cy)
        d = d + self.h * bump
        g = self.h * bump / self.sigma**2
        d_dx: F64 = self.a - g * (x - self.bx)
        return d, d_dx


@dataclass(frozen=True)
class _Shape:
    """An outline in object coordinates (u, v), pixels; ``radius`` bounds it (|(u, v)| <= radius)."""

    kind: str  # 'full' or one of SHAPE_KINDS
    radius: float
    params: tuple[float, ...] = ()
    vertices: F64 | None = None  # polygon: (n, 3) angle, x, y, counter-clockwise
    field: F32 | None = None  # blob: (n, n, 1) smooth noise over [-radius, radius]^2

    def inside(self, u: F64, v: F64) -> Mask:
        """Point-sampled coverage at (u, v) (same shape arrays) -> bool array of that shape."""
        p = self.params
        if self.kind == 'full':
            return np.ones(np.broadcast(u, v).shape, np.bool_)
        if self.kind == 'superellipse':
            rx, ry, power = p
            out: Mask = np.abs(u / rx) ** power + np.abs(v / ry) ** power <= 1.0
            return out
        if self.kind == 'ring':
            r_in, r_out, squash = p
            rho = np.hypot(u, v / squash)
            out = (rho >= r_in) & (rho <= r_out)
            return out
        if self.kind == 'bar':
            # half length, half width; fences repeat the bar every ``pitch`` across a half-height;
            # grids add crossing bars along u with the same pitch.
            half_len, half_w, pitch, half_h, grid = p
            out = (np.abs(u) <= half_len) & (np.abs(v) <= max(half_h, half_w))
            if pitch <= 0:
                return out & (np.abs(v) <= half_w)
            across = np.abs(np.mod(v, pitch) - 0.5 * pitch) >= 0.5 * pitch - half_w
            if grid > 0:
                across |= np.abs(np.mod(u, pitch) - 0.5 * pitch) >= 0.5 * pitch - half_w
            return out & across
        if self.kind == 'polygon':
            assert self.vertices is not None
            angles, vx, vy = self.vertices[:, 0], self.vertices[:, 1], self.vertices[:, 2]
            theta = np.mod(np.arctan2(v, u), 2 * math.pi)
            # Star-shaped around the origin with each wedge < pi: a point in wedge k is inside iff it
            # lies left of the edge from vertex k to vertex k + 1. Edges per vertex first, then one np.take
            # per term (mode 'wrap' maps wedge -1 to the last, as % n did): the values of per-point fancy
            # indexing, at a fraction of its cost.
            k = np.searchsorted(angles, theta, side='right') - 1
            following = (np.arange(len(angles)) + 1) % len(angles)
            edge_x, edge_y = vx[following] - vx, vy[following] - vy
            ex, ey = np.take(edge_x, k, mode='wrap'), np.take(edge_y, k, mode='wrap')
            out = ex * (v - np.take(vy, k, mode='wrap')) - ey * (u - np.take(vx, k, mode='wrap')) >= 0
            return out
        assert self.kind == 'blob' and self.field is not None
        r = self.radius
        n = self.field.shape[0]
        flat_u, flat_v = u.ravel(), v.ravel()
        rho2 = (flat_u**2 + flat_v**2) / r**2
        # The noise is read only inside the disc (rho2 <= 1), where the outline can be: a fifth or more of a
        # box's points (its corners, more when rotated) need no bilinear read.
        disc = np.flatnonzero(rho2 <= 1.0)
        fu, fv, fr = flat_u[disc], flat_v[disc], rho2[disc]
        noise = _bilinear(self.field, (fu / r + 1) * 0.5 * (n - 1), (fv / r + 1) * 0.5 * (n - 1))
        out = np.zeros(flat_u.shape, np.bool_)
        out[disc] = noise[:, 0] + 1.0 - 2.0 * fr > 0
        return out.reshape(np.broadcast(u, v).shape)


@dataclass(frozen=True)
class _Layer:
    """A textured surface. (cx, cy) anchors shape and texture; (rx, ry) half-size of its left-view box."""

    surface: _Surface
    shape: _Shape
    texture: _Texture
    info: LayerInfo
    cx: float
    cy: float
    rx: float
    ry: float
    cos_t: float  # shape rotation
    sin_t: float
    cos_p: float  # texture rotation (independent of the outline)
    sin_p: float
    shade: tuple[float, float, float]  # (gain along x, gain along y, gain along the surface slope)
    d_low: float  # disparity bounds over the box, pixels (a layer behind others may dip below d_min)
    d_high: float

    def inside(self, x_l: F64, y: F64) -> Mask:
        dx, dy = x_l - self.cx, y - self.cy
        return self.shape.inside(self.cos_t * dx + self.sin_t * dy, -self.sin_t * dx + self.cos_t * dy)

    def color(self, x_l: F64, y: F64) -> F32:
        """Shaded colour at left-view points (N,) -> (N, C) float32; a function of (x_L, y) only, so both
        views see the same surface colour (Lambertian, no view-dependent light)."""
        dx, dy = x_l - self.cx, y - self.cy
        rgb = self.texture.sample(self.cos_p * dx + self.sin_p * dy, -self.sin_p * dx + self.cos_p * dy)
        gx, gy = self.surface.slopes(x_l, y)
        sx, sy, sn = self.shade
        shade = 1.0 + sx * dx / max(self.rx, 50.0) + sy * dy / max(self.ry, 50.0) + sn * (gx + 0.5 * gy)
        return rgb * np.clip(shade, 0.35, 1.65).astype(np.float32)[:, None]


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _fit_plane(c: float, a: float, b: float, bump: float, rx: float, ry: float,
               d_min: float, d_max: float) -> tuple[float, float, float, float]:
    """Shrink slopes and bump and move c so ``d`` stays in [d_min, d_max] over a (2rx, 2ry) box.

    Over the box, ``d`` lies in [c - r + min(h, 0), c + r + max(h, 0)] with ``r = |a| rx + |b| ry``.
    Returns (c, a, b, h).
    """
    span = d_max - d_min
    need = 2 * (abs(a) * rx + abs(b) * ry) + abs(bump)
    if need > 0.98 * span:
        k = 0.98 * span / need
        a, b, bump = a * k, b * k, bump * k
    r = abs(a) * rx + abs(b) * ry
    c = min(max(c, d_min + r - min(bump, 0.0)), d_max - r - max(bump, 0.0))
    return c, a, b, bump


def _draw_shape(rng: np.random.Generator, cfg: SyntheticConfig, radius: float) -> tuple[_Shape, str]:
    weights = np.asarray(cfg.shape_weights, np.float64)
    kind = SHAPE_KINDS[int(rng.choice(len(SHAPE_KINDS), p=weights / weights.sum()))]
    if kind == 'superellipse':
        rx, ry = radius, radius * rng.uniform(0.25, 1.0)
        return _Shape(kind, math.hypot(rx, ry), (rx, ry, _log_uniform(rng, 0.6, 4.0))), kind
    if kind == 'ring':
        r_in = radius * rng.uniform(0.35, 0.9)
        r_in = min(r_in, radius - 1.5)  # rings at least 1.5 px thick
        return _Shape(kind, radius, (max(r_in, 0.0), radius, rng.uniform(0.5, 1.0))), kind
    if kind == 'bar':
        # Widths >= 1 px: a band that wide holds a pixel centre in every row and column it crosses, so a
        # bar never breaks into dots (outlines are point-sampled).
        half_w = 0.5 * _log_uniform(rng, 1.0, 8.0)
        half_len = radius
        pitch, half_h, grid = 0.0, 0.0, 0.0
        if rng.random() < 0.4:  # fence: parallel bars (thin AND repetitive)
            pitch = max(rng.uniform(3.0, 10.0) * half_w * 2, 4.0)
            half_h = radius * rng.uniform(0.3, 1.0)
            grid = float(rng.random() < 0.4)
        bound = math.hypot(half_len, max(half_h, half_w))
        return _Shape(kind, bound, (half_len, half_w, pitch, half_h, grid)), kind
    if kind == 'polygon':
        n = int(rng.integers(3, 10))
        # Jitter <= 0.2 of the even spacing keeps every wedge < pi (n >= 3), as the inside test needs.
        angles = np.sort(np.mod((np.arange(n) + rng.uniform(-0.2, 0.2, n)) * 2 * math.pi / n
                                + rng.uniform(0, 2 * math.pi), 2 * math.pi))
        radii = radius * (rng.uniform(0.35, 1.0, n) if rng.random() < 0.5 else rng.uniform(0.85, 1.0, n))
        verts = np.stack([angles, radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        return _Shape(kind, radius, (), vertices=verts), kind
    cells = int(rng.integers(4, 9))
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = np.asarray(cv2.resize(coarse, (64, 64), interpolation=cv2.INTER_CUBIC), np.float32)[:, :, None]
    return _Shape('blob', radius, (), field=field), 'blob'


def _draw_scene(rng: np.random.Generator, cfg: SyntheticConfig, h_img: float, w_img: float,
                d_scale: float = 1.0, palette: _Palette | None = None) -> tuple[list[_Layer], float, float]:
    """Background layer(s) then objects, all fitted inside the sample's [d_min, d_max].

    The scene spans an ``h_img x w_img`` frame of scene pixels; d_min, d_max are drawn in output pixels
    (as the config states them) and become ``d_scale`` times that in scene pixels (1 / fx when the views
    are resampled by fx afterwards). Returns (layers, d_min, d_max), the range in scene pixels.
    """
    if rng.random() < cfg.overshoot_probability:
        d_max = cfg.max_disparity * rng.uniform(*cfg.overshoot_range)
    else:
        d_max = _log_uniform(rng, *cfg.disparity_range)
    d_min = rng.uniform(0.0, cfg.min_disparity_fraction * d_max)
    if d_scale != 1.0:
        d_min, d_max = d_min * d_scale, d_max * d_scale
    span = d_max - d_min
    s = cfg.max_slant

    def layer(surface: _Surface, shape: _Shape, name: str, cx: float, cy: float, rx: float, ry: float,
              bump: float = 0.0) -> _Layer:
        theta = rng.uniform(0, 2 * math.pi)
        phi = rng.uniform(0, 2 * math.pi)
        texture = _draw_texture(rng, cfg, flat=rng.random() < cfg.flat_probability)
        if palette is not None:
            texture = palette.recolour(texture)
        k = cfg.shading_strength
        shade = (rng.normal(0, k / 2), rng.normal(0, k / 2), rng.normal(0, 2 * k))
        r = abs(surface.a) * rx + abs(surface.b) * ry
        info = LayerInfo(name, texture.kind, bump != 0.0)
        return _Layer(surface, shape, texture, info, cx, cy, rx, ry, math.cos(theta), math.sin(theta),
                      math.cos(phi), math.sin(phi), shade, surface.c - r + min(bump, 0.0),
                      surface.c + r + max(bump, 0.0))

    layers: list[_Layer] = []
    # The background box spans the left image plus what only the right camera sees (x_L up to W + d_max).
    bx, by = 0.5 * (w_img + d_max), 0.5 * h_img
    brx, bry = bx + 1.0, by + 1.0
    full = _Shape('full', math.inf)
    far = d_min + rng.uniform(0.0, 0.3) * span
    if rng.random() < cfg.floor_wall_probability:
        # A wall (nearly fronto-parallel) and a floor rising from the horizon row towards the camera.
        # They share the x-slope, so they meet along a horizontal line, and z-buffering draws it.
        a = rng.uniform(-0.05, 0.05) * min(1.0, s / 0.05)
        c, a, b, _ = _fit_plane(far, a, rng.uniform(-0.02, 0.02), 0.0, brx, bry, d_min, d_min + 0.5 * span)
        wall = _Surface(c, a, b, bx, by)
        horizon = rng.uniform(0.15, 0.75) * h_img
        top = c + abs(a) * brx + abs(b) * bry  # the wall's highest disparity in the box
        # floor(x, y) = wall(x, y) + b_floor (y - horizon): equal on the horizon, nearer below it, and at
        # most top + b_floor (H + 1 - horizon) <= d_max over the box.
        b_floor = min(rng.uniform(0.05, 1.0) * s, (d_max - top) / (h_img + 1.0 - horizon))
        b_floor = max(b_floor, 0.0)
        floor = _Surface(c + b_floor * (by - horizon), a, b + b_floor, bx, by)
        layers.append(layer(wall, full, 'wall', bx, by, brx, bry))
        layers.append(layer(floor, full, 'floor', bx, by, brx, bry))
    else:
        c, a, b, _ = _fit_plane(far, rng.uniform(-s, s), rng.uniform(-s, s), 0.0, brx, bry, d_min, d_max)
        layers.append(layer(_Surface(c, a, b, bx, by), full, 'background', bx, by, brx, bry))

    n_background = len(layers)
    n_objects = int(rng.integers(cfg.n_layers[0], cfg.n_layers[1] + 1))
    size_hi = 0.4 * max(h_img, w_img)
    for _ in range(n_objects):
        radius = _log_uniform(rng, min(8.0, size_hi), size_hi)
        shape, kind = _draw_shape(rng, cfg, radius)
        # Centres over the left view plus a strip only the right view sees (x_L in [W, W + d)).
        cx = rng.uniform(-0.1 * w_img, 1.05 * w_img + 0.5 * (d_min + d_max))
        cy = rng.uniform(-0.1 * h_img, 1.1 * h_img)
        # In front of the background at the centre, so few objects are drawn only to be hidden.
        behind = max(lay.surface.disparity(np.array(cx), np.array(cy)).item() for lay in layers[:n_background])
        c = rng.uniform(min(max(behind, d_min), d_max), d_max)
        r = shape.radius
        a, b = rng.uniform(-s, s), rng.uniform(-s, s)
        curved = rng.random() < cfg.curved_probability
        bump, bump_x, bump_y, sigma = 0.0, cx, cy, 1.0
        if curved:
            sigma = radius * rng.uniform(0.3, 1.0)
            # max |d/dx of h g| = |h| e^-1/2 / sigma: keep |a| + that <= _MAX_CURVED_SLOPE.
            a = float(np.clip(a, -0.5 * _MAX_CURVED_SLOPE, 0.5 * _MAX_CURVED_SLOPE))
            room = (_MAX_CURVED_SLOPE - abs(a)) * sigma / math.exp(-0.5)
            bump = (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(0.3, 1.0) * min(room, 0.5 * span)
            bump_x, bump_y = cx + rng.uniform(-0.5, 0.5) * radius, cy + rng.uniform(-0.5, 0.5) * radius
        c, a, b, bump = _fit_plane(c, a, b, bump, r, r, d_min, d_max)
        surface = _Surface(c, a, b, cx, cy, bump, bump_x, bump_y, sigma)
        layers.append(layer(surface, shape, kind, cx, cy, r, r, bump))
    return layers, d_min, d_max


# --------------------------------------------------------------------------------------------------
# Rendering


def _box(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Integer pixel range [start, stop) of pixel centres inside [lo, hi], clipped to [0, size)."""
    start = max(math.ceil(lo), 0) if math.isfinite(lo) else 0
    stop = min(math.floor(hi) + 1, size) if math.isfinite(hi) else size
    return start, max(stop, start)


def _render_view(layers: list[_Layer], height: int, width: int, channels: int, right: bool,
                 origin: tuple[float, float] = (0, 0), colour: bool = True) -> tuple[F32, F64, I16]:
    """Z-buffer render of one view -> image (H, W, C) float32, disparity (H, W) float64, layer ids (H, W).

    Pixel (row i, column j) shows the scene point ``(j + origin[0], i + origin[1])`` of that view.
    ``colour=False`` leaves the image black: the labels alone (supersampling colours other points).
    """
    ox, oy = origin
    best_d = np.full((height, width), -np.inf)
    best_id = np.full((height, width), -1, np.int16)
    best_xl = np.zeros((height, width))
    for i, lay in enumerate(layers):
        y0, y1 = _box(lay.cy - lay.ry - oy, lay.cy + lay.ry - oy, height)
        if right:  # the box moves left by d in the right view: x_R = x_L - d
            x0, x1 = _box(lay.cx - lay.rx - lay.d_high - ox, lay.cx + lay.rx - lay.d_low - ox, width)
        else:
            x0, x1 = _box(lay.cx - lay.rx - ox, lay.cx + lay.rx - ox, width)
        if y0 >= y1 or x0 >= x1:
            continue
        ys = np.arange(y0 + oy, y1 + oy, dtype=np.float64)[:, None]
        xs = np.arange(x0 + ox, x1 + ox, dtype=np.float64)[None, :]
        x_l = lay.surface.left_x(xs, ys) if right else np.broadcast_to(xs, (y1 - y0, x1 - x0))
        d = lay.surface.disparity(x_l, ys)
        win = lay.inside(x_l, ys) & (d > best_d[y0:y1, x0:x1])
        # copyto's where: no index arrays built and gathered, as boolean-mask assignment does
        np.copyto(best_d[y0:y1, x0:x1], d, where=win)
        np.copyto(best_id[y0:y1, x0:x1], np.int16(i), where=win)
        np.copyto(best_xl[y0:y1, x0:x1], x_l, where=win)
    image = np.zeros((height, width, channels), np.float32)
    if colour:
        # Every layer's pixels in row-major order, from one stable sort of the ids rather than a compare and a
        # nonzero over the whole frame per layer (the same points in the same order: the same colours).
        flat_ids = best_id.ravel()
        order = np.argsort(flat_ids, kind='stable')
        bounds = np.searchsorted(flat_ids[order], np.arange(len(layers) + 1))
        for i, lay in enumerate(layers):
            pixels = order[bounds[i]:bounds[i + 1]]
            if pixels.size:
                rows, cols = np.divmod(pixels, width)
                image[rows, cols] = lay.color(best_xl[rows, cols], (rows + oy).astype(np.float64))
    return image, best_d, best_id


def _render_image(layers: list[_Layer], height: int, width: int, channels: int, right: bool,
                  origin: tuple[float, float], supersample: int) -> F32:
    """The image of ``_render_view(layers, height, width, channels, right, origin)``, each pixel the mean of
    ``supersample`` x ``supersample`` scene points at offsets ``(k + 0.5) / s - 0.5`` from its centre."""
    offsets = [(k + 0.5) / supersample - 0.5 for k in range(supersample)]
    total = np.zeros((height, width, channels), np.float64)
    for dy in offsets:
        for dx in offsets:
            total += _render_view(layers, height, width, channels, right, (origin[0] + dx, origin[1] + dy))[0]
    return (total / supersample**2).astype(np.float32)


def _occlusion(layers: list[_Layer], disp: F64, ids: I16, width: int, right: bool,
               origin: tuple[int, int] = (0, 0), frame: tuple[float, float] | None = None) -> Mask:
    """Occlusion of one view's pixels, tested analytically against every other layer in the other view.

    Left view (right=False): the point (x - D_L, y) in the right view is hidden iff a layer covers it there
    with disparity > D_L. Right view: the point (x + D_R, y) in the left view, likewise. Pixels are placed
    in the scene as in ``_render_view(..., origin)``. Correspondences out of the other image's ``frame``
    = (lo, hi), scene x (default (0, width - 1)), count as occluded: x < lo for the left view, x > hi for
    the right.
    """
    ox, oy = origin
    height = disp.shape[0]
    cols = np.arange(ox, width + ox, dtype=np.float64)[None, :]
    target = cols + disp if right else cols - disp  # (H, W) the corresponding x in the other view
    first, last = (0, width - 1) if frame is None else frame
    occluded = (target > last) if right else (target < first)
    finite = disp[np.isfinite(disp)]
    d_lo, d_hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    for i, lay in enumerate(layers):
        y0, y1 = _box(lay.cy - lay.ry - oy, lay.cy + lay.ry - oy, height)
        if right:
            lo, hi = lay.cx - lay.rx, lay.cx + lay.rx
        else:
            lo, hi = lay.cx - lay.rx - lay.d_high, lay.cx + lay.rx - lay.d_low
        # Only columns whose target can reach [lo, hi]: x -+ D in it needs x in [lo +- D, hi +- D] for some
        # D in [d_lo, d_hi] (a pixel of margin for rounding; the test below decides, so nothing changes).
        reach = (lo - d_hi, hi - d_lo) if right else (lo + d_lo, hi + d_hi)
        x0, x1 = _box(reach[0] - ox - 1.0, reach[1] - ox + 1.0, width)
        if y0 >= y1 or x0 >= x1:
            continue
        t = target[y0:y1, x0:x1]
        # Only a pixel nearer than this layer's farthest reach can be hidden by it: the layer's disparity is at
        # most d_high, and hiding needs more than d_here (a pixel of margin: a superset of the hidden ones).
        pick = ((t >= lo) & (t <= hi) & (disp[y0:y1, x0:x1] < lay.d_high + 1.0) & (ids[y0:y1, x0:x1] != i)
                & ~occluded[y0:y1, x0:x1])
        rows, cc = np.nonzero(pick)
        if not rows.size:
            continue
        ys = (rows + y0 + oy).astype(np.float64)
        x_other = t[rows, cc]
        x_l = x_other if right else lay.surface.left_x(x_other, ys)
        d_here = disp[rows + y0, cc + x0]
        # Nearer first (a plane's few flops), then the outline only there (a polygon's arctan2, a blob's reads).
        nearer = np.flatnonzero(lay.surface.disparity(x_l, ys) > d_here + _OCCLUSION_EPS * (1 + d_here))
        hidden = nearer[lay.inside(x_l[nearer], ys[nearer])]
        occluded[rows[hidden] + y0, cc[hidden] + x0] = True
    return occluded


def _camera(rng: np.random.Generator, cfg: SyntheticConfig, image: F32,
            levels: tuple[float, float] = (1.0, 0.0)) -> F32:
    """One view's camera effects: blur, gain, gamma, (contrast, brightness) = ``levels``, per-channel gain,
    noise, 8 bits, JPEG. (H, W, C) float32 in 0..255 -> same shape.

    Every effect is drawn per view, independently, so the two views differ in exposure and colour as two
    real cameras do (auto-exposure per camera, unequal sensor gains). ``levels`` come from ``_draw_rig``.
    """
    out = np.clip(image, 0, 255)
    if rng.random() < cfg.blur_probability:
        sigma = rng.uniform(*cfg.blur_sigma_range)
        out = np.asarray(cv2.GaussianBlur(out, (0, 0), sigmaX=sigma, sigmaY=sigma), np.float32).reshape(out.shape)
    gain = rng.uniform(*cfg.gain_range) if rng.random() < cfg.gain_probability else 1.0
    gamma = rng.uniform(*cfg.gamma_range) if rng.random() < cfg.gamma_probability else 1.0
    out = 255.0 * np.clip(out * np.float32(gain / 255.0), 0, 1) ** np.float32(gamma)
    if levels != (1.0, 0.0):
        out = adjust_levels(out, *levels)
    if cfg.channels == 3 and rng.random() < cfg.color_jitter_probability:
        out = out * (1 + rng.uniform(-cfg.color_jitter, cfg.color_jitter, 3)).astype(np.float32)
    if rng.random() < cfg.noise_probability:
        std = rng.uniform(*cfg.noise_std_range)
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(std)
    out = np.clip(out, 0, 255).astype(np.float32)
    if cfg.quantize:
        out = np.round(out)
    if rng.random() < cfg.jpeg_probability:
        quality = int(rng.integers(cfg.jpeg_quality_range[0], cfg.jpeg_quality_range[1] + 1))
        u8 = out.round().astype(np.uint8)
        # cv2 codes colour as BGR: swap so JPEG's luma/chroma split weighs our RGB channels correctly.
        u8 = u8[:, :, 0] if cfg.channels == 1 else cv2.cvtColor(u8, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode('.jpg', u8, [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if cfg.channels == 1 else cv2.IMREAD_COLOR) if ok else None
        if decoded is not None:  # cv2 cannot fail on a valid uint8 image; keep the un-JPEG'd view if it did
            if cfg.channels == 3:
                decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
            out = np.asarray(decoded, np.float32).reshape(out.shape)
    return out


def _rig_stream(seed: int, index: int, k: int) -> np.random.Generator:
    """Random stream of real-rig augmentation ``k`` for sample (seed, index): a child of the scene's seed
    sequence, so it never overlaps ``default_rng([seed, index])`` nor another augmentation's stream."""
    return np.random.default_rng(np.random.SeedSequence([seed, index], spawn_key=(k,)))


def _draw_rig(cfg: SyntheticConfig, seed: int, index: int) -> RigAugmentation:
    """The real-rig augmentations of sample (seed, index), each from its own stream (one switched on or
    off leaves the others' draws alone). Levels are drawn only with ``photometric`` on."""
    h, w = cfg.height, cfg.width
    scale = (1.0, 1.0)
    if cfg.scale_probability > 0:
        r = _rig_stream(seed, index, 0)
        if r.random() < cfg.scale_probability:
            s = _log_uniform(r, *cfg.scale_range)
            aspect = math.sqrt(_log_uniform(r, *cfg.stretch_range))
            scale = (s * aspect, s / aspect)
    shift = rotation = 0.0
    if cfg.misrectify_probability > 0:
        r = _rig_stream(seed, index, 1)
        if r.random() < cfg.misrectify_probability:
            shift = float(r.uniform(-cfg.misrectify_shift, cfg.misrectify_shift))
            rotation = float(r.uniform(-cfg.misrectify_rotation, cfg.misrectify_rotation))
    boxes: list[Box] = []
    sources: list[tuple[int, int] | None] = []
    if cfg.eraser_probability > 0:
        r = _rig_stream(seed, index, 2)
        if r.random() < cfg.eraser_probability:
            for _ in range(int(r.integers(cfg.eraser_boxes[0], cfg.eraser_boxes[1] + 1))):
                bw = min(max(round(r.uniform(*cfg.eraser_size_range)), 1), w)
                bh = min(max(round(r.uniform(*cfg.eraser_size_range)), 1), h)
                boxes.append((int(r.integers(0, w - bw + 1)), int(r.integers(0, h - bh + 1)), bw, bh))
                texture = r.random() < cfg.eraser_texture_probability
                sources.append((int(r.integers(0, w - bw + 1)), int(r.integers(0, h - bh + 1))) if texture else None)
    levels = ((1.0, 0.0), (1.0, 0.0))
    if cfg.photometric and (cfg.contrast_probability > 0 or cfg.brightness_probability > 0):
        r = _rig_stream(seed, index, 3)

        def view_levels() -> tuple[float, float]:
            contrast = float(r.uniform(*cfg.contrast_range)) if r.random() < cfg.contrast_probability else 1.0
            brightness = float(r.uniform(*cfg.brightness_range)) if r.random() < cfg.brightness_probability else 0.0
            return contrast, brightness

        levels = (view_levels(), view_levels())
    return RigAugmentation(scale, shift, rotation, tuple(boxes), tuple(sources), levels)


@dataclass(frozen=True)
class _Views:
    """Both views of a scene before camera effects, in output pixels (see ``StereoSample``)."""

    left: F32
    right: F32
    disp_left: F64
    disp_right: F64
    layer_left: I16
    layer_right: I16
    occluded_left: Mask
    occluded_right: Mask


def _render_views(layers: list[_Layer], cfg: SyntheticConfig) -> _Views:
    """Both views rendered straight in the output frame (no real-rig geometry)."""
    h, w, c = cfg.height, cfg.width, cfg.channels
    centre = cfg.supersample == 1  # else the labels' render needs no colour
    left, disp_l, ids_l = _render_view(layers, h, w, c, right=False, colour=centre)
    right, disp_r, ids_r = _render_view(layers, h, w, c, right=True, colour=centre)
    if cfg.supersample > 1:
        left = _render_image(layers, h, w, c, False, (0, 0), cfg.supersample)
        right = _render_image(layers, h, w, c, True, (0, 0), cfg.supersample)
    occ_l = _occlusion(layers, disp_l, ids_l, w, right=False)
    occ_r = _occlusion(layers, disp_r, ids_r, w, right=True)
    return _Views(left, right, disp_l, disp_r, ids_l, ids_r, occ_l, occ_r)


def _render_resampled(layers: list[_Layer], cfg: SyntheticConfig, rig: RigAugmentation) -> _Views:
    """Both views through the rig's geometry, each resampled once with its labels read at the same points.

    Output pixel p of the left view shows scene point ``unscale(p, scale)``; of the right view
    ``unscale(misrectify(p), scale)`` (misrectification happens in the output camera, after scaling).
    Each view is rendered exactly over the window of scene pixels its points read (so no read falls off
    it and nothing is a border copy: the scene is rendered larger or smaller, resampled and cropped to the
    output frame in one step), then read by ``augment.Taps`` (labels: bilinear within a surface, nearest
    across depth edges, times fx). A left view neither scaled nor warped reads integer points: not resampled.
    Occlusion is tested in the scene, out-of-frame correspondences in the output frame.
    """
    h, w, c = cfg.height, cfg.width, cfg.channels
    fx = rig.scale[0]
    grid_x, grid_y = pixel_grid((h, w))
    left_points = unscale(grid_x, grid_y, rig.scale)
    right_points, reach = left_points, 0.0
    if rig.shift != 0.0 or rig.rotation != 0.0:
        warped_x, warped_y = misrectify(grid_x, grid_y, (h, w), rig.shift, rig.rotation)
        reach = float(np.abs(warped_x - grid_x).max())
        right_points = unscale(warped_x, warped_y, rig.scale)
    # Output column x shows scene x_s = (x + 0.5) / fx - 0.5, and a left pixel is out of the frame iff
    # x - D_L < 0, i.e. x_s - D_s < 0.5 / fx - 0.5 (right: x + D_R > w - 1, i.e. x_s + D_s > (w - 0.5 +
    # the column's move by misrectification) / fx - 0.5). The output frame decides that after resampling;
    # scene pixels _FRAME_MARGIN beyond are marked in the scene already, which spares their hidden-layer
    # tests and changes no output mask (test_synthetic checks it against no margin at all).
    margin = _FRAME_MARGIN
    frames = ((0.5 / fx - 0.5 - margin, math.inf), (-math.inf, (w - 0.5 + reach) / fx - 0.5 + margin))
    cols = np.arange(w, dtype=np.float64)[None, :]
    views = []
    for right, (x, y), frame in ((False, left_points, frames[0]), (True, right_points, frames[1])):
        x0, y0 = math.floor(x.min()), math.floor(y.min())
        width, height = max(math.ceil(x.max()) - x0 + 1, 2), max(math.ceil(y.max()) - y0 + 1, 2)
        image, disp, ids = _render_view(layers, height, width, c, right, (x0, y0), colour=cfg.supersample == 1)
        if cfg.supersample > 1:
            image = _render_image(layers, height, width, c, right, (x0, y0), cfg.supersample)
        straight = rig.scale == (1.0, 1.0) and (x0, y0, width, height) == (0, 0, w, h) and not right
        occluded = _occlusion(layers, disp, ids, width, right, (x0, y0), None if straight else frame)
        if not straight:
            taps = Taps.at((height, width), x - x0, y - y0)
            image = taps.image(image)
            labels, usable = taps.disparity(disp, ~occluded, scale=fx)
            disp = labels.astype(np.float64, copy=False)
            ids, occluded = taps.nearest(ids), ~usable
        occluded |= (cols + disp > w - 1) if right else (cols - disp < 0)
        views.append((image, disp, ids, occluded))
    (left, disp_l, ids_l, occ_l), (right_image, disp_r, ids_r, occ_r) = views
    return _Views(left, right_image, disp_l, disp_r, ids_l, ids_r, occ_l, occ_r)


def generate_sample(config: SyntheticConfig, seed: int, index: int) -> StereoSample:
    """Render sample ``index`` of the stream with base ``seed``; same arguments -> identical arrays.

    The random stream is ``np.random.default_rng([seed, index])`` (scene and camera effects) plus one
    child stream per real-rig augmentation, so any process (DataLoader workers included) reproduces any
    sample alone. Raises ValueError for a negative seed or index.
    """
    if seed < 0 or index < 0:
        raise ValueError(f'seed and index must be >= 0, got seed={seed}, index={index}')
    rng = np.random.default_rng([seed, index])
    rig = _draw_rig(config, seed, index)
    palette = _draw_palette(config, seed, index)
    fx, fy = rig.scale
    if rig.scale == (1.0, 1.0):
        layers, d_min, d_max = _draw_scene(rng, config, config.height, config.width, palette=palette)
    else:  # the scene spans the output frame shrunk by the scale; its disparities are 1 / fx of the output's
        layers, d_min, d_max = _draw_scene(rng, config, config.height / fy, config.width / fx, 1.0 / fx, palette)
        d_min, d_max = d_min * fx, d_max * fx
    v = _render_resampled(layers, config, rig) if rig.geometric else _render_views(layers, config)
    left, right, occ_l, occ_r = v.left, v.right, v.occluded_left, v.occluded_right
    erased = np.zeros((config.height, config.width), np.bool_)
    if rig.boxes:  # pasted before the camera effects, so the box gets the view's blur, noise and JPEG too
        right, erased = erase(np.clip(right, 0, 255), list(rig.boxes), list(rig.box_sources))
    if config.photometric:
        left, right = _camera(rng, config, left, rig.levels[0]), _camera(rng, config, right, rig.levels[1])
    else:
        left, right = np.clip(left, 0, 255), np.clip(right, 0, 255)
    dl, dr = v.disp_left.astype(np.float32), v.disp_right.astype(np.float32)
    return StereoSample(
        left=left, right=right, disp_left=dl, disp_right=dr, occluded_left=occ_l, occluded_right=occ_r,
        valid_left=~occ_l & (dl >= 0) & (dl < config.max_disparity),
        valid_right=~occ_r & ~erased & (dr >= 0) & (dr < config.max_disparity),
        layer_left=v.layer_left, layer_right=v.layer_right, d_min=d_min, d_max=d_max,
        layers=tuple(lay.info for lay in layers), erased_right=erased, rig=rig)


class SyntheticStereoDataset(Dataset[dict[str, torch.Tensor]]):
    """Map-style dataset of ``length`` synthetic pairs rendered on demand (nothing on disk).

    Item ``i`` is ``generate_sample(config, seed, i)`` as tensors: ``left``, ``right`` (C, H, W) float32 in
    0..255; ``disp_left``, ``disp_right`` (1, H, W) float32 pixels; ``valid_left``, ``valid_right``
    (1, H, W) bool (not occluded and in [0, max_disparity)). Deterministic in any worker.

    Do not call ``cv2.setNumThreads`` in a forked DataLoader worker (e.g. in ``worker_init_fn``): when the
    parent has used OpenCV's thread pool, reconfiguring it in the child deadlocks (seen with cv2 5.0).
    """

    def __init__(self, config: SyntheticConfig | None = None, length: int = 100_000, seed: int = 0) -> None:
        if length < 1 or seed < 0:
            raise ValueError(f'length must be >= 1 and seed >= 0, got length={length}, seed={seed}')
        self.config = config if config is not None else SyntheticConfig()
        self.length = length
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f'index {index} out of range for a dataset of length {self.length}')
        s = generate_sample(self.config, self.seed, index % self.length)
        return {
            'left': torch.from_numpy(np.ascontiguousarray(s.left.transpose(2, 0, 1))),  # (C, H, W)
            'right': torch.from_numpy(np.ascontiguousarray(s.right.transpose(2, 0, 1))),
            'disp_left': torch.from_numpy(s.disp_left[None]),  # (1, H, W)
            'disp_right': torch.from_numpy(s.disp_right[None]),
            'valid_left': torch.from_numpy(s.valid_left[None]),
            'valid_right': torch.from_numpy(s.valid_right[None]),
        }


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` for ``SyntheticStereoDataset``: deliberately does nothing.

    No per-worker set-up is needed: every sample is seeded by its own index, and DataLoader already
    limits each worker to one torch thread. In particular it must NOT call ``cv2.setNumThreads``: in a
    forked worker whose parent has used OpenCV's thread pool, reconfiguring the pool deadlocks
    (reproduced with opencv-python-headless 5.0), while plain cv2 calls are fine.
    """
    del worker_id


def save_sample_pngs(sample: StereoSample, directory: str | Path, stem: str = 'sample') -> list[Path]:
    """Write a sample as PNGs for a visual check: left, right, both disparities (colour-mapped over
    [d_min, d_max]) and validity masks. Returns the written paths; the directory is created if needed."""
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = 255.0 / max(sample.d_max, 1e-6)

    def color(image: F32) -> npt.NDArray[np.uint8]:
        u8 = np.clip(image, 0, 255).round().astype(np.uint8)
        return u8[:, :, 0] if u8.shape[2] == 1 else np.asarray(cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), np.uint8)

    images = {
        'left': color(sample.left),
        'right': color(sample.right),
        'disp_left': cv2.applyColorMap(np.clip(sample.disp_left * scale, 0, 255).astype(np.uint8),
                                       cv2.COLORMAP_TURBO),
        'disp_right': cv2.applyColorMap(np.clip(sample.disp_right * scale, 0, 255).astype(np.uint8),
                                        cv2.COLORMAP_TURBO),
        'valid_left': sample.valid_left.astype(np.uint8) * 255,
        'valid_right': sample.valid_right.astype(np.uint8) * 255,
    }
    paths = []
    for name, image in images.items():
        path = out_dir / f'{stem}_{name}.png'
        if not cv2.imwrite(str(path), image):
            raise OSError(f'could not write {path}')
        paths.append(path)
    return paths
