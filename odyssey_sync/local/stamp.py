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

The 72 bits are XORed with a fixed whitening mask (so a uniformly black or
white region never decodes) and drawn as square cells, black for 0 and white
for 1, row by row into a band in the **top-left corner** of the frame. Cells
left over in the last row carry an alternating 0/1 filler that the decoder
also checks. The geometry is a pure function of the frame size (see
:func:`stamp_region`): 16-pixel cells when the shorter side is at least 352
pixels, else 8-pixel cells; as many columns as fit, as few rows as needed.
A 1280×704 frame carries one 1152×16 row; 320×176 and 160×96 carry 144×32.

Cells are aligned to 8 pixels so they coincide with codec transform blocks and
2×2 chroma sites, and they are pure grey, so the stamp survives VP8 and H.264
at real-time bitrates and decodes the same from RGB, BGR or RGBA pictures.

Decoding
--------

:func:`decode_stamp` reads the mean of the inner part of every cell (edges
are where deblocking and ringing act). A cell whose mean is near mid-grey is
*ambiguous* and fails the decode; so does a bad filler or CRC. A corrupted or
missing stamp therefore decodes to ``None``, never to a wrong number. The
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
]

#: bits of the frame number carried by a stamp (frame numbers wrap modulo 2**FRAME_BITS)
FRAME_BITS = 24
#: bits of the microsecond send time carried by a stamp
TIME_BITS = 32
_CRC_BITS = 16
_PAYLOAD_BITS = FRAME_BITS + TIME_BITS + _CRC_BITS  # 72
_FRAME_MOD = 1 << FRAME_BITS
_TIME_MOD = 1 << TIME_BITS

# Levels drawn for a 0 / 1 bit: full black and full white give the largest
# margin against quantisation (they map to Y = 16 / 235 in limited range).
_LOW = 0
_HIGH = 255
# A cell mean inside (_AMBIGUOUS_LOW, _AMBIGUOUS_HIGH) is neither black nor white:
# the decode fails rather than guessing. Measured cell means after VP8/H.264 at
# real-time bitrates stay within ≈ 40 levels of 0/255.
_AMBIGUOUS_LOW = 80.0
_AMBIGUOUS_HIGH = 175.0

# A fixed pseudo-random whitening mask (the first 72 bits of
# SHA-256("odyssey_sync stamp v1")),
# so frame 0 at time 0 is not an all-black band, and uniform regions never decode.
_WHITEN = np.unpackbits(np.frombuffer(bytes.fromhex("96823370b602d09527"), dtype=np.uint8))[
    :_PAYLOAD_BITS
]


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
    rows = -(-_PAYLOAD_BITS // max_cols)
    cols = -(-_PAYLOAD_BITS // rows)
    # The stamp may take at most half the frame height; below that the frame is too
    # small to carry it (the smallest supported frame is 144×64).
    if rows * cell > height // 2:
        return None
    return cell, cols, rows


def stamp_region(width: int, height: int) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the stamp band for a ``width``×``height`` frame.

    Non-blocking, pure. Raises ``ValueError`` when the frame is too small to
    carry a stamp (it needs at least 144×64 pixels).
    """
    if not isinstance(width, int) or not isinstance(height, int):
        raise TypeError("width and height must be int")
    geo = _geometry(width, height)
    if geo is None:
        raise ValueError(f"a {width}x{height} frame is too small to carry a stamp")
    cell, cols, rows = geo
    return 0, 0, cols * cell, rows * cell


def _crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): catches any error of ≤ 3 bits."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _payload_bits(frame: int, time_us: int) -> npt.NDArray[np.uint8]:
    body = ((frame % _FRAME_MOD) << TIME_BITS | (time_us % _TIME_MOD)).to_bytes(7, "big")
    word = body + _crc16(body).to_bytes(2, "big")
    bits = np.unpackbits(np.frombuffer(word, dtype=np.uint8))
    return bits ^ _WHITEN


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


def stamp_frame(image: np.ndarray, frame: int, sent_at: float | None = None) -> None:
    """Draw the stamp of ``(frame, sent_at)`` in place into ``image``.

    Non-blocking (≈ 20 µs at 1280×704), any thread. ``image`` is an H×W×3
    (or ×4) uint8 array; the stamp band (:func:`stamp_region`) is overwritten
    with grey cells in every channel. ``sent_at`` defaults to
    ``time.monotonic()`` now. Raises ``TypeError`` for a non-uint8 array or a
    non-int frame, ``ValueError`` for a negative frame or a frame too small to
    carry a stamp.
    """
    img = _check_image(image)
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise TypeError(f"frame must be int, not {type(frame).__name__}")
    if frame < 0:
        raise ValueError(f"frame must be >= 0, got {frame}")
    t = time.monotonic() if sent_at is None else float(sent_at)
    height, width = img.shape[:2]
    geo = _geometry(width, height)
    if geo is None:
        raise ValueError(f"a {width}x{height} frame is too small to carry a stamp")
    cell, cols, rows = geo
    bits = np.concatenate(
        [_payload_bits(int(frame), round(t * 1_000_000)), _filler(cols * rows - _PAYLOAD_BITS)]
    )
    levels = np.where(bits.reshape(rows, cols) != 0, _HIGH, _LOW).astype(np.uint8)
    band = np.repeat(np.repeat(levels, cell, axis=0), cell, axis=1)
    img[: rows * cell, : cols * cell, :] = band[:, :, None]


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
    band = img[: rows * cell, : cols * cell, :3]
    m = cell // 4  # skip the cell edges, where deblocking/ringing blur neighbours in
    cells = band.reshape(rows, cell, cols, cell, 3)[:, m : cell - m, :, m : cell - m, :]
    means = cells.mean(axis=(1, 3, 4), dtype=np.float32).reshape(-1)
    if np.any((means > _AMBIGUOUS_LOW) & (means < _AMBIGUOUS_HIGH)):
        return None
    bits = (means >= 127.5).astype(np.uint8)
    if not np.array_equal(bits[_PAYLOAD_BITS:], _filler(bits.size - _PAYLOAD_BITS)):
        return None
    word = np.packbits(bits[:_PAYLOAD_BITS] ^ _WHITEN).tobytes()
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
