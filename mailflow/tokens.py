"""Our wire marks: reply tokens and addresses, Message-ID forms, the reply marker (pure).

A token names what it answers (kind, partnership, period) and carries an HMAC-SHA256 tag
(130 bits, base32) under the service secret, so the listener can refuse a forged or guessed
address at RCPT time without touching the database, and nobody can mint one for another
partnership. Everything is lower case because some MTAs fold the local part's case.

Everything here is seen by receivers or stored in period files, so none of it may change
between releases (a change re-sends mail or breaks reply matching after an upgrade):
- addresses: `checkin+TOKEN@DOMAIN` (a reply; TOKEN's kind says to what: a check-in `c`, a
  digest `d`, an introduction `a`, a confirmation `v`), `checkin@DOMAIN` (the plain address),
  `bounces@DOMAIN` (our return path); `classify_rcpt` says which one an address is;
- Message-IDs: `<KIND.TOKEN@DOMAIN>` for check-ins, reminders, no-report digests and
  `<digestN.TOKEN@DOMAIN>` for digests (so a reply by reference finds its token), and
  `<NAME.HASH16@DOMAIN>` for every other mail, where HASH16 is `hash16(job key)`;
- `REPLY_MARKER`, the first line of the mails people answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

CHECKIN = "c"  # a member's answer to a check-in or reminder
DIGEST = "d"  # a partner's answer to a digest
AGREE = "a"  # a partner's answer to the introduction (consent)
# A member's answer to a confirmation: the number is the request's (`models.Pending.n`), not
# a partnership's, so the answer confirms exactly the commands that mail showed her.
CONFIRM = "v"
KINDS = (CHECKIN, DIGEST, AGREE, CONFIRM)
LOCAL_PREFIX = "checkin"  # checkin+TOKEN@DOMAIN
PLAIN_LOCAL = LOCAL_PREFIX  # checkin@DOMAIN: members write here without a token
BOUNCE_LOCAL = "bounces"  # bounces@DOMAIN: the return path (envelope sender) of our mail
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


class Rcpt(Enum):
    """Which of our addresses a recipient is; `inbox` turns the refusals into SMTP replies."""

    TOKEN = "token"  # a reply address we signed
    PLAIN = "plain"  # checkin@DOMAIN
    BOUNCES = "bounces"  # bounces@DOMAIN
    FROM = "from"  # our own From address (any domain): a person writing to us
    FOREIGN = "foreign"  # another domain: we never relay
    BAD_TOKEN = "bad_token"  # our domain, but no address we made

    @property
    def accepted(self) -> bool:
        """Whether the listener takes mail for it."""
        return self in (Rcpt.TOKEN, Rcpt.PLAIN, Rcpt.BOUNCES, Rcpt.FROM)


def classify_rcpt(address: str, domain: str, secret: bytes) -> tuple[Rcpt, Token | None]:
    """What `address` (any case, optional <>) is to us, with its token when it is a reply."""
    addr = address.strip().strip("<>")
    local, _, host = addr.rpartition("@")
    if host.lower() != domain.lower():
        return Rcpt.FOREIGN, None
    if local.lower() == BOUNCE_LOCAL:
        return Rcpt.BOUNCES, None
    if local.lower() == PLAIN_LOCAL:
        return Rcpt.PLAIN, None
    raw = token_of_address(addr, domain)
    token = parse_token(secret, raw) if raw else None
    return (Rcpt.TOKEN, token) if token is not None else (Rcpt.BAD_TOKEN, None)


def token_from_ids(ids: Iterable[str], domain: str) -> str | None:
    """Our Message-IDs look like <KIND.TOKEN@DOMAIN>: recover TOKEN from a reference."""
    suffix = "@" + domain.lower()
    for mid in ids:
        value = mid.strip().strip("<>").lower()
        if value.endswith(suffix):
            local = value[: -len(suffix)]
            _, dot, token = local.partition(".")
            if dot and token:
                return token
    return None


def hash16(value: str) -> str:
    """The first 16 hex digits of SHA-256 (surrogates kept): stable ids from job keys."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def token_message_id(kind: str, token: str, domain: str) -> str:
    """`<KIND.TOKEN@DOMAIN>`: a check-in ("checkin"), reminder, "no_report" or "digestN"."""
    return f"<{kind}.{token}@{domain}>"


def letter_message_id(template: str, key: str, domain: str) -> str:
    """`<TEMPLATE.HASH16@DOMAIN>`: every mail that carries no token in its id."""
    return f"<{template}.{hash16(key)}@{domain}>"


@dataclass(frozen=True)
class Keys:
    """The service's signing key and domain: what makes and reads our addresses.

    `mailbox` is our From address (lower case; "" when unknown): people answer mail that has
    no Reply-To, or write to it from their address book, so it is one of ours too.
    """

    secret: bytes = field(repr=False)
    domain: str
    mailbox: str = ""

    def token(self, kind: str, partnership_id: int, period: str) -> str:
        """The token of a reply of `kind` (CHECKIN, DIGEST, AGREE) to a partnership's period
        (CONFIRM: `partnership_id` is the confirmation's number)."""
        return make_token(self.secret, kind, partnership_id, period)

    def address(self, kind: str, partnership_id: int, period: str) -> str:
        """`checkin+TOKEN@DOMAIN` for a reply of `kind` to partnership and period."""
        return reply_address(self.token(kind, partnership_id, period), self.domain)

    @property
    def plain_address(self) -> str:
        """checkin@DOMAIN: where members write without a token."""
        return f"{PLAIN_LOCAL}@{self.domain}"

    @property
    def bounce_address(self) -> str:
        """bounces@DOMAIN: the envelope sender of our mail."""
        return f"{BOUNCE_LOCAL}@{self.domain}"

    def rcpt(self, address: str) -> tuple[Rcpt, Token | None]:
        """`classify_rcpt` with this key and domain; our From address is `Rcpt.FROM` unless
        it is one of the addresses above (then it is that one, and `is_mailbox` says so)."""
        kind, token = classify_rcpt(address, self.domain, self.secret)
        if not kind.accepted and self.is_mailbox(address):
            return Rcpt.FROM, None
        return kind, token

    def is_mailbox(self, address: str) -> bool:
        """Whether `address` (any case, optional <>) is our From address."""
        return bool(self.mailbox) and address.strip().strip("<>").lower() == self.mailbox

    def parse(self, token: str) -> Token | None:
        """`parse_token` with this key: the token's meaning, or None when not ours."""
        return parse_token(self.secret, token)
