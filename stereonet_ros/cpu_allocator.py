"""Keep glibc from handing large freed blocks back to the kernel, for fast CPU inference.

A StereoNet forward at 960x544 allocates and frees dozens of 30-70 MB activations. glibc serves
blocks that large with ``mmap`` and returns them with ``munmap`` on free, so every forward pays
for the kernel zeroing fresh pages again: measured here, about a third of the CPU forward time.
``mallopt`` at run time (not only the ``MALLOC_*_`` environment variables, which must be set before
the process starts) makes the process reuse them:

- ``M_MMAP_MAX = 0``: never serve an allocation with ``mmap`` (the threshold alone cannot be raised
  above 32 MiB, smaller than our activations);
- ``M_TRIM_THRESHOLD = 1 GiB``: do not give the heap's top back after each free;
- ``M_ARENA_MAX = 1``: one heap for all threads, so that inference in a worker thread (as the ROS
  node runs it) gets the same reuse; a thread arena cannot hold blocks of this size.

The node's post-processing (validity, depth, cloud, colour map: a dozen frame-sized arrays per pair)
gains the same way on any device, so :class:`~stereonet_ros.processing.StereoProcessor` applies it too,
whatever runs the network (960x540, every output: 62.6 ms untuned, 32.0 ms tuned).

The cost: the process keeps its peak heap instead of shrinking after a forward. Set the
environment variable ``STEREONET_ALLOCATOR_TUNING=0`` to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import threading

# From glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

TRIM_THRESHOLD_BYTES = 1 << 30

_lock = threading.Lock()
_applied: bool | None = None


@functools.cache  # find_library runs ldconfig: once per process, not once per large frame
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (Linux), else None."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return None
    library = ctypes.util.find_library('c')
    return None if library is None else ctypes.CDLL(library)


def tune_allocator_for_inference() -> bool:
    """Apply the settings above once per process. Returns whether they are in effect.

    Does nothing (returns False) off glibc, or when ``STEREONET_ALLOCATOR_TUNING=0``.
    """
    global _applied
    with _lock:
        if _applied is not None:
            return _applied
        _applied = False
        if os.environ.get('STEREONET_ALLOCATOR_TUNING', '1') == '0':
            return False
        libc = _glibc()
        if libc is None:
            return False
        mallopt = libc.mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        # mallopt returns 1 on success; all three must take effect for the speed-up to hold.
        results = (mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
        _applied = all(result == 1 for result in results)
        return _applied


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the kernel (glibc ``malloc_trim(0)``); whether any were released.

    The tuning above keeps the peak heap for speed; after a rare frame much larger than usual that
    peak is memory the robot needs elsewhere. Does nothing (False) off glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    trim = libc.malloc_trim
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
