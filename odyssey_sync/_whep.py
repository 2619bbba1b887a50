"""WHEP over the HTTP boundary (PROTOCOL §8.2), and the one ICE-server parser (§4.1).

The spectator's HTTP steps, each blocking the caller's thread for a bounded
time through :class:`~odyssey_sync._http.HttpClient`:

1. :func:`fetch_ice_servers` — ``GET <origin of webrtc_url>/config``;
2. :func:`post_offer` — ``POST {webrtc_url}/whep?token=…`` with the offer SDP,
   returning the answer SDP and the resource URL (``Location``);
3. :func:`delete_resource` — ``DELETE <resource>`` when leaving.

:func:`parse_ice_servers` is the package's only reader of an ``iceServers``
body; it returns plain dicts (``[{"urls": [...], "username"?, "credential"?}]``)
that :mod:`odyssey_sync._rtc` turns into aiortc objects. The client's own
``/config`` (path kept, §4.1) is fetched with :func:`fetch_ice_config` too.

WHEP's status mapping differs from the REST one on purpose (it follows the
protocol): 401 → :class:`~odyssey_sync.errors.OdysseyAuthError` (a
``ValueError``), 404 and every other non-2xx →
:class:`~odyssey_sync.errors.OdysseyConnectionError` with ``status`` set.
The spectator token only ever appears in the POST URL's query: messages and
logs show the URL without it (:func:`~odyssey_sync._http.strip_query`).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urljoin

from ._deadline import Deadline
from ._http import HttpClient, origin, strip_query
from .errors import OdysseyAuthError, OdysseyConnectionError, OdysseyError

__all__ = [
    "DELETE_TIMEOUT",
    "ICE_CONFIG_TIMEOUT",
    "POST_TIMEOUT",
    "delete_resource",
    "fetch_ice_config",
    "fetch_ice_servers",
    "parse_ice_servers",
    "post_offer",
    "whep_endpoint",
]

log = logging.getLogger("odyssey_sync.whep")

#: Step budgets of PROTOCOL §2.2 ("WHEP timings (Py)"); each is further
#: clamped by the caller's deadline.
ICE_CONFIG_TIMEOUT = 5.0
POST_TIMEOUT = 10.0
DELETE_TIMEOUT = 5.0


def whep_endpoint(webrtc_url: str, token: str) -> str:
    """The WHEP POST URL: ``{webrtc_url}/whep?token=<token, fully escaped>``.

    Every reserved character of the token is escaped (``/`` included, unlike
    the reference client), so a token can never change the path or query.
    """
    return f"{webrtc_url.rstrip('/')}/whep?token={quote(token, safe='')}"


def parse_ice_servers(body: Any) -> list[dict[str, Any]]:
    """``{"iceServers": [...]}`` → ``[{"urls": [...], "username"?, "credential"?}]``.

    Pure. Accepts ``urls`` (string or list) or the legacy ``url``; keeps TURN
    credentials (the reference client drops them, so relays never work);
    silently skips malformed entries. An empty result means host candidates
    only — no public STUN server is ever added (PROTOCOL §15.8).
    """
    servers = body.get("iceServers") if isinstance(body, dict) else None
    if not isinstance(servers, list):
        return []
    out: list[dict[str, Any]] = []
    for entry in servers:
        if not isinstance(entry, dict):
            continue
        urls = entry.get("urls", entry.get("url"))
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list):
            continue
        urls = [u for u in urls if isinstance(u, str) and u]
        if not urls:
            continue
        server: dict[str, Any] = {"urls": urls}
        for key in ("username", "credential"):
            if isinstance(entry.get(key), str):
                server[key] = entry[key]
        out.append(server)
    return out


def fetch_ice_config(http: HttpClient, url: str, *, timeout: float) -> list[dict[str, Any]]:
    """``GET url`` and parse its ``iceServers``; any failure → ``[]``.

    Blocking, caller's thread, at most ``timeout`` seconds. Never raises: on
    one machine or a LAN host candidates suffice, and a public STUN fallback
    only slows gathering down where there is no internet.
    """
    try:
        resp = http.request(
            "GET", url, what="fetching the ICE configuration", timeout=max(timeout, 0.01),
            headers={"Cache-Control": "no-store"},
        )
    except OdysseyError as exc:
        log.info("ICE config %s unavailable (%s); using host candidates only",
                 strip_query(url), type(exc).__name__)
        return []
    try:
        if not resp.ok:
            log.warning("ICE config %s answered HTTP %d; using host candidates only",
                        strip_query(url), resp.status_code)
            return []
        return parse_ice_servers(resp.json())
    except ValueError:
        log.info("ICE config %s is not JSON; using host candidates only", strip_query(url))
        return []
    finally:
        resp.close()


def fetch_ice_servers(
    http: HttpClient, webrtc_url: str, deadline: Deadline
) -> list[dict[str, Any]]:
    """The spectator's ICE servers: ``GET <origin of webrtc_url>/config`` (§8.2 step 1).

    Blocking, caller's thread, at most :data:`ICE_CONFIG_TIMEOUT` (and the
    deadline). Returns ``[]`` on any failure or when the deadline is used up
    (the caller's next step then reports the timeout).
    """
    timeout = deadline.clamp(ICE_CONFIG_TIMEOUT)
    if not timeout:
        return []
    return fetch_ice_config(http, origin(webrtc_url) + "/config", timeout=timeout)


def post_offer(
    http: HttpClient, webrtc_url: str, token: str, offer_sdp: str, deadline: Deadline
) -> tuple[str, str | None]:
    """POST the offer; returns ``(answer_sdp, resource_url or None)``.

    Blocking, caller's thread, at most :data:`POST_TIMEOUT` (and the deadline).
    A relative ``Location`` is resolved against the POST URL.

    Raises:
        OdysseyAuthError: 401 (also a ``ValueError``), the token was refused.
        OdysseyConnectionError: 404 (unknown stream) or any other non-2xx status
            (``status`` set), an answer that is not SDP, or a network failure
            (no exception chained: requests' texts would quote the token).
        OdysseyTimeoutError: no answer in time, or ``deadline`` already passed.
    """
    url = whep_endpoint(webrtc_url, token)
    shown = strip_query(url)
    deadline.check("connect_to_stream")
    response = http.request(
        "POST", url, what="WHEP offer", timeout=deadline.clamp(POST_TIMEOUT) or 0.0,
        data=offer_sdp.encode(),
        headers={"Content-Type": "application/sdp", "Accept": "application/sdp"},
        allow_redirects=False,
    )
    try:
        status = response.status_code
        if status == 401:
            raise OdysseyAuthError("spectator token refused (401)", status=401)
        if status == 404:
            raise OdysseyConnectionError(f"broadcast stream not found (404): {shown}",
                                         status=404)
        if not 200 <= status < 300:
            raise OdysseyConnectionError(
                f"WHEP offer to {shown} failed with HTTP {status}", status=status
            )
        answer = response.text
        if "v=0" not in answer[:64]:
            raise OdysseyConnectionError(f"WHEP server at {shown} did not answer with SDP",
                                         status=status)
        location = response.headers.get("Location")
    finally:
        response.close()
    resource = urljoin(url, location) if location else None
    if resource is None:
        log.warning("WHEP server sent no Location header; leaving will not free the viewer slot")
    return answer, resource


def delete_resource(http: HttpClient, resource: str, timeout: float) -> bool:
    """``DELETE <resource>`` (no auth); True on 2xx. Never raises; bounded by ``timeout``."""
    try:
        response = http.request("DELETE", resource, what="WHEP DELETE", timeout=timeout)
    except OdysseyError as exc:
        log.debug("WHEP DELETE %s failed: %s", strip_query(resource), type(exc).__name__)
        return False
    response.close()
    if not response.ok and response.status_code != 404:
        log.debug("WHEP DELETE %s answered HTTP %d", strip_query(resource), response.status_code)
    return bool(response.ok)
