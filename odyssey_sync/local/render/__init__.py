"""The local server's renderer: the synthetic world, frame stamps and MP4 media.

Module map (arrows: "imports"):

* :mod:`.stamp` — the machine-readable frame number + send time band;
* :mod:`.scene` — scenes built once per prompt (tiles, objects, caption);
* :mod:`.world` — ``World``: frames composed from scenes → scene, stamp;
* :mod:`.media` — recordings and simulation outputs as MP4, image decoding → world.

Pure computation: no I/O but the files :mod:`.media` writes, no asyncio.
"""
