"""Signing in to the admin site: one-time links, sessions, CSRF tokens and attempt limits.

No passwords. An admin asks for a link; we mail one that works once, for 15 minutes. Only a
hash of its token is stored (data_dir/web/auth.json), so a copy of the data directory is no key
to the site, and redeeming marks it used under the file lock, so two clicks cannot both win.
A redeemed link opens a session: a random id, stored hashed on the server with its expiry (so
signing out, or deleting the file, ends it at once), and sent to the browser signed with a key
derived from the service's secret (itsdangerous), in an HttpOnly, SameSite=Strict cookie.

CSRF: every form carries HMAC(key, "csrf:" + the session id), or, before signing in, the same
over an anonymous random cookie; a POST whose token does not match is refused. SameSite=Strict
already keeps other sites' forms from carrying our cookies; the token also covers browsers
and proxies that do not honour it.

Attempts are limited per client address and per typed address (`RateLimit`), in memory of the
process that serves the site: a restart forgets them, which is harmless at these numbers.
Nothing here reads the clock: every decision takes the `now` the caller got from its clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from filelock import FileLock
from itsdangerous import BadSignature, Signer

from mailflow.outbox import write_atomic

LINK_LIFETIME = timedelta(minutes=15)
SESSION_LIFETIME = timedelta(hours=12)
TOKEN_BYTES = 32  # 256 bits: guessing one is not a plan, rate limit or not


class LinkRefused(Exception):
    """A sign-in link that cannot be used (unknown, used, or expired); str() says which."""


@dataclass(frozen=True)
class Session:
    email: str
    binding: str  # what the CSRF token is bound to (the session id's hash)
    expires: datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def derive_key(secret: bytes) -> bytes:
    """The site's own key, derived from the service's secret: one secret to keep, and a
    leaked web key says nothing about reply tokens."""
    return hmac.new(secret, b"mailflow web admin v1", hashlib.sha256).digest()


class Auth:
    """Links and sessions of one data directory; safe across threads and processes."""

    def __init__(self, state_dir: Path, key: bytes) -> None:
        self.path = state_dir / "auth.json"
        self.key = key
        self._signer = Signer(key, salt="mailflow-session")
        self._lock = FileLock(str(self.path) + ".lock", timeout=30)
        self._guard = threading.Lock()
        # The parsed file, reused while its stat stamp holds: every request checks a session.
        self._cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    # -- the state file --------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {"links": {}, "sessions": {}}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._guard:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            # A damaged file only signs everybody out; a new link fixes that.
            data = {}
        data = {
            "links": data.get("links", {}) if isinstance(data, dict) else {},
            "sessions": data.get("sessions", {}) if isinstance(data, dict) else {},
        }
        with self._guard:
            self._cache = (stamp, data)
        return data

    @contextmanager
    def _change(self, now: datetime) -> Iterator[dict[str, Any]]:
        """Read-modify-write under the file lock; expired entries are dropped on the way."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            current = self._read()
            data = {
                "links": {
                    k: v
                    for k, v in current["links"].items()
                    if datetime.fromisoformat(v["expires"]) > now - LINK_LIFETIME
                },
                "sessions": {
                    k: v
                    for k, v in current["sessions"].items()
                    if datetime.fromisoformat(v["expires"]) > now
                },
            }
            yield data
            write_atomic(self.path, json.dumps(data, indent=1).encode("utf-8"))

    # -- links -----------------------------------------------------------------------------

    def issue_link(self, email: str, now: datetime) -> str:
        """A new one-time token for `email`; only its hash is stored."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._change(now) as data:
            data["links"][_hash(token)] = {
                "email": email,
                "created": now.isoformat(),
                "expires": (now + LINK_LIFETIME).isoformat(),
                "used": None,
            }
        return token

    def _check(self, link: dict[str, Any] | None, now: datetime) -> str:
        if link is None:
            raise LinkRefused("this sign-in link is not valid (it may be mistyped or very old)")
        if link.get("used"):
            raise LinkRefused("this sign-in link has already been used")
        if datetime.fromisoformat(link["expires"]) <= now:
            raise LinkRefused("this sign-in link has expired (links work for 15 minutes)")
        return str(link["email"])

    def peek_link(self, token: str, now: datetime) -> str:
        """Whose link this is, without using it up; LinkRefused when it can't be used."""
        return self._check(self._read()["links"].get(_hash(token)), now)

    def redeem_link(self, token: str, now: datetime) -> str:
        """Use the link up and return its address; LinkRefused when it can't be used."""
        with self._change(now) as data:
            link = data["links"].get(_hash(token))
            email = self._check(link, now)
            assert link is not None
            data["links"][_hash(token)] = {**link, "used": now.isoformat()}
        return email

    # -- sessions --------------------------------------------------------------------------

    def open_session(self, email: str, now: datetime) -> str:
        """A new session for `email`; returns the signed cookie value."""
        sid = secrets.token_urlsafe(TOKEN_BYTES)
        with self._change(now) as data:
            data["sessions"][_hash(sid)] = {
                "email": email,
                "created": now.isoformat(),
                "expires": (now + SESSION_LIFETIME).isoformat(),
            }
        return self._signer.sign(sid).decode("ascii")

    def _sid(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            return self._signer.unsign(cookie.encode("ascii", "replace")).decode("ascii")
        except (BadSignature, UnicodeDecodeError):
            return None

    def session(self, cookie: str | None, now: datetime) -> Session | None:
        """The live session a cookie names, or None (forged, expired or signed out)."""
        sid = self._sid(cookie)
        if sid is None:
            return None
        record = self._read()["sessions"].get(_hash(sid))
        if record is None:
            return None
        expires = datetime.fromisoformat(record["expires"])
        if expires <= now:
            return None
        return Session(str(record["email"]), _hash(sid), expires)

    def close_session(self, cookie: str | None, now: datetime) -> None:
        sid = self._sid(cookie)
        if sid is None:
            return
        with self._change(now) as data:
            data["sessions"].pop(_hash(sid), None)

    # -- CSRF ------------------------------------------------------------------------------

    def csrf_token(self, binding: str) -> str:
        return hmac.new(self.key, f"csrf:{binding}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, binding: str | None, token: str | None) -> bool:
        if not binding or not token:
            return False
        return hmac.compare_digest(self.csrf_token(binding), token)


def new_anonymous_id() -> str:
    """The random value of the pre-sign-in cookie that the sign-in forms' CSRF token binds to."""
    return secrets.token_urlsafe(24)


class RateLimit:
    """At most `limit` hits per key in any `window`; `hit` says how long to wait (0: go on).

    A sliding window over the hits' times, which come from the caller's clock.
    """

    def __init__(self, limit: int, window: timedelta) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[datetime]] = {}
        self._guard = threading.Lock()

    def hit(self, key: str, now: datetime) -> float:
        with self._guard:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(1.0, (hits[0] + self.window - now).total_seconds())
            hits.append(now)
            if len(self._hits) > 10_000:  # bounded memory under a spray of addresses
                for k in [k for k, v in self._hits.items() if not v][:5_000]:
                    del self._hits[k]
            return 0.0
