"""Reply tokens: the `checkin+TOKEN@DOMAIN` addresses, HMAC-signed so no lookup is needed.

A token names what it answers (kind, partnership, period) and carries an HMAC-SHA256 tag
(130 bits, base32) under the service secret, so the listener can refuse a forged or guessed
address at RCPT time without touching the database, and nobody can mint one for another
partnership. Everything is lower case because some MTAs fold the local part's case.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

CHECKIN = "c"  # a member's answer to a check-in or reminder
DIGEST = "d"  # a partner's answer to a digest
AGREE = "a"  # a partner's answer to the introduction (consent)
KINDS = (CHECKIN, DIGEST, AGREE)
LOCAL_PREFIX = "checkin"
REPLY_MARKER = "--- reply above this line ---"
"""First line of the check-in and reminder text: the reply parser cuts quoted history there."""
_TOKEN = re.compile(r"^([a-z])(\d{1,9})-(\d{4})w(\d{2})-([a-z2-7]{26})$")


@dataclass(frozen=True)
class Token:
    kind: str
    partnership_id: int
    period: str  # "2026-W48"


def _mac(secret: bytes, label: str) -> str:
    digest = hmac.new(secret, label.encode("ascii"), hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:26]


def make_token(secret: bytes, kind: str, partnership_id: int, period: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown token kind {kind!r}")
    year, week = period.split("-W")
    label = f"{kind}{partnership_id}-{year}w{week}"
    return f"{label}-{_mac(secret, label)}"


def parse_token(secret: bytes, token: str) -> Token | None:
    """The token's meaning, or None when malformed or not signed by us."""
    m = _TOKEN.match(token.lower())
    if not m:
        return None
    kind, pid, year, week, tag = m.groups()
    if kind not in KINDS:
        return None
    label = f"{kind}{pid}-{year}w{week}"
    if not hmac.compare_digest(tag, _mac(secret, label)):
        return None
    return Token(kind=kind, partnership_id=int(pid), period=f"{year}-W{week}")


def reply_address(token: str, domain: str) -> str:
    return f"{LOCAL_PREFIX}+{token}@{domain}"


def token_of_address(address: str, domain: str) -> str | None:
    """TOKEN from `checkin+TOKEN@DOMAIN` (any case, optional <>), else None."""
    addr = address.strip().strip("<>").lower()
    local, sep, host = addr.rpartition("@")
    if not sep or host != domain.lower():
        return None
    prefix, plus, token = local.partition("+")
    if prefix != LOCAL_PREFIX or not plus or not token:
        return None
    return token
