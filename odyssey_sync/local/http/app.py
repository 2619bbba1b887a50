"""The aiohttp application of one local server: HTTP half and real-time half together.

:func:`build_app` registers the REST routes (:mod:`.routes`), the simulation
routes (:mod:`.simulations`) and the real-time half
(:func:`odyssey_sync.local.realtime.signaling.setup_realtime`: signaling,
streamer, WHEP) on one application, behind the shared middlewares
(:mod:`.middleware`), so every route is served on the same host and port.
"""

from __future__ import annotations

from aiohttp import web

from ..realtime.signaling import setup_realtime
from . import routes, simulations
from .backend import BACKEND_KEY, LocalBackend
from .jobs import LARGE_BODY_LIMIT
from .middleware import MIDDLEWARES

__all__ = ["build_app"]


def build_app(backend: LocalBackend) -> web.Application:
    """The application serving ``backend``'s state. Non-blocking; call before it starts."""
    app = web.Application(client_max_size=LARGE_BODY_LIMIT + (1 << 20),
                          middlewares=list(MIDDLEWARES))
    app[BACKEND_KEY] = backend
    routes.add_routes(app)
    simulations.add_routes(app)
    setup_realtime(app, backend.ctx)
    return app
