"""The streamer's own video encoder: frames → ``av.Packet`` handed to aiortc pre-encoded.

Why not let aiortc encode? Three measured problems with its built-in
encoders for *this* server (synthetic, stamped frames on a shared 2-core box):

* VP8 is configured with an aggressive temporal denoiser (noise-sensitivity 4)
  and CPU-adaptive speed; under load it leaves stale blocks in the frame stamp
  band — live at 320×176 about one frame in four lost its stamp, while the
  same frames encoded with the denoiser off decode every time.
* Every REMB change of more than 10 % rebuilds the encoder (an IDR frame and a
  CPU spike, several times per 10 s on loopback; see PITFALLS.md).
* Each spectator would need its own encoder; a broadcast server forwards one
  encoded stream instead, and so does ours.

An aiortc ``RTCRtpSender`` whose track returns ``av.Packet`` objects only
packetizes them (``Encoder.pack``), so with this encoder the bitrate, the
key-frame policy and the codec options are ours. Picture-loss feedback
(PLI/FIR) from any receiver is routed to :meth:`VideoEncoder.request_keyframe`
(aiortc's own key-frame flag only affects its encoder).

Settings: VP8 — realtime deadline, libvpx's adaptive speed (-6), no denoiser,
CBR; H.264 — libx264 ``veryfast``/zerolatency constrained baseline (what
``42e01f`` promises), level 3.1 (fits 1280×704 at 30 fps), one slice, Annex B
with SPS/PPS repeated on every IDR. Bitrate: VP8 0.04 bit per pixel per frame
within 0.5–1.2 Mbit/s (libvpx's encode time grows steeply with bitrate here:
≈ 5 ms at 1 Mbit/s, > 60 ms at 2.7 Mbit/s for 1280×704); H.264 0.07 bit/pixel
within 0.5–3 Mbit/s. No periodic key frames: one at start, on size change and
on request.

Not thread-safe: one track's frames are encoded one at a time (in the loop's
executor).
"""

from __future__ import annotations

import fractions
import threading
from typing import Any

import av
from aiortc import RTCRtpCodecCapability, RTCRtpSender
from aiortc.sdp import SessionDescription

__all__ = ["VideoEncoder", "bitrate_for", "codec_preferences", "negotiated_video_codec"]

#: codec → (bits per pixel per frame, min bit/s, max bit/s); see the module docstring
_RATE = {"vp8": (0.04, 500_000, 1_200_000), "h264": (0.07, 500_000, 3_000_000)}


def bitrate_for(codec: str, width: int, height: int, fps: float) -> int:
    """Target bit/s of ``codec`` for a frame size (module docstring)."""
    bpp, low, high = _RATE[codec]
    return int(min(high, max(low, width * height * fps * bpp)))


class VideoEncoder:
    """Encodes ``yuv420p`` frames of one track to VP8 or H.264 packets.

    :meth:`encode` is CPU-bound (≈ 0.8 ms VP8 / 0.4 ms H.264 at 320×176,
    ≈ 5 / 5.5 ms at 1280×704 here): call it off the loop. :meth:`request_keyframe`
    is thread-safe and non-blocking (any thread).
    """

    def __init__(self, codec: str, fps: float) -> None:
        if codec not in ("vp8", "h264"):
            raise ValueError(f"codec must be 'vp8' or 'h264', not {codec!r}")
        self.codec_name = codec
        self._fps = float(fps)
        self._ctx: av.video.codeccontext.VideoCodecContext | None = None
        self._keyframe = threading.Event()
        self.keyframes = 0
        self.packets = 0

    def request_keyframe(self) -> None:
        """Make the next encoded frame a key frame (PLI/FIR, new spectator)."""
        self._keyframe.set()

    def _open(self, width: int, height: int) -> av.video.codeccontext.VideoCodecContext:
        bitrate = bitrate_for(self.codec_name, width, height, self._fps)
        if self.codec_name == "vp8":
            ctx = av.CodecContext.create("libvpx", "w")
            ctx.options = {
                "deadline": "realtime",
                "cpu-used": "-6",
                "lag-in-frames": "0",
                "noise-sensitivity": "0",  # the denoiser is what blurs the stamp band
                "static-thresh": "0",
                "minrate": str(bitrate),
                "maxrate": str(bitrate),
                "bufsize": str(bitrate),
                "undershoot-pct": "95",
                "overshoot-pct": "15",
            }
            ctx.qmin = 2
            ctx.qmax = 56
            # One thread: on a loaded 2-core machine a second libvpx worker thread
            # that is not scheduled stalls every encode (measured 100-400 ms).
            ctx.thread_count = 1
        else:
            ctx = av.CodecContext.create("libx264", "w")
            ctx.options = {
                "preset": "veryfast",
                "tune": "zerolatency",
                "profile": "baseline",  # x264 baseline == constrained baseline
                "level": "31",
                "x264-params": "repeat-headers=1:slices=1:keyint=infinite:scenecut=0",
            }
            ctx.thread_count = 1
        ctx.width = width
        ctx.height = height
        ctx.pix_fmt = "yuv420p"
        ctx.bit_rate = bitrate
        if self.codec_name == "h264":
            # libx264 needs a frame rate for its rate control. libvpx is left at
            # its defaults: with a 1/90000 time base set here, its adaptive speed
            # control measured 5-10x slower at 1280×704.
            ctx.framerate = fractions.Fraction(round(self._fps * 1000), 1000)
            ctx.time_base = fractions.Fraction(1, 90000)
        ctx.gop_size = 1_000_000  # key frames only on request (see module docstring)
        ctx.open()
        return ctx

    def encode(self, frame: av.VideoFrame) -> av.Packet[Any] | None:
        """One frame → one packet (pts/time_base copied), or None if the codec held it."""
        ctx = self._ctx
        if ctx is None or frame.width != ctx.width or frame.height != ctx.height:
            ctx = self._ctx = self._open(frame.width, frame.height)
            self._keyframe.set()
        if self._keyframe.is_set():
            self._keyframe.clear()
            frame.pict_type = av.video.frame.PictureType.I
        else:
            frame.pict_type = av.video.frame.PictureType.NONE
        data = b"".join(bytes(p) for p in ctx.encode(frame))
        if not data:
            return None
        packet = av.Packet(data)
        packet.pts = frame.pts
        packet.dts = frame.pts
        packet.time_base = frame.time_base or fractions.Fraction(1, 90000)
        if frame.pict_type == av.video.frame.PictureType.I:
            packet.is_keyframe = True
            self.keyframes += 1
        self.packets += 1
        return packet

    def close(self) -> None:
        self._ctx = None


def codec_preferences(choice: str) -> list[RTCRtpCodecCapability]:
    """aiortc video codec capabilities for ``ServerConfig.codec`` ("vp8", "h264", "any").

    Non-blocking. H.264 is limited to constrained baseline (42001f / 42e01f) with
    packetization-mode 1 — what both official clients decode. RTX stays in so
    NACK retransmissions keep working. Raises ``ValueError`` for other choices.
    """
    if choice not in ("vp8", "h264", "any"):
        raise ValueError(f"codec must be 'vp8', 'h264' or 'any', not {choice!r}")
    caps = RTCRtpSender.getCapabilities("video").codecs
    vp8 = [c for c in caps if c.mimeType.lower() == "video/vp8"]
    h264 = [
        c
        for c in caps
        if c.mimeType.lower() == "video/h264"
        and c.parameters.get("packetization-mode") == "1"
        and str(c.parameters.get("profile-level-id", "")).lower() in ("42001f", "42e01f")
    ]
    rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
    chosen = {"vp8": vp8, "h264": h264, "any": vp8 + h264}[choice]
    return chosen + rtx


def negotiated_video_codec(sdp: str) -> str | None:
    """"vp8" / "h264" — the first video codec of an SDP (what aiortc's sender uses).

    Non-blocking. None when the SDP has no video section or neither codec.
    """
    try:
        description = SessionDescription.parse(sdp)
    except Exception:
        return None
    for media in description.media:
        if media.kind != "video":
            continue
        for codec in media.rtp.codecs:
            name = codec.mimeType.lower()
            if name == "video/vp8":
                return "vp8"
            if name == "video/h264":
                return "h264"
    return None
