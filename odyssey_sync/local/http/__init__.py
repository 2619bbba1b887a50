"""The HTTP half of the local server: app, middleware, routes, simulations, state.

Module map (arrows: "imports"):

* :mod:`.errors` — the protocol's error body (``ApiError``, 422 shapes);
* :mod:`.parsing` — bounded bodies, hostile JSON, strict query values → errors;
* :mod:`.middleware` — CORS, error → JSON, ``//`` merging → errors;
* :mod:`.jobs` — simulation scripts and their runner → parsing, render.media, store;
* :mod:`.backend` — server state, allocations, recordings, the StreamSink → jobs;
* :mod:`.routes` — REST and admin handlers → backend, parsing;
* :mod:`.simulations` — simulation-job handlers → backend, jobs, parsing;
* :mod:`.app` — ``build_app`` → routes, simulations, middleware, realtime.signaling.
"""
