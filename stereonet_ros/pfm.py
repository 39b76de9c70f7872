"""Portable Float Map (PFM) files: the float format of SceneFlow and Middlebury ground truth.

A PFM file is a text header (``Pf`` for one channel, ``PF`` for three; ``width height``; a scale
whose sign gives the byte order, negative = little-endian) followed by float32 rows stored
**bottom-to-top**. ``read_pfm`` returns rows top-to-bottom, as every other image here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt


class PfmError(ValueError):
    """A file is not a readable PFM, or an array cannot be written as one."""



def read_pfm(path: str | os.PathLike[str]) -> npt.NDArray[np.float32]:
    """Read a PFM file.

    Returns:
        ``(H, W)`` float32 for ``Pf``, ``(H, W, 3)`` float32 for ``PF``, rows top-to-bottom,
        native byte order. Values are returned as stored (``inf`` stays ``inf``).

    Raises:
        PfmError: the file is missing, not PFM, or shorter than its header says.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PfmError(f'cannot read PFM file {path}: {err.strerror}') from err
    fields: list[bytes] = []
    position = 0
    while len(fields) < 4:
        while position < len(raw) and raw[position:position + 1].isspace():
            position += 1
        start = position
        while position < len(raw) and not raw[position:position + 1].isspace():
            position += 1
        if start == position:
            raise PfmError(f'{path}: truncated PFM header')
        fields.append(raw[start:position])
    position += 1  # the single whitespace byte that ends the header
    kind, width_text, height_text, scale_text = fields
    if kind not in (b'Pf', b'PF'):
        raise PfmError(f'{path}: not a PFM file (magic {kind[:8]!r}, expected Pf or PF)')
    try:
        width, height, scale = int(width_text), int(height_text), float(scale_text)
    except ValueError as err:
        raise PfmError(f'{path}: malformed PFM header {b" ".join(fields[1:])!r}') from err
    if width <= 0 or height <= 0 or scale == 0.0:
        raise PfmError(f'{path}: malformed PFM header (width {width}, height {height}, scale {scale})')
    channels = 3 if kind == b'PF' else 1
    count = width * height * channels
    dtype = np.dtype('<f4' if scale < 0 else '>f4')
    if len(raw) - position < count * 4:
        raise PfmError(f'{path}: PFM data truncated ({len(raw) - position} bytes, '
                       f'header says {count * 4})')
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=position)
    shape = (height, width, 3) if channels == 3 else (height, width)
    # Rows are stored bottom-to-top.
    return np.ascontiguousarray(data.reshape(shape)[::-1]).astype(np.float32)


def write_pfm(path: str | os.PathLike[str], array: npt.ArrayLike) -> None:
    """Write ``(H, W)`` or ``(H, W, 3)`` values as a little-endian float32 PFM file.

    Raises:
        PfmError: the array has another shape.
    """
    values = np.asarray(array, dtype=np.float32)
    if values.ndim == 2:
        kind = b'Pf'
    elif values.ndim == 3 and values.shape[2] == 3:
        kind = b'PF'
    else:
        raise PfmError(f'PFM holds (H, W) or (H, W, 3) arrays, got shape {values.shape}')
    height, width = values.shape[:2]
    header = kind + b'\n' + f'{width} {height}\n-1.0\n'.encode('ascii')
    body = np.ascontiguousarray(values[::-1]).astype('<f4').tobytes()
    Path(path).write_bytes(header + body)
