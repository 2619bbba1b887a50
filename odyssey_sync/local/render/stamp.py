"""Machine-readable frame stamps: frame number and send time, drawn as grey blocks.

The local server stamps every frame it sends with its frame number and the
moment it handed the frame to the encoder, so that tests and benchmarks can
measure latency and loss from the decoded pixels alone — no side channel, no
cooperation from the codec or the transport.

Format (version 1)
------------------

A payload of 72 bits, most significant bit first::

    frame number   24 bits   frame mod 2**24 (≈ 155 h at 30 fps before it wraps)
    send time      32 bits   round(time.monotonic() * 1e6) mod 2**32 (≈ 71.6 min)
    check          16 bits   CRC-16/CCITT (init 0xFFFF) of the 7 bytes above

protected by an extended Hamming code (SEC-DED: 7 parity bits at the
power-of-two positions 1…64 of a 79-bit word plus an overall parity bit in
front, 80 bits in all), so one wrong or unreadable cell is corrected. The 80
bits are XORed with a fixed whitening mask (so uniformly black or white
regions never decode) and drawn as square cells, black for 0 and white for 1,
row by row into a band at the **left edge, one macroblock (16 pixels) below
the top** of the frame. Cells left over in the last row carry an alternating
filler the decoder ignores.

The geometry is a pure function of the frame size (see :func:`stamp_region`):
16-pixel cells when the shorter side is at least 352 pixels, else 8-pixel
cells in whole 16×16 macroblocks; as many columns as fit, as few rows as
needed. A 1280×704 frame carries one 1280×16 row, 704×1280 two 640×16 rows,
320×176 two 320×8 rows, 160×96 and 176×320 four 160×8 rows.

Cells coincide with codec transform blocks and 2×2 chroma sites and are pure
grey, so the stamp survives VP8 and H.264 at real-time bitrates and decodes
the same from RGB, BGR or RGBA pictures. Two placement choices were measured
to matter with VP8 as aiortc configures it (temporal denoiser on): the band
covers whole macroblocks (a macroblock shared with moving content carries
stale cells over from earlier frames), and it stays off the first and last
macroblock rows (there ≈ 4 % of frames lost a frequently changing cell; one
row down, none in 3,600 frames over six sizes).

Decoding
--------

:func:`decode_stamp` reads the mean of the inner part of every cell (edges
are where deblocking and ringing act). A cell whose mean is near mid-grey is
*ambiguous* (an erasure). One erasure or one wrong cell is corrected; more
than that, or a CRC mismatch after correction, fails the decode. A corrupted
or missing stamp therefore decodes to ``None``, never to a wrong number. The
32-bit send time is reconstructed as the full ``time.monotonic()`` value
nearest to the receiver's clock (``now``), so it is exact as long as the
frame is less than ≈ 35 minutes old. ``time.monotonic()`` is the system-wide
``CLOCK_MONOTONIC`` on Linux, so server and client processes on one machine
share it.

All functions here are pure, non-blocking and thread-safe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = [
    "FRAME_BITS",
    "TIME_BITS",
    "FrameStamp",
    "decode_stamp",
    "decode_stamp_raw",
    "stamp_frame",
    "stamp_region",
    "stamp_yuv420",
]

#: bits of the frame number carried by a stamp (frame numbers wrap modulo 2**FRAME_BITS)
FRAME_BITS = 24
#: bits of the microsecond send time carried by a stamp
TIME_BITS = 32
_CRC_BITS = 16
_PAYLOAD_BITS = FRAME_BITS + TIME_BITS + _CRC_BITS  # 72
_CODE_BITS = 80  # overall parity + Hamming(79, 72)
_TOP = 16  # the band starts one macroblock row below the top edge
_FRAME_MOD = 1 << FRAME_BITS
_TIME_MOD = 1 << TIME_BITS

# Levels drawn for a 0 / 1 bit: full black and full white give the largest
# margin against quantisation (they map to Y = 16 / 235 in limited range).
_LOW = 0
_HIGH = 255
# The same levels as BT.601 limited-range luma, for pictures drawn in YUV.
_LOW_Y = 16
_HIGH_Y = 235
_GREY_UV = 128
# A cell mean inside (_AMBIGUOUS_LOW, _AMBIGUOUS_HIGH) is neither black nor white:
# the decode fails rather than guessing. Measured cell means after VP8/H.264 at
# real-time bitrates stay within ≈ 40 levels of 0/255.
_AMBIGUOUS_LOW = 80.0
_AMBIGUOUS_HIGH = 175.0

# A fixed pseudo-random whitening mask (the first 80 bits of SHA-256("odyssey_sync
# stamp v1")), so that frame 0 at time 0 is not an all-black band and uniform
# regions never decode.
_WHITEN = np.unpackbits(np.frombuffer(bytes.fromhex("96823370b602d0952719"), dtype=np.uint8))

# Codeword layout: index 0 is the overall parity bit; indices 1..79 form a
# Hamming code whose parity bits sit at the powers of two and whose data bits
# fill the other 72 positions in order.
_POSITIONS = np.arange(_CODE_BITS, dtype=np.int64)
_PARITY_POS = np.array([1, 2, 4, 8, 16, 32, 64], dtype=np.int64)
_DATA_POS = np.array(
    [i for i in range(1, _CODE_BITS) if i & (i - 1)], dtype=np.int64
)  # 72 positions


@dataclass(frozen=True)
class FrameStamp:
    """A decoded stamp: which frame this is and when the sender sent it.

    ``frame`` is the 0-based frame number within the stream (modulo 2**24);
    ``sent_at`` is the sender's ``time.monotonic()`` in seconds when the frame
    was handed to the encoder (microsecond resolution).
    """

    frame: int
    sent_at: float

    def latency_ms(self, now: float | None = None) -> float:
        """Milliseconds from sending to ``now`` (default: ``time.monotonic()`` now).

        Non-blocking. Meaningful only when the sender and the receiver share
        a monotonic clock (same machine).
        """
        t = time.monotonic() if now is None else now
        return (t - self.sent_at) * 1000.0


@lru_cache(maxsize=64)
def _geometry(width: int, height: int) -> tuple[int, int, int] | None:
    """(cell, columns, rows) of the stamp for a frame size, or None if it does not fit."""
    if width <= 0 or height <= 0:
        return None
    cell = 16 if min(width, height) >= 352 else 8
    max_cols = width // cell
    if max_cols < 1:
        return None
    rows = -(-_CODE_BITS // max_cols)
    cols = -(-_CODE_BITS // rows)
    if cell < 16:
        # Whole 16×16 macroblocks only: a macroblock shared between the stamp and
        # moving picture content makes VP8's motion search and temporal denoiser
        # (aiortc enables noise-sensitivity) smear stale cells into the band.
        rows += rows % 2
        cols = -(-_CODE_BITS // rows)
        cols += cols % 2
        if cols > max_cols:
            return None
    # The stamp may take at most the top half of the frame; below that the frame is
    # too small to carry it (the smallest supported frame is 160×96).
    if _TOP + rows * cell > height // 2:
        return None
    return cell, cols, rows


def stamp_region(width: int, height: int) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the stamp band for a ``width``×``height`` frame.

    Non-blocking, pure. Raises ``ValueError`` when the frame is too small to
    carry a stamp (it needs at least 160×96 pixels).
    """
    if not isinstance(width, int) or not isinstance(height, int):
        raise TypeError("width and height must be int")
    geo = _geometry(width, height)
    if geo is None:
        raise ValueError(f"a {width}x{height} frame is too small to carry a stamp")
    cell, cols, rows = geo
    return 0, _TOP, cols * cell, rows * cell


def _crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): catches any error of ≤ 3 bits."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _syndrome(code: npt.NDArray[np.uint8]) -> int:
    """XOR of the positions (1..79) holding a 1: 0 for a valid Hamming word."""
    return int(np.bitwise_xor.reduce(_POSITIONS[1:][code[1:] != 0], initial=0))


def _codeword(frame: int, time_us: int) -> npt.NDArray[np.uint8]:
    """The whitened 80-bit cell pattern of a stamp."""
    body = ((frame % _FRAME_MOD) << TIME_BITS | (time_us % _TIME_MOD)).to_bytes(7, "big")
    word = body + _crc16(body).to_bytes(2, "big")
    code = np.zeros(_CODE_BITS, dtype=np.uint8)
    code[_DATA_POS] = np.unpackbits(np.frombuffer(word, dtype=np.uint8))
    syndrome = _syndrome(code)
    for p in _PARITY_POS:
        code[p] = 1 if syndrome & int(p) else 0
    code[0] = int(code.sum()) & 1  # overall parity: the whole word has even weight
    return code ^ _WHITEN


def _correct(code: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8] | None:
    """SEC-DED: the corrected (unwhitened) word, or None when ≥ 2 bits are wrong."""
    syndrome = _syndrome(code)
    odd = int(code.sum()) & 1
    if not odd:
        return code if syndrome == 0 else None  # 0 or (at least) 2 errors
    if syndrome >= _CODE_BITS:
        return None  # points outside the word: ≥ 3 errors
    fixed: npt.NDArray[np.uint8] = code.copy()
    fixed[syndrome] ^= 1  # syndrome 0: the overall parity bit itself was wrong
    return fixed


def _filler(n: int) -> npt.NDArray[np.uint8]:
    return np.asarray(np.arange(n) % 2 == 0, dtype=np.uint8)


def _check_image(image: object, name: str = "image") -> npt.NDArray[np.uint8]:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, not {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8, not {image.dtype}")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{name} must be H×W×3 or H×W×4, got shape {image.shape}")
    return image


def _levels(
    width: int, height: int, frame: object, sent_at: float | None, low: int, high: int
) -> npt.NDArray[np.uint8]:
    """The band's pixels (rows*cell × cols*cell) for one stamp, drawn with ``low``/``high``."""
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise TypeError(f"frame must be int, not {type(frame).__name__}")
    if frame < 0:
        raise ValueError(f"frame must be >= 0, got {frame}")
    t = time.monotonic() if sent_at is None else float(sent_at)
    geo = _geometry(width, height)
    if geo is None:
        raise ValueError(f"a {width}x{height} frame is too small to carry a stamp")
    cell, cols, rows = geo
    bits = np.concatenate(
        [_codeword(int(frame), round(t * 1_000_000)), _filler(cols * rows - _CODE_BITS)]
    )
    levels = np.where(bits.reshape(rows, cols) != 0, high, low).astype(np.uint8)
    band: npt.NDArray[np.uint8] = np.repeat(np.repeat(levels, cell, axis=0), cell, axis=1)
    return band


def stamp_yuv420(
    y: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    frame: int,
    sent_at: float | None = None,
) -> None:
    """Draw the stamp in place into the planes of a yuv420p picture.

    Non-blocking, any thread. ``y`` is the H×W luma plane, ``u``/``v`` the
    (H/2)×(W/2) chroma planes (uint8 arrays or writable views of a frame's
    planes). The result is what :func:`stamp_frame` followed by a BT.601
    limited-range conversion gives: luma 16/235, chroma grey with a slight
    per-frame dither (see the comment inside). Raises like :func:`stamp_frame`.
    """
    for name, plane in (("y", y), ("u", u), ("v", v)):
        if not isinstance(plane, np.ndarray) or plane.dtype != np.uint8 or plane.ndim != 2:
            raise TypeError(f"{name} must be a 2-D uint8 numpy.ndarray")
    height, width = y.shape
    band = _levels(width, height, frame, sent_at, _LOW_Y, _HIGH_Y)
    bh, bw = band.shape
    y[_TOP : _TOP + bh, :bw] = band
    # Chroma: grey, dithered by ±4 levels that change every frame. Measured with
    # VP8 as aiortc configures it (temporal denoiser on): perfectly constant
    # chroma in the band lost ≈ 9 % of stamps at 160×96–640×352 (luma updates
    # of whole cell pairs were skipped); with this dither none in 11,700 frames
    # over seven sizes. An RGB picture converted by swscale gets a similar effect
    # from its chroma filter blending the neighbouring picture in. The dither is
    # far too small to move a cell's mean across the decision margins.
    rng = np.random.default_rng(int(frame))
    shape = (bh // 2, bw // 2)
    u[_TOP // 2 : (_TOP + bh) // 2, : bw // 2] = rng.integers(
        _GREY_UV - 4, _GREY_UV + 5, shape, dtype=np.uint8
    )
    v[_TOP // 2 : (_TOP + bh) // 2, : bw // 2] = rng.integers(
        _GREY_UV - 4, _GREY_UV + 5, shape, dtype=np.uint8
    )


def stamp_frame(image: np.ndarray, frame: int, sent_at: float | None = None) -> None:
    """Draw the stamp of ``(frame, sent_at)`` in place into ``image``.

    Non-blocking (≈ 0.1 ms at 1280×704), any thread. ``image`` is an H×W×3
    (or ×4) uint8 array; the stamp band (:func:`stamp_region`) is overwritten
    with grey cells in every channel. ``sent_at`` defaults to
    ``time.monotonic()`` now. Raises ``TypeError`` for a non-uint8 array or a
    non-int frame, ``ValueError`` for a negative frame or a frame too small to
    carry a stamp.
    """
    img = _check_image(image)
    height, width = img.shape[:2]
    band = _levels(width, height, frame, sent_at, _LOW, _HIGH)
    img[_TOP : _TOP + band.shape[0], : band.shape[1], :] = band[:, :, None]


def decode_stamp_raw(image: np.ndarray) -> tuple[int, int] | None:
    """``(frame mod 2**24, send time in µs mod 2**32)`` of a stamped picture, or None.

    Non-blocking, pure. Like :func:`decode_stamp` but without reconstructing
    the full send time — for pictures whose sender clock is unrelated to ours
    (e.g. recordings rendered afterwards).
    """
    img = _check_image(image)
    height, width = img.shape[:2]
    geo = _geometry(width, height)
    if geo is None:
        return None
    cell, cols, rows = geo
    # Grey stamp: summing the three colour channels makes channel order irrelevant
    # (alpha, if present, is ignored).
    band = img[_TOP : _TOP + rows * cell, : cols * cell, :3]
    m = cell // 4  # skip the cell edges, where deblocking/ringing blur neighbours in
    cells = band.reshape(rows, cell, cols, cell, 3)[:, m : cell - m, :, m : cell - m, :]
    means = cells.mean(axis=(1, 3, 4), dtype=np.float32).reshape(-1)[:_CODE_BITS]
    erased = np.flatnonzero((means > _AMBIGUOUS_LOW) & (means < _AMBIGUOUS_HIGH))
    if erased.size > 1:
        return None
    code = (means >= 127.5).astype(np.uint8) ^ _WHITEN
    if erased.size == 1:
        # One unreadable cell: of its two values exactly one gives a valid word
        # (distance 4), unless another cell is also wrong — then give up.
        code[erased[0]] = 0
        if _syndrome(code) or int(code.sum()) & 1:
            code[erased[0]] = 1
            if _syndrome(code) or int(code.sum()) & 1:
                return None
        fixed: npt.NDArray[np.uint8] | None = code
    else:
        fixed = _correct(code)
    if fixed is None:
        return None
    word = np.packbits(fixed[_DATA_POS]).tobytes()
    body, check = word[:7], int.from_bytes(word[7:9], "big")
    if _crc16(body) != check:
        return None
    value = int.from_bytes(body, "big")
    return value >> TIME_BITS, value & (_TIME_MOD - 1)


def decode_stamp(image: np.ndarray, *, now: float | None = None) -> FrameStamp | None:
    """Read the stamp of a decoded picture; ``None`` if it is missing or damaged.

    Non-blocking (≈ 30 µs), pure, any thread. ``image`` is an H×W×3 or H×W×4
    uint8 array in RGB, BGR or RGBA order (the stamp is grey). The 32-bit send
    time is extended to the ``time.monotonic()`` value nearest to ``now``
    (default: ``time.monotonic()`` at the call), so pass the receive time when
    decoding later. Returns ``None`` for frames too small to carry a stamp.
    Raises ``TypeError``/``ValueError`` for a non-uint8 array or a wrong shape.
    """
    raw = decode_stamp_raw(image)
    if raw is None:
        return None
    frame, time_us = raw
    ref_us = round((time.monotonic() if now is None else now) * 1_000_000)
    delta = (time_us - ref_us) % _TIME_MOD
    if delta >= _TIME_MOD // 2:
        delta -= _TIME_MOD
    return FrameStamp(frame=frame, sent_at=(ref_us + delta) / 1_000_000)
