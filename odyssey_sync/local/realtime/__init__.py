"""The real-time half of the local server: signaling, streamer sessions, tracks, WHEP.

Module map (arrows: "imports"):

* :mod:`.encoder` — VP8/H.264 encoder and codec negotiation;
* :mod:`.rtp` — RTP fault seam (loss/reorder) and RTCP feedback routing → faults;
* :mod:`.tracks` — the paced world track and spectator tees → encoder, render.world;
* :mod:`.session` — one connection's streamer: offer/answer, app protocol → tracks, rtp;
* :mod:`.broadcast` — WHEP spectators → tracks, encoder, rtp;
* :mod:`.signaling` — the signaling WebSocket and the hub → session, broadcast.

It talks to the HTTP half only through :class:`~odyssey_sync.local.context.StreamSink`.
"""
