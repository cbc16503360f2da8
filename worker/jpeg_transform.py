"""Lossless JPEG transforms in the DCT domain through libjpeg-turbo's TurboJPEG C API.

This is what ``jpegtran -perfect -copy all`` does, called in-process: the
quantised DCT coefficients are permuted, never decoded and re-quantised, so
there is no generation loss.

We bind the long-stable ``tjInitTransform``/``tjTransform`` API (TurboJPEG
1.2, present in libjpeg-turbo 1.x, 2.x and 3.x) with ctypes rather than use
PyTurboJPEG: PyTurboJPEG 2.x refuses libjpeg-turbo < 3.0, which is what
Debian 12 ships as ``libturbojpeg0`` (2.1.5), and it has no public rotate.

The library is optional: ``available()`` says whether it could be loaded and
callers fall back to decoding and re-encoding when it cannot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import functools
import sys
from collections.abc import Callable


class Op(enum.IntEnum):
    """TurboJPEG transform operations (TJXOP_*). ROT90/ROT270 are CLOCKWISE, like jpegtran."""

    NONE = 0  # copy the coefficients: used to take the primary image out of an MPO
    HFLIP = 1
    VFLIP = 2
    TRANSPOSE = 3
    TRANSVERSE = 4
    ROT90 = 5
    ROT180 = 6
    ROT270 = 7


_TJXOPT_PERFECT = 1  # fail rather than trim or pad partial edge MCUs
_TJXOPT_PROGRESSIVE = 32
_TJFLAG_LIMITSCANS = 32768  # refuse progressive files with absurd scan counts (CPU bombs)

# Which edges must be whole MCUs for each operation to be exact: the edges that
# end up at the top or left of the output. Same rule as libjpeg's
# jtransform_perfect_transform().
_NEEDS_WHOLE = {
    Op.NONE: (False, False),
    Op.HFLIP: (True, False),  # (width, height)
    Op.VFLIP: (False, True),
    Op.TRANSPOSE: (False, False),
    Op.TRANSVERSE: (True, True),
    Op.ROT90: (False, True),
    Op.ROT180: (True, True),
    Op.ROT270: (True, False),
}

# Luma sampling factors TurboJPEG recognises (chroma at 1x1): 4:4:4, 4:2:2,
# 4:2:0, 4:4:0, 4:1:1, 4:4:1. Anything else it refuses to transform.
_KNOWN_LUMA_SAMPLING = {(1, 1), (2, 1), (2, 2), (1, 2), (4, 1), (1, 4)}


class TransformFailed(Exception):
    """libjpeg-turbo refused, warned about or could not finish the transform (message from the library)."""


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


class _Transform(ctypes.Structure):
    _fields_ = [
        ("r", _Region),
        ("op", ctypes.c_int),
        ("options", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("customFilter", ctypes.c_void_p),
    ]


_LIB_NAMES = {
    "linux": ("libturbojpeg.so.0", "libturbojpeg.so"),
    "darwin": ("libturbojpeg.0.dylib", "libturbojpeg.dylib"),
    "win32": ("turbojpeg.dll",),
}


@functools.cache
def _library() -> ctypes.CDLL | None:
    """Load libturbojpeg once per process; None when it is not installed."""
    names = list(_LIB_NAMES.get(sys.platform, ()))
    found = ctypes.util.find_library("turbojpeg")
    if found:
        names.append(found)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            _declare(lib)
        except AttributeError:  # too old a TurboJPEG (< 2.0): no tjGetErrorStr2
            continue
        return lib
    return None


def _declare(lib: ctypes.CDLL) -> None:
    lib.tjInitTransform.restype = ctypes.c_void_p
    lib.tjInitTransform.argtypes = []
    lib.tjDestroy.restype = ctypes.c_int
    lib.tjDestroy.argtypes = [ctypes.c_void_p]
    lib.tjFree.restype = None
    lib.tjFree.argtypes = [ctypes.c_void_p]
    lib.tjGetErrorStr2.restype = ctypes.c_char_p
    lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
    lib.tjTransform.restype = ctypes.c_int
    lib.tjTransform.argtypes = [
        ctypes.c_void_p,  # handle
        ctypes.c_char_p,  # jpegBuf (read only; bytes are passed without a copy)
        ctypes.c_ulong,  # jpegSize
        ctypes.c_int,  # n
        ctypes.POINTER(ctypes.c_void_p),  # dstBufs
        ctypes.POINTER(ctypes.c_ulong),  # dstSizes
        ctypes.POINTER(_Transform),
        ctypes.c_int,  # flags
    ]


def available() -> bool:
    """Whether libturbojpeg could be loaded on this machine."""
    return _library() is not None


def mcu_size(sampling: list[tuple[int, int]]) -> tuple[int, int] | None:
    """MCU width and height in pixels from each component's (h, v) sampling factors.

    None when TurboJPEG would not recognise the subsampling (and so cannot
    transform the file).
    """
    if not sampling:
        return None
    luma, chroma = sampling[0], sampling[1:]
    if len(sampling) > 1 and (luma not in _KNOWN_LUMA_SAMPLING or any(c != (1, 1) for c in chroma)):
        return None
    if len(sampling) == 1:
        return 8, 8  # greyscale: one component, always 8x8 blocks
    return 8 * luma[0], 8 * luma[1]


def is_perfect(op: Op, width: int, height: int, mcu: tuple[int, int]) -> bool:
    """Whether ``op`` moves only whole MCUs to the output's top/left edges (no trim, no pad)."""
    need_w, need_h = _NEEDS_WHOLE[op]
    return not ((need_w and width % mcu[0]) or (need_h and height % mcu[1]))


def transform(
    data: bytes,
    op: Op,
    *,
    progressive: bool = False,
    patch: Callable[[memoryview], None] | None = None,
) -> bytes:
    """Apply ``op`` losslessly to JPEG ``data``, copying every marker (EXIF, ICC, XMP, comments).

    Uses TJXOPT_PERFECT: raises TransformFailed instead of trimming or padding
    when the edges ``op`` moves are not whole MCUs. ``progressive`` keeps a
    progressive file progressive (the library writes baseline otherwise).
    ``patch`` may edit the output in place before it is copied out (used to
    reset the EXIF orientation without another copy of the file).
    Raises TransformFailed also when libjpeg only warned (e.g. a truncated
    file): the output is then not trusted.
    """
    lib = _library()
    if lib is None:
        raise TransformFailed("libturbojpeg is not installed")
    handle = lib.tjInitTransform()
    if not handle:
        raise TransformFailed("tjInitTransform failed (out of memory?)")
    xform = _Transform(op=int(op), options=_TJXOPT_PERFECT | (_TJXOPT_PROGRESSIVE if progressive else 0))
    out_buf = ctypes.c_void_p()
    out_size = ctypes.c_ulong(0)
    try:
        status = lib.tjTransform(
            handle, data, len(data), 1, ctypes.byref(out_buf), ctypes.byref(out_size),
            ctypes.byref(xform), _TJFLAG_LIMITSCANS,
        )
        if status != 0:
            message = (lib.tjGetErrorStr2(handle) or b"unknown error").decode("utf-8", "replace")
            raise TransformFailed(message)
        view = memoryview((ctypes.c_ubyte * out_size.value).from_address(out_buf.value)).cast("B")
        if patch is not None:
            patch(view)
        return view.tobytes()
    finally:
        if out_buf.value:
            lib.tjFree(out_buf)
        lib.tjDestroy(handle)
