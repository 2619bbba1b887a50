"""Credentials of the local server: API keys, bearer tokens, signaling JWTs, signed URLs.

Everything here is pure (no I/O, no threads): the HTTP half calls it from the
server loop thread. Secrets never appear in reprs, logs or exception texts.

* API keys are stored only as SHA-256 hashes; a presented key is compared with
  :func:`hmac.compare_digest` against every known hash so the time taken does
  not depend on how much of a hash matched.
* Access tokens (``/auth/token``) and signaling tokens (``/sessions/token``)
  are HS256 JWTs signed with the server secret. They carry a ``typ`` claim so
  one kind can never be used as the other.
* Media URLs are signed with HMAC-SHA256 over (resource, kind, expiry).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

__all__ = [
    "AccessClaims",
    "TokenIssuer",
    "generate_api_key",
    "hash_api_key",
    "key_id_for",
    "match_api_key",
    "sign_resource",
    "verify_resource_signature",
]

_ALGORITHM = "HS256"
_ACCESS = "access"
_SESSION = "session"


def generate_api_key() -> str:
    """A fresh development API key (URL-safe, 32 random bytes)."""
    return "ody_local_" + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    """Hex SHA-256 of the key: the only form in which keys are stored."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def key_id_for(key_hash: str) -> str:
    """Public, non-secret identifier of a key (a prefix of its hash)."""
    return "key_" + key_hash[:16]


def match_api_key(api_key: str, key_hashes: Iterable[str]) -> str | None:
    """Return the stored hash equal to ``hash(api_key)``, or None.

    Every candidate is compared in constant time and the loop never exits
    early, so timing reveals neither which key matched nor a prefix of it.
    """
    presented = hash_api_key(api_key).encode("ascii")
    found: str | None = None
    for candidate in key_hashes:
        if hmac.compare_digest(presented, candidate.encode("ascii")):
            found = candidate
    return found


@dataclass(frozen=True)
class AccessClaims:
    """What a valid bearer token says about its holder."""

    key_id: str
    expires_at: float


class TokenIssuer:
    """Issues and verifies the server's JWTs (thread-safe: no mutable state)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("token secret must be at least 32 bytes")
        self._secret = secret

    def __repr__(self) -> str:  # never show the secret
        return "TokenIssuer(<secret hidden>)"

    # -- access tokens ------------------------------------------------------
    def issue_access(self, key_id: str, ttl: int) -> str:
        """A bearer token for ``key_id`` valid for ``ttl`` seconds."""
        now = int(time.time())
        claims = {"typ": _ACCESS, "sub": key_id, "iat": now, "exp": now + ttl,
                  "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify_access(self, token: str) -> AccessClaims | None:
        """Claims of a valid, unexpired access token, else None (never raises)."""
        claims = self._decode(token)
        if claims is None or claims.get("typ") != _ACCESS:
            return None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            return None
        return AccessClaims(key_id=sub, expires_at=float(claims["exp"]))

    # -- signaling tokens ---------------------------------------------------
    def issue_session(self, session_id: str, key_id: str, ttl: int) -> str:
        """A signaling JWT whose ``session_id`` claim names the allocation (§3.5)."""
        now = int(time.time())
        claims = {"typ": _SESSION, "session_id": session_id, "sub": key_id, "iat": now,
                  "exp": now + ttl, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify_session(self, token: str, session_id: str) -> bool:
        """True for a valid, unexpired signaling token issued for ``session_id``."""
        claims = self._decode(token)
        if claims is None or claims.get("typ") != _SESSION:
            return False
        claimed = claims.get("session_id")
        return isinstance(claimed, str) and hmac.compare_digest(
            claimed.encode("utf-8"), session_id.encode("utf-8"))

    def _decode(self, token: str) -> dict[str, Any] | None:
        if not isinstance(token, str) or token.count(".") != 2:
            return None
        try:
            claims = jwt.decode(token, self._secret, algorithms=[_ALGORITHM],
                                options={"require": ["exp"]})
        except jwt.PyJWTError:
            return None
        return claims if isinstance(claims, dict) else None


def _resource_mac(secret: bytes, resource: str, kind: str, expires: int) -> str:
    message = f"{resource}\n{kind}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign_resource(secret: bytes, resource: str, kind: str, expires: int) -> str:
    """The ``sig`` query value of a signed media/script URL."""
    return _resource_mac(secret, resource, kind, expires)


def verify_resource_signature(
    secret: bytes, resource: str, kind: str, expires: str | None, sig: str | None,
    *, now: float | None = None,
) -> bool:
    """True when ``sig`` signs (resource, kind, expires) and ``expires`` is in the future."""
    if not expires or not sig or not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        return False
    when = int(expires)
    if when <= (time.time() if now is None else now):
        return False
    expected = _resource_mac(secret, resource, kind, when)
    return hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii", "replace"))
