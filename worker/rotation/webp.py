"""A lossy WebP's quality, read back from its VP8 quantiser."""

from __future__ import annotations

from collections.abc import Iterator

# The coarsest VP8 quantiser index (0..127) libwebp picks for each quality
# 0..100 (measured with Pillow's libwebp 1.6 on a flat image, where it does
# not adapt to content; on photos it stays within ~2 steps of this).
_WEBP_QUANTISER = (
    127, 115, 111, 107, 104, 102, 100, 98, 96, 94, 92, 90, 89, 87, 86, 85, 83, 82, 81, 80, 78,
    77, 76, 75, 74, 73, 72, 71, 70, 69, 68, 67, 66, 65, 64, 64, 63, 62, 61, 60, 59, 59, 58, 57,
    56, 55, 55, 54, 53, 52, 52, 51, 50, 50, 49, 48, 48, 47, 46, 46, 45, 44, 44, 43, 42, 42, 41,
    40, 40, 39, 39, 38, 37, 37, 36, 36, 34, 32, 30, 29, 27, 26, 24, 23, 21, 20, 18, 17, 15, 14,
    12, 11, 10, 8, 7, 6, 5, 3, 2, 1, 0,
)


def webp_quality(data: bytes) -> int | None:
    """The quality a lossy WebP was encoded with, read back from its quantiser; None if lossless.

    Like JPEG's quantisation tables, this re-encodes at the input's own
    quantiser: the lowest quality whose quantiser is at least as fine.
    The key-frame header is read as plain bits, which its uniform 50 %
    probabilities allow (as libwebp's extras/quality_estimate.c does).
    """
    vp8 = _first_vp8_chunk(data)
    if vp8 is None:
        return None
    if data[vp8 + 3 : vp8 + 6] != b"\x9d\x01\x2a":  # key-frame start code
        return 80  # unreadable header: Pillow's default quality
    bits = _Bits(data, (vp8 + 10) * 8)  # after frame tag, start code, width and height
    try:
        bits.read(2)  # colour space, clamping
        segments: list[int] = []
        absolute = False
        if bits.read(1):  # segmentation enabled
            update_map = bits.read(1)
            if bits.read(1):  # segment quantisers follow
                absolute = bool(bits.read(1))
                for _ in range(4):
                    value = bits.read(7) if bits.read(1) else 0
                    segments.append(-value if value and bits.read(1) else value)
                for _ in range(4):
                    bits.skip_if(7)  # filter strengths
            if update_map:
                for _ in range(3):
                    bits.skip_if(8)
        bits.read(10)  # filter type, level, sharpness
        if bits.read(1) and bits.read(1):
            for _ in range(8):
                bits.skip_if(6)
        bits.read(2)  # partitions
        base = bits.read(7)
    except IndexError:
        return 80
    if segments:
        coarsest = max(segments) if absolute else base + max(segments)
    else:
        coarsest = base
    coarsest = max(0, min(127, coarsest))
    return next(q for q, index in enumerate(_WEBP_QUANTISER) if index <= coarsest)


def _first_vp8_chunk(data: bytes) -> int | None:
    """Offset of the payload of the first lossy ("VP8 ") chunk, looking inside animation frames.

    Read as libwebp's demuxer reads it: a frame (ANMF) holds an optional ALPH
    then its VP8/VP8L, and whatever follows is ignored; frames never nest. So
    only one level is looked into, with loops: no file can make this recurse.
    """
    for fourcc, body, end in _riff_chunks(data, 12, len(data)):
        if fourcc == b"VP8 ":
            return body
        if fourcc == b"ANMF":  # 16 bytes of frame header, then the frame's own chunks
            for inner, inner_body, _ in _riff_chunks(data, body + 16, end):
                if inner == b"VP8 ":
                    return inner_body
                if inner != b"ALPH":
                    break
    return None


def _riff_chunks(data: bytes, pos: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(fourcc, payload offset, payload end) of each RIFF chunk from ``pos`` to ``end``."""
    while pos + 8 <= end:
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        yield data[pos : pos + 4], pos + 8, min(pos + 8 + size, end)
        pos += 8 + size + (size & 1)


class _Bits:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError past the end
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def skip_if(self, n: int) -> None:
        if self.read(1):
            self.read(n)
