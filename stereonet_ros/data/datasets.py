"""Loaders for public stereo data sets, all returning the same sample dictionary.

Every data set here is a ``torch.utils.data.Dataset`` of :class:`StereoSample` dicts:

- ``left``, ``right``: ``(C, H, W)`` float32 tensors with values in 0..255 (not normalised: the model
  owns its input normalisation). ``C`` is the data set's ``channels`` argument (default 3): gray images
  are repeated to 3 channels, RGB is reduced to ITU-R 601 luma for ``channels=1``. 16-bit images are
  rescaled to 0..255 (``value * 255 / 65535``).
- ``disp_left``: ``(1, H, W)`` float32 left-view disparity in pixels (CONVENTIONS.md: the left pixel at
  column ``x`` is at ``x - d`` in the right image). Pixels without ground truth hold **NaN**, never 0.
- ``valid_left``: ``(1, H, W)`` bool, ``True`` where ``disp_left`` holds ground truth (``isfinite``).
- ``disp_right`` / ``valid_right``: the same for the right view (right pixel ``x`` is at ``x + d`` in
  the left image), only where the data set has right-view ground truth.
- ``name``: the left image's path relative to the data set root (for reports and output files).

A data set either has the right-view keys in every sample or in none (so that the default collate works);
``right_disparity=None`` means "include them when every item has a file", ``True`` requires them and
``False`` leaves them out. Data sets without ground truth (KITTI testing, a plain folder without
``disparity/``) have no ``disp_*`` / ``valid_*`` keys at all.

Each loader checks its root at construction and raises :class:`DatasetError` naming the path and what
is missing; reading a broken file later raises :class:`DatasetError` naming that file.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from stereonet_ros.image_io import DisparityFileError, ImageReadError, read_disparity, read_image
from stereonet_ros.inference import as_float_image, to_contract_color
from stereonet_ros.pfm import PfmError, read_pfm

__all__ = [
    'DatasetError',
    'KeystoneDataset',
    'Kitti2012Dataset',
    'Kitti2015Dataset',
    'Middlebury2014Dataset',
    'MiddleburyCalibration',
    'PairFolderDataset',
    'SceneFlowDataset',
    'StereoDataset',
    'StereoSample',
    'random_crop',
    'read_exr_channel',
    'read_middlebury_calibration',
]

PathLike = str | os.PathLike[str]
FloatImage = npt.NDArray[np.float32]


class DatasetError(ValueError):
    """A data set root is missing files or is laid out wrongly, or one of its files cannot be read."""


class _StereoSampleRequired(TypedDict):
    left: torch.Tensor  # (C, H, W) float32, 0..255
    right: torch.Tensor  # (C, H, W) float32, 0..255
    name: str


# total=False on a subclass instead of typing.NotRequired, which Humble's Python 3.10 lacks.
class StereoSample(_StereoSampleRequired, total=False):
    """One stereo pair with its ground truth; shapes and units in the module docstring."""

    disp_left: torch.Tensor  # (1, H, W) float32, pixels, NaN = no ground truth
    valid_left: torch.Tensor  # (1, H, W) bool
    disp_right: torch.Tensor  # (1, H, W) float32, pixels, NaN = no ground truth
    valid_right: torch.Tensor  # (1, H, W) bool


# --- ground-truth decoders: path -> (H, W) float32 disparity, NaN where invalid -----------------------

def _finite_or_nan(values: FloatImage) -> FloatImage:
    """Non-finite ground truth (Middlebury's ``inf`` = unknown) becomes NaN, our one invalid marker."""
    out = values.astype(np.float32, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


def _decode_pfm(path: Path) -> FloatImage:
    """SceneFlow / Middlebury ``.pfm`` ground truth; ``inf`` (Middlebury: unknown) -> NaN."""
    try:
        values = read_pfm(path)
    except PfmError as err:
        raise DatasetError(f'cannot read disparity {path}: {err}') from err
    if values.ndim != 2:
        raise DatasetError(f'cannot read disparity {path}: expected a one-channel PFM, got shape {values.shape}')
    return _finite_or_nan(values)


def _decode_kitti_png(path: Path) -> FloatImage:
    """KITTI ground truth: 16-bit gray PNG, disparity = value / 256, value 0 = no ground truth."""
    try:
        raw = read_image(path)
    except ImageReadError as err:
        raise DatasetError(str(err)) from err
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise DatasetError(f'cannot read disparity {path}: KITTI disparity must be a 16-bit gray PNG, '
                           f'got {raw.dtype} of shape {raw.shape}')
    disparity = raw.astype(np.float32) / np.float32(256.0)
    disparity[raw == 0] = np.nan
    return disparity


def _decode_array_file(path: Path) -> FloatImage:
    """``.npy`` / ``.pfm`` ground truth of a plain folder; non-finite -> NaN."""
    try:
        return _finite_or_nan(read_disparity(path))
    except DisparityFileError as err:
        raise DatasetError(str(err)) from err


def _decode_exr(path: Path) -> FloatImage:
    """KeystoneDepth ``.exr`` ground truth; non-finite -> NaN."""
    return _finite_or_nan(read_exr_channel(path))


# --- OpenEXR ---------------------------------------------------------------------------------------
# KeystoneDepth ships its disparities as OpenEXR. The seed read them with OpenCV, but OpenCV wheels
# (5.x) are built without OpenEXR, so here is a small reader for the subset disparity maps use:
# single-part scanline files, compression NONE / ZIPS / ZIP, HALF / FLOAT / UINT channels.
_EXR_MAGIC = b'\x76\x2f\x31\x01'
_EXR_TILED, _EXR_NON_IMAGE, _EXR_MULTIPART = 0x200, 0x800, 0x1000
_EXR_PIXEL_TYPES: dict[int, np.dtype[np.generic]] = {0: np.dtype('<u4'), 1: np.dtype('<f2'), 2: np.dtype('<f4')}
# compression id -> scan lines per chunk (OpenEXR file layout spec); others are not supported here.
_EXR_LINES_PER_CHUNK = {0: 1, 2: 1, 3: 16}
_EXR_COMPRESSION_NAMES = {0: 'NONE', 1: 'RLE', 2: 'ZIPS', 3: 'ZIP', 4: 'PIZ', 5: 'PXR24', 6: 'B44', 7: 'B44A',
                          8: 'DWAA', 9: 'DWAB'}


def _exr_cstring(raw: bytes, position: int, path: Path) -> tuple[bytes, int]:
    end = raw.find(b'\0', position)
    if end < 0:
        raise DatasetError(f'cannot read EXR {path}: truncated header')
    return raw[position:end], end + 1


def _exr_unzip(data: bytes, expected: int, path: Path) -> bytes:
    """Undo OpenEXR's ZIP(S) filter: zlib, then a byte-delta predictor, then a two-halves interleave."""
    try:
        packed = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
    except zlib.error as err:
        raise DatasetError(f'cannot read EXR {path}: corrupt ZIP block ({err})') from err
    if packed.size != expected:
        raise DatasetError(f'cannot read EXR {path}: ZIP block holds {packed.size} bytes, expected {expected}')
    # Predictor: t[i] = t[i-1] + t[i] - 128 (mod 256), i.e. a running sum of the deltas.
    deltas = packed.astype(np.int64)
    deltas[1:] -= 128
    predicted = (np.cumsum(deltas) % 256).astype(np.uint8)
    # The encoder stored even-index bytes in the first half and odd-index bytes in the second.
    out = np.empty_like(predicted)
    half = (expected + 1) // 2
    out[0::2] = predicted[:half]
    out[1::2] = predicted[half:]
    return out.tobytes()


def read_exr_channel(path: PathLike) -> FloatImage:
    """Read one channel of a scanline OpenEXR file as ``(H, W)`` float32 (values as stored).

    The channel is the only one, else ``Y``, else ``R`` (disparity maps are one channel or gray RGB).
    Supported: single-part scanline images, compression NONE, ZIPS, ZIP; pixel types HALF, FLOAT, UINT.

    Raises:
        DatasetError: missing file, not OpenEXR, an unsupported feature (tiles, deep, multi-part, other
            compressions, subsampled channels), or truncated / corrupt data.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f'cannot read EXR {path}: {err.strerror}') from err
    if len(raw) < 8 or raw[:4] != _EXR_MAGIC:
        raise DatasetError(f'cannot read EXR {path}: not an OpenEXR file')
    version = int.from_bytes(raw[4:8], 'little')
    if version & (_EXR_TILED | _EXR_NON_IMAGE | _EXR_MULTIPART):
        raise DatasetError(f'cannot read EXR {path}: tiled, deep and multi-part files are not supported')
    try:
        attributes: dict[bytes, bytes] = {}
        position = 8
        while True:
            attribute, position = _exr_cstring(raw, position, path)
            if not attribute:
                break
            _, position = _exr_cstring(raw, position, path)  # attribute type name
            (size,) = struct.unpack_from('<i', raw, position)
            attributes[attribute] = raw[position + 4:position + 4 + size]
            position += 4 + size
        for required in (b'channels', b'compression', b'dataWindow'):
            if required not in attributes:
                raise DatasetError(f'cannot read EXR {path}: header lacks {required.decode()!r}')
        channels: list[tuple[str, np.dtype[np.generic]]] = []
        chlist = attributes[b'channels']
        cursor = 0
        while True:
            channel, cursor = _exr_cstring(chlist, cursor, path)
            if not channel:
                break
            pixel_type, _, x_sampling, y_sampling = struct.unpack_from('<iB3xii', chlist, cursor)
            cursor += 16
            if pixel_type not in _EXR_PIXEL_TYPES or x_sampling != 1 or y_sampling != 1:
                raise DatasetError(f'cannot read EXR {path}: channel {channel.decode()!r} has pixel type '
                                   f'{pixel_type} / sampling {x_sampling}x{y_sampling} (not supported)')
            channels.append((channel.decode(), _EXR_PIXEL_TYPES[pixel_type]))
        compression = attributes[b'compression'][0]
        x_min, y_min, x_max, y_max = struct.unpack('<4i', attributes[b'dataWindow'])
        width, height = x_max - x_min + 1, y_max - y_min + 1
        if not channels or width <= 0 or height <= 0:
            raise DatasetError(f'cannot read EXR {path}: empty image ({len(channels)} channels, {width}x{height})')
        if compression not in _EXR_LINES_PER_CHUNK:
            method = _EXR_COMPRESSION_NAMES.get(compression, str(compression))
            raise DatasetError(f'cannot read EXR {path}: {method} compression is not supported (NONE, ZIPS, ZIP are)')
        names = [name for name, _ in channels]
        wanted = names[0] if len(names) == 1 else 'Y' if 'Y' in names else 'R' if 'R' in names else None
        if wanted is None:
            raise DatasetError(f'cannot read EXR {path}: no Y or R channel among {names}')
        lines_per_chunk = _EXR_LINES_PER_CHUNK[compression]
        chunk_count = math.ceil(height / lines_per_chunk)
        offsets = np.frombuffer(raw, dtype='<u8', count=chunk_count, offset=position)
        line_bytes = sum(width * dtype.itemsize for _, dtype in channels)
        out = np.full((height, width), np.nan, dtype=np.float32)
        for offset in offsets.tolist():
            y, size = struct.unpack_from('<ii', raw, offset)
            data = raw[offset + 8:offset + 8 + size]
            row = y - y_min
            lines = min(lines_per_chunk, height - row)
            if row < 0 or lines <= 0 or len(data) != size:
                raise DatasetError(f'cannot read EXR {path}: bad or truncated chunk at byte {offset}')
            expected = lines * line_bytes
            if size < expected and compression != 0:
                data = _exr_unzip(data, expected, path)
            elif size != expected:  # ZIP data that did not shrink is stored raw
                raise DatasetError(f'cannot read EXR {path}: chunk of {size} bytes, expected {expected}')
            block = np.frombuffer(data, dtype=np.uint8).reshape(lines, line_bytes)  # (lines, bytes per line)
            column = 0
            for name, dtype in channels:
                span = width * dtype.itemsize
                if name == wanted:
                    samples = np.ascontiguousarray(block[:, column:column + span]).view(dtype)  # (lines, W)
                    out[row:row + lines] = samples.astype(np.float32)
                column += span
    except (struct.error, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f'cannot read EXR {path}: truncated or corrupt ({err})') from err
    return out


# --- the shared data set machinery -----------------------------------------------------------------

@dataclass(frozen=True)
class _PairFiles:
    """The files of one item; ``disp_*`` are ``None`` when the item has no such ground truth."""

    name: str
    left: Path
    right: Path
    disp_left: Path | None = None
    disp_right: Path | None = None


def _image_tensor(path: Path, channels: int) -> torch.Tensor:
    """Read an image file as a ``(channels, H, W)`` float32 tensor in 0..255."""
    try:
        array = read_image(path)
    except ImageReadError as err:
        raise DatasetError(str(err)) from err
    # The same value range (uint16 scaled to 0..255) and colour conversion as inference.
    planes = to_contract_color(as_float_image(array, str(path)), 'gray' if channels == 1 else 'rgb')
    return torch.from_numpy(np.ascontiguousarray(planes))  # (C, H, W)


def _disparity_tensors(disparity: FloatImage) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, W)`` float32 with NaN for invalid -> ``(1, H, W)`` disparity and ``(1, H, W)`` bool mask."""
    values = torch.from_numpy(np.ascontiguousarray(disparity, dtype=np.float32))[None]  # (1, H, W)
    return values, torch.isfinite(values)


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise DatasetError(f'channels must be 1 or 3, got {channels}')
    return channels


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f'{what} {path} is missing or not a directory')
    return path


def _resolve_right(items: list[_PairFiles], right_disparity: bool | None, root: Path,
                   dataset: str) -> list[_PairFiles]:
    """Apply the all-or-none rule for right-view ground truth (see the module docstring)."""
    if right_disparity is False:
        return [_PairFiles(i.name, i.left, i.right, i.disp_left, None) for i in items]
    missing = [i for i in items if i.disp_right is None or not i.disp_right.is_file()]
    if not missing:
        return items
    if right_disparity is True:
        example = missing[0].disp_right
        where = str(example) if example is not None else f'the right-view disparity of {missing[0].name}'
        raise DatasetError(f'{dataset} {root}: right_disparity=True but {len(missing)} item(s) lack it, '
                           f'e.g. {where}')
    return [_PairFiles(i.name, i.left, i.right, i.disp_left, None) for i in items]


class StereoDataset(Dataset[StereoSample]):
    """Base class: a list of stereo pair files and the decoder for their ground truth.

    Subclasses fill ``items`` at construction; ``__getitem__`` reads the files. The sample layout is
    described in the module docstring.
    """

    def __init__(self, root: PathLike, items: Sequence[_PairFiles],
                 decode_disparity: Callable[[Path], FloatImage], channels: int = 3) -> None:
        self.root = Path(root)
        self.items: list[_PairFiles] = list(items)
        self.channels = _check_channels(channels)
        self._decode_disparity = decode_disparity

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_disparity(self) -> bool:
        """Whether samples carry ``disp_left`` / ``valid_left``."""
        return bool(self.items) and self.items[0].disp_left is not None

    @property
    def has_right_disparity(self) -> bool:
        """Whether samples carry ``disp_right`` / ``valid_right``."""
        return bool(self.items) and self.items[0].disp_right is not None

    def _read(self, item: _PairFiles) -> tuple[torch.Tensor, torch.Tensor, FloatImage | None, FloatImage | None]:
        left = _image_tensor(item.left, self.channels)
        right = _image_tensor(item.right, self.channels)
        disp_left = self._decode_disparity(item.disp_left) if item.disp_left is not None else None
        disp_right = self._decode_disparity(item.disp_right) if item.disp_right is not None else None
        return left, right, disp_left, disp_right

    def _check_sizes(self, item: _PairFiles, left: torch.Tensor, right: torch.Tensor,
                     disp_left: FloatImage | None, disp_right: FloatImage | None) -> None:
        sizes = {'left image': tuple(left.shape[-2:]), 'right image': tuple(right.shape[-2:])}
        if disp_left is not None:
            sizes['left disparity'] = disp_left.shape
        if disp_right is not None:
            sizes['right disparity'] = disp_right.shape
        if len(set(sizes.values())) > 1:
            listed = ', '.join(f'{key} {value[0]}x{value[1]}' for key, value in sizes.items())
            raise DatasetError(f'{item.left}: sizes differ ({listed})')

    def __getitem__(self, index: int) -> StereoSample:
        if not -len(self.items) <= index < len(self.items):
            raise IndexError(f'index {index} out of range for {len(self.items)} items')
        item = self.items[index]
        left, right, disp_left, disp_right = self._read(item)
        self._check_sizes(item, left, right, disp_left, disp_right)
        return _make_sample(item.name, left, right, disp_left, disp_right)


def _make_sample(name: str, left: torch.Tensor, right: torch.Tensor, disp_left: FloatImage | None,
                 disp_right: FloatImage | None) -> StereoSample:
    sample: StereoSample = {'left': left, 'right': right, 'name': name}
    if disp_left is not None:
        sample['disp_left'], sample['valid_left'] = _disparity_tensors(disp_left)
    if disp_right is not None:
        sample['disp_right'], sample['valid_right'] = _disparity_tensors(disp_right)
    return sample


def _relative_name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# --- SceneFlow -------------------------------------------------------------------------------------

class SceneFlowDataset(StereoDataset):
    """SceneFlow (FlyingThings3D, Driving, Monkaa) as distributed by the Freiburg group.

    Layout: ``<root>/**/frames_<pass>/**/left/NNNN.png`` and ``.../right/NNNN.png``; the disparity lies
    at the same relative path with ``frames_<pass>`` replaced by ``disparity`` and ``.pfm`` for ``.png``.
    The replacement is done inside a folder name too, so the download names
    ``flyingthings3d__frames_cleanpass`` -> ``flyingthings3d__disparity`` work as well. SceneFlow
    disparities are positive in both views and dense (every pixel valid).

    Args:
        root: folder holding one or more of the sub-sets.
        pass_name: ``'cleanpass'`` or ``'finalpass'``.
        include: keep only pairs whose relative path has a folder named exactly this (e.g. ``'TEST'``).
        exclude: drop pairs whose relative path has a folder named exactly this (e.g. ``'TEST'``).
        right_disparity: include the right view's ground truth (module docstring: None = when present).
        channels: 1 or 3.

    Raises:
        DatasetError: no root, no left frames of that pass, or a left frame without its right frame or
            left disparity.
    """

    def __init__(self, root: PathLike, pass_name: Literal['cleanpass', 'finalpass'] = 'cleanpass',
                 include: str | None = None, exclude: str | None = None, right_disparity: bool | None = None,
                 channels: int = 3) -> None:
        _check_channels(channels)  # arguments before the (slow) file discovery
        root = _require_dir(Path(root), 'SceneFlow root')
        if pass_name not in ('cleanpass', 'finalpass'):
            raise DatasetError(f'SceneFlow pass_name must be cleanpass or finalpass, got {pass_name!r}')
        frames = f'frames_{pass_name}'
        items: list[_PairFiles] = []
        for left in sorted(root.rglob('*.png')):
            parts = left.relative_to(root).parts
            folders = parts[:-1]
            if left.parent.name != 'left' or not any(frames in part for part in folders):
                continue
            if include is not None and include not in folders:
                continue
            if exclude is not None and exclude in folders:
                continue
            right = left.parent.parent / 'right' / left.name
            disparity_parts = [part.replace(frames, 'disparity') for part in parts]
            disp_left = root.joinpath(*disparity_parts).with_suffix('.pfm')
            disp_right = disp_left.parent.parent / 'right' / disp_left.name
            for needed in (right, disp_left):
                if not needed.is_file():
                    raise DatasetError(f'SceneFlow {root}: {needed} is missing (needed by {left})')
            items.append(_PairFiles(_relative_name(left, root), left, right, disp_left, disp_right))
        if not items:
            raise DatasetError(f'SceneFlow {root}: no .../{frames}/.../left/*.png frames found'
                               + (f' with a folder named {include!r}' if include else ''))
        super().__init__(root, _resolve_right(items, right_disparity, root, 'SceneFlow'), _decode_pfm, channels)


# --- KITTI -----------------------------------------------------------------------------------------

def _kitti_items(root: Path, left_dir: str, right_dir: str, disp_dir: str | None, dataset: str) -> list[_PairFiles]:
    """Pairs ``<left_dir>/NNNNNN_10.png`` / ``<right_dir>/NNNNNN_10.png`` (+ ``<disp_dir>/NNNNNN_10.png``).

    Only frame ``_10`` has ground truth; ``_11`` is the next frame in time (scene flow), not a view.
    """
    left_folder = _require_dir(root / left_dir, f'{dataset} left image folder')
    right_folder = _require_dir(root / right_dir, f'{dataset} right image folder')
    disp_folder = _require_dir(root / disp_dir, f'{dataset} disparity folder') if disp_dir else None
    items: list[_PairFiles] = []
    for left in sorted(left_folder.glob('*_10.png')):
        right = right_folder / left.name
        if not right.is_file():
            raise DatasetError(f'{dataset} {root}: {right} is missing (needed by {left})')
        disparity = None
        if disp_folder is not None:
            disparity = disp_folder / left.name
            if not disparity.is_file():
                raise DatasetError(f'{dataset} {root}: {disparity} is missing (needed by {left})')
        items.append(_PairFiles(_relative_name(left, root), left, right, disparity))
    if not items:
        raise DatasetError(f'{dataset} {root}: no *_10.png images in {left_folder}')
    return items


class Kitti2012Dataset(StereoDataset):
    """KITTI stereo 2012: ``<root>`` is the ``training`` (or ``testing``) folder.

    Images: ``colored_0`` / ``colored_1`` (``image_set='colored'``) or gray ``image_0`` / ``image_1``
    (``'gray'``). Ground truth: ``disp_occ`` (all pixels, ``disparity='occ'``) or ``disp_noc``
    (non-occluded only, ``'noc'``), 16-bit PNG, disparity = value / 256, 0 = no ground truth;
    ``disparity=None`` for images only (the testing split). No right-view ground truth.

    Raises:
        DatasetError: a folder is missing, a pair lacks a file, or no ``*_10.png`` images exist.
    """

    def __init__(self, root: PathLike, image_set: Literal['colored', 'gray'] = 'colored',
                 disparity: Literal['occ', 'noc'] | None = 'occ', channels: int = 3) -> None:
        _check_channels(channels)
        root = _require_dir(Path(root), 'KITTI 2012 root')
        if image_set not in ('colored', 'gray'):
            raise DatasetError(f'KITTI 2012 image_set must be colored or gray, got {image_set!r}')
        if disparity not in ('occ', 'noc', None):
            raise DatasetError(f'KITTI 2012 disparity must be occ, noc or None, got {disparity!r}')
        prefix = 'colored' if image_set == 'colored' else 'image'
        disp_dir = f'disp_{disparity}' if disparity else None
        items = _kitti_items(root, f'{prefix}_0', f'{prefix}_1', disp_dir, 'KITTI 2012')
        super().__init__(root, items, _decode_kitti_png, channels)


class Kitti2015Dataset(StereoDataset):
    """KITTI stereo 2015: ``<root>`` is the ``training`` (or ``testing``) folder.

    Images ``image_2`` / ``image_3``; ground truth ``disp_occ_0`` (``disparity='occ'``) or ``disp_noc_0``
    (``'noc'``), same PNG encoding as 2012. ``disp_*_1`` is the *next frame's* left disparity, not the
    right view, so there is no right-view ground truth.

    Raises:
        DatasetError: a folder is missing, a pair lacks a file, or no ``*_10.png`` images exist.
    """

    def __init__(self, root: PathLike, disparity: Literal['occ', 'noc'] | None = 'occ', channels: int = 3) -> None:
        _check_channels(channels)
        root = _require_dir(Path(root), 'KITTI 2015 root')
        if disparity not in ('occ', 'noc', None):
            raise DatasetError(f'KITTI 2015 disparity must be occ, noc or None, got {disparity!r}')
        disp_dir = f'disp_{disparity}_0' if disparity else None
        items = _kitti_items(root, 'image_2', 'image_3', disp_dir, 'KITTI 2015')
        super().__init__(root, items, _decode_kitti_png, channels)


# --- Middlebury 2014 -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class MiddleburyCalibration:
    """A Middlebury 2014 ``calib.txt``.

    Depth from a stored disparity ``d``: ``Z = baseline * f / (d + doffs)`` (mm), ``f = cam0[0, 0]``.
    """

    cam0: npt.NDArray[np.float64]  # (3, 3) left intrinsics [f 0 cx0; 0 f cy; 0 0 1], pixels
    cam1: npt.NDArray[np.float64]  # (3, 3) right intrinsics [f 0 cx1; 0 f cy; 0 0 1], pixels
    doffs: float  # cx1 - cx0, pixels: the principal-point offset that CONVENTIONS.md removes
    baseline: float  # camera baseline, millimetres
    width: int  # image width, pixels
    height: int  # image height, pixels
    ndisp: int  # conservative bound on the number of disparity levels
    vmin: float  # tight lower bound of the scene's disparities, pixels
    vmax: float  # tight upper bound of the scene's disparities, pixels
    extra: dict[str, str] = field(default_factory=dict)  # other keys (isint, dyavg, dymax, ...), as text


def _parse_matrix(text: str, key: str, path: Path) -> npt.NDArray[np.float64]:
    body = text.strip()
    if not (body.startswith('[') and body.endswith(']')):
        raise DatasetError(f'{path}: {key} must look like [a b c; d e f; g h i], got {text!r}')
    try:
        rows = [[float(value) for value in row.split()] for row in body[1:-1].split(';')]
        matrix = np.array(rows, dtype=np.float64)
    except ValueError as err:
        raise DatasetError(f'{path}: {key} is not a 3x3 matrix: {text!r}') from err
    if matrix.shape != (3, 3):
        raise DatasetError(f'{path}: {key} is not a 3x3 matrix: {text!r}')
    matrix.setflags(write=False)
    return matrix


def read_middlebury_calibration(path: PathLike) -> MiddleburyCalibration:
    """Parse a Middlebury 2014 ``calib.txt`` (``key=value`` lines).

    Raises:
        DatasetError: the file is missing, a required key (cam0, cam1, doffs, baseline, width, height,
            ndisp, vmin, vmax) is absent, or a value does not parse.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding='ascii')
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f'cannot read Middlebury calibration {path}: {err}') from err
    values: dict[str, str] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, separator, value = line.partition('=')
        if not separator:
            raise DatasetError(f'{path}:{line_number}: expected key=value, got {line!r}')
        values[key.strip()] = value.strip()
    required = ('cam0', 'cam1', 'doffs', 'baseline', 'width', 'height', 'ndisp', 'vmin', 'vmax')
    absent = [key for key in required if key not in values]
    if absent:
        raise DatasetError(f'{path}: missing {", ".join(absent)}')

    def number(key: str) -> float:
        try:
            return float(values[key])
        except ValueError as err:
            raise DatasetError(f'{path}: {key}={values[key]!r} is not a number') from err

    def integer(key: str) -> int:
        value = number(key)
        if not value.is_integer():
            raise DatasetError(f'{path}: {key}={values[key]!r} is not an integer')
        return int(value)

    return MiddleburyCalibration(
        cam0=_parse_matrix(values['cam0'], 'cam0', path), cam1=_parse_matrix(values['cam1'], 'cam1', path),
        doffs=number('doffs'), baseline=number('baseline'), width=integer('width'), height=integer('height'),
        ndisp=integer('ndisp'), vmin=number('vmin'), vmax=number('vmax'),
        extra={key: value for key, value in values.items() if key not in required})


def _first_existing(folder: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


class Middlebury2014Dataset(StereoDataset):
    """Middlebury 2014 (also MiddEval3) scenes: ``im0.png``, ``im1.png``, ``calib.txt`` and ground truth.

    ``<root>`` is one scene folder or a folder of scene folders. Ground truth: ``disp0.pfm`` (or
    MiddEval3's ``disp0GT.pfm``) for the left view, ``disp1.pfm`` / ``disp1GT.pfm`` for the right; ``inf``
    marks unknown pixels. Stored disparities are image shifts (``x_right = x_left - d``); the
    ``DisparityImage`` value (principal-point offset removed, CONVENTIONS.md) is ``d + doffs``, see
    :class:`MiddleburyCalibration`. Per-scene calibrations are in ``calibrations`` (same order as items).

    Args:
        root: scene folder or folder of scene folders.
        right_disparity: see the module docstring.
        require_disparity: if False, scenes without ``disp0`` are loaded without ground truth (then no
            scene may have it, to keep samples alike).
        channels: 1 or 3.

    Raises:
        DatasetError: no scenes, a scene lacking im0/im1/calib.txt (or disp0 when required), or a
            calib.txt that does not parse or disagrees with the image size (at ``__getitem__``).
    """

    def __init__(self, root: PathLike, right_disparity: bool | None = None, require_disparity: bool = True,
                 channels: int = 3) -> None:
        _check_channels(channels)
        root = _require_dir(Path(root), 'Middlebury root')
        if (root / 'im0.png').is_file():
            scenes = [root]
        else:
            scenes = sorted(folder for folder in root.iterdir() if folder.is_dir() and (folder / 'im0.png').is_file())
        if not scenes:
            raise DatasetError(f'Middlebury root {root}: no scene folder with im0.png')
        items: list[_PairFiles] = []
        self.calibrations: list[MiddleburyCalibration] = []
        for scene in scenes:
            for needed in ('im1.png', 'calib.txt'):
                if not (scene / needed).is_file():
                    raise DatasetError(f'Middlebury scene {scene}: {needed} is missing')
            disp_left = _first_existing(scene, ('disp0.pfm', 'disp0GT.pfm'))
            if disp_left is None and require_disparity:
                raise DatasetError(f'Middlebury scene {scene}: disp0.pfm (or disp0GT.pfm) is missing')
            disp_right = _first_existing(scene, ('disp1.pfm', 'disp1GT.pfm')) or scene / 'disp1.pfm'
            name = _relative_name(scene / 'im0.png', root) if scene != root else 'im0.png'
            items.append(_PairFiles(name, scene / 'im0.png', scene / 'im1.png', disp_left,
                                    disp_right if disp_left is not None else None))
            self.calibrations.append(read_middlebury_calibration(scene / 'calib.txt'))
        if len({item.disp_left is None for item in items}) > 1:
            raise DatasetError(f'Middlebury root {root}: some scenes have disp0 and some do not')
        if items[0].disp_left is not None:
            items = _resolve_right(items, right_disparity, root, 'Middlebury')
        super().__init__(root, items, _decode_pfm, channels)

    def __getitem__(self, index: int) -> StereoSample:
        sample = super().__getitem__(index)
        calibration = self.calibrations[index]
        height, width = sample['left'].shape[-2:]
        if (calibration.height, calibration.width) != (height, width):
            raise DatasetError(f'{self.items[index].left}: image is {height}x{width} but calib.txt says '
                               f'{calibration.height}x{calibration.width}')
        return sample


# --- KeystoneDepth ---------------------------------------------------------------------------------

def _center_crop(array: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop ``(..., H, W)`` to ``(..., height, width)`` around the centre, rounding as torchvision does."""
    top = round((array.shape[-2] - height) / 2.0)
    left = round((array.shape[-1] - width) / 2.0)
    return array[..., top:top + height, left:left + width]


class KeystoneDataset(StereoDataset):
    """KeystoneDepth (historical stereo photographs), laid out as the seed reads it.

    Pairs are any ``<stem>L.png`` under ``root`` with ``<stem>R.png`` beside it. Their disparities are
    ``<stem>L.exr`` and ``<stem>R.exr`` in ``<up2>/processed/rectified/disp_info_LR/``, where ``<up2>`` is
    the folder two levels above the image folder (e.g. images in ``<scene>/processed/rectified/`` and
    disparities in ``<scene>/processed/rectified/disp_info_LR/``). Alternatively ``pairs_file`` lists the
    items, one per line, as ``left,right,disp_left,disp_right`` paths relative to ``root`` (the seed's
    ``training_paths.txt``).

    The four files of an item often differ in size by a few pixels; like the seed, every array is
    centre-cropped to the smallest height and width among them. EXR values are used as stored; only
    non-finite values are invalid.

    Raises:
        DatasetError: no root, no ``*L.png`` images, a missing right image or disparity, or an
            unreadable pairs file / EXR.
    """

    def __init__(self, root: PathLike, pairs_file: PathLike | None = None, right_disparity: bool | None = None,
                 channels: int = 3) -> None:
        _check_channels(channels)
        root = _require_dir(Path(root), 'KeystoneDepth root')
        items = self._from_pairs_file(root, Path(pairs_file)) if pairs_file is not None else self._discover(root)
        for item in items:
            for needed in (item.right, item.disp_left):
                if needed is not None and not needed.is_file():
                    raise DatasetError(f'KeystoneDepth {root}: {needed} is missing (needed by {item.left})')
        super().__init__(root, _resolve_right(items, right_disparity, root, 'KeystoneDepth'), _decode_exr, channels)

    @staticmethod
    def _discover(root: Path) -> list[_PairFiles]:
        items: list[_PairFiles] = []
        for left in sorted(root.rglob('*L.png')):
            stem = left.stem[:-1]
            disparity_folder = left.parent.parent.parent / 'processed' / 'rectified' / 'disp_info_LR'
            items.append(_PairFiles(_relative_name(left, root), left, left.with_name(f'{stem}R.png'),
                                    disparity_folder / f'{stem}L.exr', disparity_folder / f'{stem}R.exr'))
        if not items:
            raise DatasetError(f'KeystoneDepth root {root}: no *L.png images found')
        return items

    @staticmethod
    def _from_pairs_file(root: Path, pairs_file: Path) -> list[_PairFiles]:
        try:
            lines = pairs_file.read_text(encoding='utf-8').splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f'cannot read KeystoneDepth pairs file {pairs_file}: {err}') from err
        items: list[_PairFiles] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = [part.strip() for part in line.split(',')]
            if len(fields) != 4:
                raise DatasetError(f'{pairs_file}:{number}: expected left,right,disp_left,disp_right, got {line!r}')
            left, right, disp_left, disp_right = (root / part for part in fields)
            items.append(_PairFiles(fields[0], left, right, disp_left, disp_right))
        if not items:
            raise DatasetError(f'KeystoneDepth pairs file {pairs_file}: no items')
        return items

    def __getitem__(self, index: int) -> StereoSample:
        if not -len(self.items) <= index < len(self.items):
            raise IndexError(f'index {index} out of range for {len(self.items)} items')
        item = self.items[index]
        left, right, disp_left, disp_right = self._read(item)
        tensors = [left, right] + [torch.from_numpy(d) for d in (disp_left, disp_right) if d is not None]
        height = min(int(t.shape[-2]) for t in tensors)
        width = min(int(t.shape[-1]) for t in tensors)
        left, right = _center_crop(left, height, width), _center_crop(right, height, width)
        cropped = [np.ascontiguousarray(_center_crop(torch.from_numpy(d), height, width).numpy())
                   if d is not None else None for d in (disp_left, disp_right)]
        return _make_sample(item.name, left.contiguous(), right.contiguous(), cropped[0], cropped[1])


# --- a plain folder of pairs -----------------------------------------------------------------------

_IMAGE_SUFFIXES = frozenset({'.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp'})
_DISPARITY_SUFFIXES = ('.pfm', '.npy', '.png')


def _decode_folder_disparity(path: Path) -> FloatImage:
    """Plain-folder ground truth by extension: ``.pfm``/``.npy`` float (non-finite = invalid) or KITTI PNG."""
    if path.suffix.lower() == '.png':
        return _decode_kitti_png(path)
    return _decode_array_file(path)


class PairFolderDataset(StereoDataset):
    """A folder with ``left/`` and ``right/`` images of matching file names and optional ``disparity/``.

    Ground truth for ``left/<stem>.<ext>`` is ``disparity/<stem>.pfm``, ``.npy`` (float pixels,
    non-finite = invalid) or ``.png`` (16-bit, value / 256, 0 = invalid, as KITTI); the first that exists
    in that order. When ``disparity/`` exists every pair must have a file there.

    Raises:
        DatasetError: ``left/`` or ``right/`` missing, no images, a left image without its right image,
            or (with ``disparity/``) without ground truth.
    """

    def __init__(self, root: PathLike, channels: int = 3) -> None:
        _check_channels(channels)
        root = _require_dir(Path(root), 'pair folder root')
        left_folder = _require_dir(root / 'left', 'pair folder')
        right_folder = _require_dir(root / 'right', 'pair folder')
        disp_folder = root / 'disparity'
        has_disparity = disp_folder.is_dir()
        items: list[_PairFiles] = []
        for left in sorted(left_folder.iterdir()):
            if not left.is_file() or left.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            right = right_folder / left.name
            if not right.is_file():
                raise DatasetError(f'pair folder {root}: {right} is missing (needed by {left})')
            disparity = None
            if has_disparity:
                disparity = _first_existing(disp_folder, (left.stem + suffix for suffix in _DISPARITY_SUFFIXES))
                if disparity is None:
                    raise DatasetError(f'pair folder {root}: no disparity for {left.name} in {disp_folder} '
                                       f'(looked for {left.stem}.pfm, .npy, .png)')
            items.append(_PairFiles(_relative_name(left, root), left, right, disparity))
        if not items:
            raise DatasetError(f'pair folder {root}: no images in {left_folder}')
        super().__init__(root, items, _decode_folder_disparity, channels)


# --- augmentation helper ---------------------------------------------------------------------------

def random_crop(sample: StereoSample, height: int, width: int, rng: np.random.Generator) -> StereoSample:
    """Crop every image-like entry of ``sample`` with the same random ``height x width`` window.

    Tensors ``(C, H, W)`` (images, disparities, masks) are cropped alike; ``name`` is kept. The window is
    uniform over all positions (``rng.integers``), so a fixed seed gives a fixed crop. Returns a new dict
    with contiguous copies; the input is not changed.

    Raises:
        DatasetError: the crop is larger than the sample, a size is not positive, or the entries of
            ``sample`` differ in size.
    """
    if height <= 0 or width <= 0:
        raise DatasetError(f'crop size must be positive, got {height}x{width}')
    tensors = {key: value for key, value in sample.items() if isinstance(value, torch.Tensor)}
    sizes = {tuple(value.shape[-2:]) for value in tensors.values()}
    if len(sizes) != 1:
        raise DatasetError(f'sample entries differ in size: { {k: tuple(v.shape) for k, v in tensors.items()} }')
    full_height, full_width = sizes.pop()
    if height > full_height or width > full_width:
        raise DatasetError(f'crop {height}x{width} is larger than the sample ({full_height}x{full_width})')
    top = int(rng.integers(0, full_height - height + 1))
    left = int(rng.integers(0, full_width - width + 1))
    cropped: StereoSample = {'left': sample['left'], 'right': sample['right'], 'name': sample['name']}
    for key, value in tensors.items():
        cropped[key] = value[..., top:top + height, left:left + width].contiguous()  # type: ignore[literal-required]
    return cropped
