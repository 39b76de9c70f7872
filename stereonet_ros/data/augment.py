"""Augmentations real stereo rigs need, applied to images AND their disparity labels alike.

A real rig is not the ideal rectified pair a generator renders: its sensor has another resolution and
pixel aspect (scale, stretch), its right camera sits a fraction of a pixel off the left one's rows
(misrectification), something can be in front of one lens only (an occluder), and each camera has its own
exposure (gain, brightness, contrast). These functions apply such changes so that the labels keep
describing the pixels:

* **resampling both views by (fx, fy)** (:func:`unscale`): a horizontal length, disparity is multiplied by
  ``fx``; ``fy`` leaves it alone.
* **misrectifying the right view** (:func:`misrectify`): the LEFT disparity is left alone, since it labels
  the ideal rectified geometry the network should still output; the RIGHT disparity is resampled exactly
  as the right image, so ``D_R`` at a right pixel is the disparity of the surface shown there.
* **pasting a box over the right view** (:func:`erase`): right labels inside the box no longer describe
  the image (the caller marks them unusable); left pixels whose match falls in the box keep their labels,
  which are still geometrically right, only unmatchable. RAFT-Stereo's eraser
  (``core/utils/augmentor.py``) keeps them supervised too: the network learns to fill such pixels from
  context as it must for real occlusions.
* **per-view levels** (:func:`adjust_levels`): contrast about the view's mean and a brightness offset.

Conventions (CONVENTIONS.md): pixel centres at integer coordinates, x right, y down; left disparity
``D_L``: left ``(x, y)`` is at ``(x - D_L, y)`` in the right view; right disparity ``D_R``: right
``(x, y)`` is at ``(x + D_R, y)`` in the left view; pixels.

Resampling is plain float bilinear interpolation (a :class:`Taps` reads each point's 2x2 block), not
``cv2.remap``, which rounds coordinates to 1/32 pixel: the same points feed the image and its labels, so
both describe the same place. At the edges a point is clamped to the outer pixel centres (border values,
as ``cv2.resize``); ``Taps.inside`` says whether it lay on the source's footprint (within half a pixel of
the outer centres); farther out the pixel shows copied border content and callers should mark its labels
unusable. Labels are interpolated only where the 2x2 block is smooth: across a jump (a depth edge),
interpolation would invent a disparity no surface has, so the nearest pixel's label is taken instead.

Example::

    >>> import numpy as np
    >>> disp = np.full((4, 8), 10.0)
    >>> x, y = unscale(*pixel_grid((4, 12)), factors=(1.5, 1.0))
    >>> values, usable = Taps.at((4, 8), x, y).disparity(disp, np.ones((4, 8), bool), scale=1.5)
    >>> float(values[0, 0]), values.shape
    (15.0, (4, 12))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
Box = tuple[int, int, int, int]
"""(x0, y0, width, height) of an axis-aligned box, pixels."""

DEFAULT_JUMP: Final = 1.0
"""Largest disparity spread (pixels) inside a 2x2 block that is still interpolated; a wider spread is a
depth edge and takes the nearest label. Slanted surfaces change by < 1 px per pixel (|dd/dx| < 1 keeps a
surface from hiding itself), so within a surface a block spreads by at most ~1 px."""

_A = TypeVar('_A', bound=np.generic)


class AugmentError(ValueError):
    """An augmentation got an argument it cannot honour; the message names it and its value."""


def pixel_grid(shape: tuple[int, int]) -> tuple[F64, F64]:
    """Pixel centres of an (h, w) image -> x (1, w), y (h, 1) float64, broadcastable to (h, w)."""
    h, w = shape
    return np.arange(w, dtype=np.float64)[None, :], np.arange(h, dtype=np.float64)[:, None]


def unscale(x: F64, y: F64, factors: tuple[float, float]) -> tuple[F64, F64]:
    """Where points (x, y) of a view resampled by ``factors = (fx, fy)`` lie before the resampling.

    Pixel edges scale (edge 0 stays at 0, as ``cv2.resize`` maps them): ``x_src = (x + 0.5) / fx - 0.5``.
    Lengths along x, disparities among them, are ``fx`` times longer after the resampling.
    Raises AugmentError for a factor that is not positive and finite.
    """
    fx, fy = factors
    if not (math.isfinite(fx) and math.isfinite(fy) and fx > 0 and fy > 0):
        raise AugmentError(f'factors={factors!r}: must be positive and finite')
    return (x + 0.5) / fx - 0.5, (y + 0.5) / fy - 0.5


def misrectify(x: F64, y: F64, shape: tuple[int, int], shift: float, rotation: float) -> tuple[F64, F64]:
    """Where pixels (x, y) of a misrectified view read the ideal one: (x, y) broadcastable -> (h, w) arrays.

    The view's content is turned by ``rotation`` degrees about the image centre ``((w - 1) / 2,
    (h - 1) / 2)`` (positive: +x turns towards +y, clockwise as displayed, y being down), then moved
    down by ``shift`` pixels: ideal point q shows at ``c + R (q - c) + (0, shift)``. So a pixel p reads
    ``q = c + R^T (p - c - (0, shift))``.
    """
    h, w = shape
    cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
    theta = math.radians(rotation)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    dx, dy = x - cx, y - shift - cy
    # R^T = [[cos, sin], [-sin, cos]] in (x, y)
    qx: F64 = np.broadcast_to(cx + cos_t * dx + sin_t * dy, np.broadcast(x, y).shape)
    qy: F64 = np.broadcast_to(cy - sin_t * dx + cos_t * dy, qx.shape)
    return qx, qy


@dataclass(frozen=True)
class Taps:
    """Bilinear read-out of an (H, W) source at points (x, y): per point its 2x2 block and weights.

    Build with :meth:`at`, then read images (:meth:`image`), labels (:meth:`disparity`) and integer maps
    (:meth:`nearest`) at the same points. All arrays are (h, w), the shape of the points.
    """

    shape: tuple[int, int]  # source (H, W)
    index: I64  # flat index y0 * W + x0 of each block's top-left pixel
    wx: F64  # weight of the block's right column, in [0, 1]
    wy: F64  # weight of its bottom row, in [0, 1]
    inside: Mask  # the point lies on the source's footprint: -0.5 <= x <= W - 0.5, likewise y

    @classmethod
    def at(cls, shape: tuple[int, int], x: F64, y: F64) -> Taps:
        """Taps of an (H, W) source at points x, y (broadcastable float64 arrays, source pixels).

        Points are clamped to the outer pixel centres (border values). Raises AugmentError for a source
        smaller than 2x2 or a non-finite point.
        """
        height, width = shape
        if height < 2 or width < 2:
            raise AugmentError(f'shape={shape!r}: bilinear taps need a source of at least 2x2 pixels')
        px, py = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        if not (np.isfinite(px).all() and np.isfinite(py).all()):
            raise AugmentError('points must be finite')
        inside = (px >= -0.5) & (px <= width - 0.5) & (py >= -0.5) & (py <= height - 0.5)
        xc = np.clip(px, 0.0, width - 1.0)
        yc = np.clip(py, 0.0, height - 1.0)
        # The block's top-left is floor(point), one column/row in from the far edge so the block fits.
        x0 = np.minimum(np.floor(xc), width - 2.0)
        y0 = np.minimum(np.floor(yc), height - 2.0)
        index = (y0 * width + x0).astype(np.int64)
        return cls((height, width), index, xc - x0, yc - y0, inside)

    def _corners(self, flat: npt.NDArray[_A]) -> tuple[npt.NDArray[_A], ...]:
        """Values of the four block pixels: top-left, top-right, bottom-left, bottom-right."""
        i, w = self.index, self.shape[1]
        return flat[i], flat[i + 1], flat[i + w], flat[i + w + 1]

    def _check(self, array: npt.NDArray[np.generic], name: str) -> None:
        if array.shape[:2] != self.shape:
            raise AugmentError(f'{name} has shape {array.shape}, the taps read a source of {self.shape}')

    def image(self, image: F32) -> F32:
        """Bilinear samples of ``image`` (H, W, C) float32 -> (h, w, C) float32."""
        self._check(image, 'image')
        h, w = self.shape
        a, b, c, d = self._corners(image.reshape(h * w, image.shape[2]))
        wx = self.wx.astype(np.float32)[..., None]
        wy = self.wy.astype(np.float32)[..., None]
        top = a * (1 - wx) + b * wx
        bottom = c * (1 - wx) + d * wx
        out: F32 = np.asarray(top * (1 - wy) + bottom * wy, np.float32)  # float32 already: no copy
        return out

    def _nearest_index(self) -> I64:
        # Round half up: a weight of 0.5 or more picks the right column / bottom row.
        near: I64 = self.index + (self.wx >= 0.5) + self.shape[1] * (self.wy >= 0.5)
        return near

    def nearest(self, values: npt.NDArray[_A]) -> npt.NDArray[_A]:
        """The nearest source pixel's value of ``values`` (H, W) -> (h, w), same dtype (ids, masks)."""
        self._check(values, 'values')
        out: npt.NDArray[_A] = values.reshape(-1)[self._nearest_index()]
        return out

    def disparity(self, disp: npt.NDArray[np.floating], usable: Mask, jump: float = DEFAULT_JUMP,
                  scale: float = 1.0) -> tuple[npt.NDArray[np.floating], Mask]:
        """Labels at the points: ``disp`` (H, W) float pixels, ``usable`` (H, W) bool -> (h, w) each.

        Where the block's four labels spread by at most ``jump`` pixels: their bilinear interpolation,
        usable iff all four are. Elsewhere (a depth edge): the nearest pixel's label and usability.
        Values are multiplied by ``scale`` (the horizontal resampling factor; 1 for a warp of one view).
        ``Taps.inside`` is NOT folded into the result: the caller decides what outside points mean.
        Computed in float64; returned in ``disp``'s dtype.
        """
        self._check(disp, 'disp')
        self._check(usable, 'usable')
        if not (jump >= 0 and math.isfinite(scale) and scale > 0):
            raise AugmentError(f'jump={jump!r}, scale={scale!r}: need jump >= 0 and a positive finite scale')
        a, b, c, d = self._corners(disp.reshape(-1).astype(np.float64, copy=False))
        lo = np.minimum(np.minimum(a, b), np.minimum(c, d))
        hi = np.maximum(np.maximum(a, b), np.maximum(c, d))
        smooth = hi - lo <= jump
        wx, wy = self.wx, self.wy
        bilinear = (a * (1 - wx) + b * wx) * (1 - wy) + (c * (1 - wx) + d * wx) * wy
        near = self._nearest_index()
        flat_usable = usable.reshape(-1)
        ua, ub, uc, ud = self._corners(flat_usable)
        values = np.where(smooth, bilinear, disp.reshape(-1)[near]) * scale
        ok: Mask = np.where(smooth, ua & ub & uc & ud, flat_usable[near])
        return values.astype(disp.dtype, copy=False), ok


def clip_box(box: Box, shape: tuple[int, int]) -> Box:
    """``box`` (x0, y0, width, height) clipped to an (h, w) image; an empty result has width or height 0."""
    h, w = shape
    x0, y0, bw, bh = box
    x1, y1 = min(x0 + bw, w), min(y0 + bh, h)
    x0, y0 = max(x0, 0), max(y0, 0)
    return x0, y0, max(x1 - x0, 0), max(y1 - y0, 0)


def erase(image: F32, boxes: list[Box], sources: list[tuple[int, int] | None]) -> tuple[F32, Mask]:
    """Paste boxes over ``image`` (H, W, C) float32 -> (new image, (H, W) bool mask of pasted pixels).

    Box k (clipped to the image) is filled with the patch of the same size whose top-left is
    ``sources[k] = (x, y)`` in the ORIGINAL image (texture from elsewhere in the view), or, for ``None``,
    with the original image's mean colour (C,). The input is not changed.
    Raises AugmentError when the lists differ in length or a source patch leaves the image.
    """
    if len(boxes) != len(sources):
        raise AugmentError(f'{len(boxes)} boxes but {len(sources)} sources')
    h, w = image.shape[:2]
    out = image.copy()
    mask = np.zeros((h, w), np.bool_)
    mean = image.reshape(h * w, -1).mean(axis=0, dtype=np.float64).astype(np.float32)
    for box, source in zip(boxes, sources, strict=True):
        x0, y0, bw, bh = clip_box(box, (h, w))
        if bw == 0 or bh == 0:
            continue
        if source is None:
            out[y0:y0 + bh, x0:x0 + bw] = mean
        else:
            sx, sy = source
            if not (0 <= sx <= w - bw and 0 <= sy <= h - bh):
                raise AugmentError(f'source={source!r}: a {bw}x{bh} patch there leaves the {w}x{h} image')
            out[y0:y0 + bh, x0:x0 + bw] = image[sy:sy + bh, sx:sx + bw]
        mask[y0:y0 + bh, x0:x0 + bw] = True
    return out, mask


def adjust_levels(image: F32, contrast: float, brightness: float) -> F32:
    """``mean + contrast * (image - mean) + brightness``, mean over all pixels and channels (so contrast
    keeps the colour balance); (H, W, C) float32 grey levels -> same, unclipped."""
    mean = np.float32(image.mean(dtype=np.float64))
    out: F32 = (image - mean) * np.float32(contrast) + (mean + np.float32(brightness))
    return out


__all__ = ['DEFAULT_JUMP', 'AugmentError', 'Box', 'Taps', 'adjust_levels', 'clip_box', 'erase', 'misrectify',
           'pixel_grid', 'unscale']
