"""Inbox: the SMTP listener. It accepts mail and makes it durable; it does not understand it.

This is the only module that imports aiosmtpd. One handler (`_Handler`) holds the protocol
decisions in small hooks, as aiosmtpd intends:
- RCPT: the caller's `RcptPolicy` says which of our addresses it is, `rcpt_reply` turns a
  refusal into SMTP words (we are never an open relay); at most `MAX_RECIPIENTS` per message.
- MAIL: any sender, including the null sender `<>` that bounces use (stored as "").
- DATA: size checked again, line endings checked (see below), then `Spool.put` in a worker
  thread (the fsyncs must not stall other sessions), and only then `250`. A failed write
  answers `451` so the sending MTA retries: nothing is lost. After a `250` the caller's
  `on_spooled(id)` is scheduled on the event loop; it must be cheap and thread-safe (it runs
  on the listener's thread), and its exceptions are logged, never raised into the session.

Line endings (SMTP smuggling, CVE-2023-51764/51765/51766): aiosmtpd >= 1.4.5 ends DATA only
at <CR><LF>.<CR><LF>, so a smuggled terminator can never split one transaction into two. What
remains is the content itself: a bare LF or bare CR reaches us unchanged, and Python's email
parser treats it as a line break, so `Subject: hi<LF>X-Injected: yes` would read as two
headers. Policy:
- in the header section (everything before the first empty CRLF line): refused with
  `550 5.6.0`, as Postfix and Exim do since the smuggling CVEs. Real MTAs send CRLF; a
  header with a bare newline is either broken or an attack, and a permanent refusal tells
  the sender instead of guessing.
- in the body: normalised to CRLF. A body cannot inject headers, and normalising stores the
  lines exactly as the parser would read them anyway; refusing would bounce replies from
  sloppy clients for no safety gain.
Messages that are clean CRLF are stored byte for byte as received.

Sessions are capped at `max_connections` (the extra ones get `421` and are closed), idle
ones are cut after `timeout_seconds` (aiosmtpd's timer, reset by each command). Optional
STARTTLS and AUTH (AUTH then required, and only over TLS).

Floods and hostile clients (for a listener that faces other servers directly; issue 12):
- At most `max_sessions_per_client` sessions per client address (`421` beyond). The MTA in
  front (`trusted_peers`, loopback by default) is exempt, and its sessions have a pool of
  their own (up to `max_connections` more), so no flood can lock it out.
- Idle means no progress: aiosmtpd resets its timer on every command, so a client sending
  NOOP (or RSET, EHLO, HELO) every 30 s held a session forever. A second timer here is
  reset only by MAIL, RCPT, DATA, AUTH and STARTTLS; `timeout_seconds` without one of
  them and the session is closed.
- A DATA line that never ends: aiosmtpd (1.4.6, `smtp_DATA`) drains an over-long line with
  `read(n)` and keeps every drained piece in a list until the line ends, so memory grew
  with the line whatever `data_size_limit` said. The session's stream reader here throws
  drained bytes away (aiosmtpd only counts or discards them) and closes the session once
  more than `max_message_bytes` were drained: memory stays bounded by the limit.
- Disk: below `min_free_bytes` free where the spool lives, MAIL and RCPT get
  `452 4.3.1 Insufficient system storage` (the space left is for the database and the
  outgoing queue); asked at every MAIL, so taking mail resumes by itself.
- Quotas on held mail (waiting in the spool or quarantined; nothing accepted is ever
  deleted for them): for any recipient that is not a signed reply address (`Rcpt.TOKEN`:
  those are ours, sent to members), at most `held_per_sender` messages from
  one envelope sender (the null sender of bounces excepted: it is everybody's) and
  `held_max_bytes` in all; over either, RCPT gets `452`. Strangers
  writing to the plain address fill the quarantine only this far, and members' replies to
  their own addresses still get through.
Every refusal of this kind is counted in `Listener.refusals` (by reason) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import re
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailflow.config import Config
from mailflow.errors import ListenerError
from mailflow.spool import Spool
from mailflow.tokens import Rcpt

log = logging.getLogger("mailflow.inbox")

MAX_RECIPIENTS = 20
# Enough to overlap a few fsyncs; more threads only queue on the same disk.
SPOOL_WORKERS = 8

REPLY_OK = "250 OK"
REPLY_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
REPLY_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
REPLY_BARE_LF = "550 5.6.0 bare LF not allowed in message header"
REPLY_TRY_LATER = "451 4.3.0 try again later"
REPLY_TOO_MANY_CONNS = "421 4.7.0 too many connections, try again later"
REPLY_TOO_MANY_FROM_YOU = "421 4.7.0 too many connections from your address, try again later"
REPLY_NO_STORAGE = "452 4.3.1 Insufficient system storage"
REPLY_SENDER_QUOTA = "452 4.2.2 too much mail held from this sender, try again later"
REPLY_TOTAL_QUOTA = "452 4.3.1 too much mail held, try again later"
REPLY_TOO_MUCH_DATA = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"

DEFAULT_TRUSTED_PEERS = ("127.0.0.1", "::1")

# A bare LF (not preceded by CR) or a bare CR (not followed by LF).
_BARE = re.compile(rb"(?<!\r)\n|\r(?!\n)")


class RcptPolicy(Protocol):
    def __call__(self, address: str) -> Rcpt:
        """Which of our addresses `address` is (`tokens.classify_rcpt`); see `rcpt_reply`."""
        ...


def rcpt_reply(verdict: Rcpt, address: str) -> str | None:
    """The SMTP refusal for a recipient we do not take, or None to accept it."""
    if verdict.accepted:
        return None
    addr = address.strip().strip("<>")
    if verdict is Rcpt.FOREIGN:
        return f"550 5.7.1 <{addr}>: relaying denied"
    return f"550 5.1.1 <{addr}>: no such check-in address"


@dataclass
class ListenerOptions:
    host: str
    port: int
    max_message_bytes: int
    timeout_seconds: int
    max_connections: int
    hostname: str  # our domain, shown in the banner
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_starttls: bool = False
    auth_users: dict[str, str] | None = None  # username -> password; when set AUTH is required
    # Issue 12 (see the module docstring). 0 turns a limit off.
    max_sessions_per_client: int = 10
    trusted_peers: Sequence[str] = DEFAULT_TRUSTED_PEERS  # addresses or networks (CIDR)
    min_free_bytes: int = 100 * 1024 * 1024  # [service] min_free_mb
    held_per_sender: int = 20  # [listener] quarantine_max_per_sender
    held_max_bytes: int = 100 * 1024 * 1024  # [listener] quarantine_max_mb


def options_from_config(
    config: Config, *, auth_users: dict[str, str] | None = None
) -> ListenerOptions:
    """The listener's options from the configuration: every `[listener]` key, and
    `[service] domain` (the banner) and `min_free_mb` (the disk floor)."""
    lc = config.listener
    return ListenerOptions(
        host=lc.host,
        port=lc.port,
        max_message_bytes=lc.max_message_bytes,
        timeout_seconds=lc.timeout_seconds,
        max_connections=lc.max_connections,
        hostname=config.service.domain,
        tls_cert=lc.tls_cert,
        tls_key=lc.tls_key,
        require_starttls=lc.require_starttls,
        auth_users=auth_users,
        max_sessions_per_client=lc.max_sessions_per_client,
        trusted_peers=lc.trusted_peers,
        min_free_bytes=config.service.min_free_mb * 1024 * 1024,
        held_per_sender=lc.quarantine_max_per_sender,
        held_max_bytes=lc.quarantine_max_mb * 1024 * 1024,
    )


class BareNewlineError(ValueError):
    """A bare LF or CR in the header section."""


def normalise_line_endings(raw: bytes) -> bytes:
    """Apply the line-ending policy of the module docstring; BareNewlineError if refused."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") == crlf and raw.count(b"\r") == crlf:
        # The normal case, store exactly what was sent: every LF has its CR and every CR
        # its LF. Three counts in C; the regex search below cost ~0.2 ms per 3 KB message
        # on the listener's thread (its lookbehind is tried at every byte).
        return raw
    end = raw.find(b"\r\n\r\n")
    header = raw if end < 0 else raw[: end + 2]
    if raw.startswith(b"\r\n"):
        header = b""  # an empty header section: everything is body
    if _BARE.search(header):
        raise BareNewlineError("bare LF or CR in the header section")
    body_start = len(header)
    return raw[:body_start] + _BARE.sub(b"\r\n", raw[body_start:])


def _peer_ip(peer: Any) -> str:
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # "::ffff:127.0.0.1" is 127.0.0.1
    return str(ip)


def _networks(peers: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for text in peers:
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ListenerError(f"listener: trusted_peers: not an address: {text!r}") from None
    return tuple(nets)


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


class _Handler:
    """aiosmtpd handler: one small hook per protocol decision."""

    def __init__(
        self,
        options: ListenerOptions,
        spool: Spool,
        rcpt_policy: RcptPolicy,
        on_spooled: Callable[[str], None],
        clock: Callable[[], datetime],
        executor: ThreadPoolExecutor,
    ) -> None:
        self.options = options
        self.spool = spool
        self.rcpt_policy = rcpt_policy
        self.on_spooled = on_spooled
        self.clock = clock
        self.executor = executor
        # Refusals by reason ("disk", "sender_quota", "total_quota", "per_client", "idle",
        # "endless_line"); only the listener's thread writes it.
        self.refusals: Counter[str] = Counter()

    def refuse(self, reason: str) -> None:
        self.refusals[reason] += 1

    def _no_room(self, peer: str, what: str) -> bool:
        if self.spool.has_room(self.options.min_free_bytes):
            return False
        self.refuse("disk")
        log.warning(
            "refused %s from %s: less than %d MB free for the spool",
            what,
            peer,
            self.options.min_free_bytes // (1024 * 1024),
        )
        return True

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self._no_room(_peer_text(session.peer), "mail"):
            return REPLY_NO_STORAGE
        # aiosmtpd hands the null reverse-path over as "<>"; bounces come that way and must
        # be accepted. It is recorded as "<>" here (aiosmtpd tests mail_from for truth) and
        # spooled as "".
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return REPLY_OK

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        peer = _peer_text(session.peer)
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            log.info("refused rcpt %s from %s: too many recipients", address, peer)
            return REPLY_TOO_MANY_RCPTS
        if self._no_room(peer, f"rcpt {address}"):
            return REPLY_NO_STORAGE
        try:
            kind = self.rcpt_policy(address)
            verdict = rcpt_reply(kind, address)
        except Exception:
            # A broken policy must not accept (open relay) nor crash the session.
            log.exception("rcpt policy failed for %s; answering 451", address)
            return REPLY_TRY_LATER
        if verdict is not None:
            log.info("refused rcpt %s from %s: %s", address, peer, verdict)
            return verdict
        if kind is not Rcpt.TOKEN:  # a signed reply address is ours, sent to a member
            over = await self._over_quota(envelope.mail_from)
            if over is not None:
                log.warning(
                    "refused rcpt %s from %s <%s>: %s", address, peer, envelope.mail_from, over
                )
                return over
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return REPLY_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = _peer_text(session.peer)
        raw = envelope.original_content
        if raw is None:
            content = envelope.content
            raw = (
                content.encode("utf-8", "surrogateescape")
                if isinstance(content, str)
                else (content or b"")
            )
        if len(raw) > self.options.max_message_bytes:
            # aiosmtpd already refuses over data_size_limit; this guards the exact limit
            # (its count includes dot-stuffing) and any future change of that behaviour.
            log.info("refused message from %s: %d bytes over limit", peer, len(raw))
            return REPLY_TOO_BIG
        try:
            raw = normalise_line_endings(raw)
        except BareNewlineError:
            log.info("refused message from %s: bare LF/CR in header section", peer)
            return REPLY_BARE_LF
        mail_from = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        rcpts = tuple(envelope.rcpt_tos)
        put = partial(
            self.spool.put,
            raw,
            mail_from=mail_from,
            rcpt_tos=rcpts,
            peer=peer,
            received_at=self.clock(),
        )
        loop = asyncio.get_running_loop()
        try:
            entry_id = await loop.run_in_executor(self.executor, put)
        except Exception:
            log.exception("spool write failed for message from %s; answering 451", peer)
            return REPLY_TRY_LATER
        log.info(
            "accepted %s from %s: %d bytes, mail_from=<%s>, rcpt=%s",
            entry_id,
            peer,
            len(raw),
            mail_from,
            ",".join(rcpts),
        )
        # Scheduled, not called: the 250 goes out first and a slow callback cannot delay it.
        loop.call_soon(self._notify, entry_id)
        return f"250 2.0.0 Queued as {entry_id}"

    async def _over_quota(self, mail_from: str | None) -> str | None:
        """The 452 answer when the held mail is over a quota, else None."""
        o = self.options
        if o.held_per_sender <= 0 and o.held_max_bytes <= 0:
            return None
        loop = asyncio.get_running_loop()
        try:
            # Listing the spool and the quarantine is file I/O: off the event loop.
            held = await loop.run_in_executor(self.executor, self.spool.held)
        except Exception:  # a quota we cannot count must not refuse mail
            log.exception("counting held mail failed; quotas not applied")
            return None
        sender = "" if mail_from in (None, "<>") else str(mail_from)
        # The null sender is every bounce's: not one sender, so only the total applies.
        if sender and o.held_per_sender > 0 and held.from_sender(sender) >= o.held_per_sender:
            self.refuse("sender_quota")
            return REPLY_SENDER_QUOTA
        if o.held_max_bytes > 0 and held.bytes >= o.held_max_bytes:
            self.refuse("total_quota")
            return REPLY_TOTAL_QUOTA
        return None

    def _notify(self, entry_id: str) -> None:
        try:
            self.on_spooled(entry_id)
        except Exception:
            log.exception("on_spooled(%s) failed; the message stays in the spool", entry_id)


class _Authenticator:
    """Checks AUTH PLAIN/LOGIN against a fixed user table."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = {u.encode("utf-8"): p.encode("utf-8") for u, p in users.items()}

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            expected = self.users.get(auth_data.login)
            # compare_digest even for unknown users, so timing does not reveal who exists.
            ok = hmac.compare_digest(expected or b"\0" * 32, auth_data.password) and (
                expected is not None
            )
            if ok:
                log.info(
                    "auth ok for %s from %s",
                    auth_data.login.decode("utf-8", "replace"),
                    _peer_text(session.peer),
                )
                return AuthResult(success=True)
            log.info(
                "auth failed for %s from %s",
                auth_data.login.decode("utf-8", "replace"),
                _peer_text(session.peer),
            )
        # handled=False: aiosmtpd then answers 535 itself. The default (handled=True) sends
        # nothing and the client waits forever.
        return AuthResult(success=False, handled=False)


class _SessionGate:
    """Counts live sessions, in two pools: the trusted peers (the MTA in front) and everyone
    else, per client address too. Used only on the listener's event loop, so no lock."""

    def __init__(self, limit: int, per_client: int, trusted: Sequence[str]) -> None:
        self.limit = limit
        self.per_client = per_client
        self.trusted = _networks(trusted)
        self.live: set[SMTP] = set()
        self.trusted_live = 0
        self.by_client: Counter[str] = Counter()

    def is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def admit(self, ip: str) -> str | None:
        """None: let the session in (and count it); else the 421 answer."""
        if self.is_trusted(ip):
            if self.trusted_live >= self.limit:
                return REPLY_TOO_MANY_CONNS
            self.trusted_live += 1
            return None
        if len(self.live) - self.trusted_live >= self.limit:
            return REPLY_TOO_MANY_CONNS
        if self.per_client > 0 and self.by_client[ip] >= self.per_client:
            return REPLY_TOO_MANY_FROM_YOU
        self.by_client[ip] += 1
        return None

    def release(self, ip: str) -> None:
        if self.is_trusted(ip):
            self.trusted_live -= 1
            return
        self.by_client[ip] -= 1
        if self.by_client[ip] <= 0:
            del self.by_client[ip]


class _DrainingReader(asyncio.StreamReader):
    """aiosmtpd's stream reader, minus the unbounded memory of a line that never ends.

    aiosmtpd reads a line too long for its limit in pieces with `read(n)`: in DATA it keeps
    every piece until the line ends (to then refuse the message), elsewhere it drops them.
    Here `read` drops them always (returns b""), and once more than `drain_limit` bytes
    were drained since the last complete line, answers 552 and closes the session.
    """

    drain_limit: int = 0
    drained: int = 0
    on_endless: Callable[[], None] | None = None

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        line = await super().readuntil(separator)
        self.drained = 0
        return line

    async def read(self, n: int = -1) -> bytes:
        data = await super().read(n)
        self.drained += len(data)
        if self.drain_limit and self.drained > self.drain_limit:
            transport = self._transport  # type: ignore[attr-defined]
            if transport is not None:
                transport.write(REPLY_TOO_MUCH_DATA)
                transport.close()
            if self.on_endless is not None:
                self.on_endless()
            raise ConnectionResetError("line longer than the message size limit")
        return b""


# Commands that move a session forward; anything else (NOOP, RSET, EHLO, HELO, VRFY, HELP,
# an unknown verb) keeps aiosmtpd's timer alive but not ours.
_PROGRESS = ("MAIL", "RCPT", "DATA", "AUTH", "STARTTLS")


class _SMTP(SMTP):
    """aiosmtpd's SMTP with session caps, a progress timer and a bounded line reader."""

    def __init__(self, handler: Any, *, gate: _SessionGate, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._gate = gate
        self._idle_handle: asyncio.TimerHandle | None = None
        reader = self._stream_reader
        if reader is not None:
            # Same object, our subclass: aiosmtpd keeps its own reference to it.
            reader.__class__ = _DrainingReader
            reader.drain_limit = handler.options.max_message_bytes
            reader.on_endless = lambda: handler.refuse("endless_line")

    async def _handle_client(self) -> None:
        # Here rather than in connection_made: this runs once per connection (STARTTLS calls
        # connection_made again) and before the banner, so an extra client gets 421 instead.
        ip = _peer_ip(self.session.peer if self.session else None)
        refusal = self._gate.admit(ip)
        if refusal is not None:
            if refusal == REPLY_TOO_MANY_FROM_YOU:
                self.event_handler.refuse("per_client")
            log.warning(
                "refused connection from %s: %d sessions live (%d from it)",
                _peer_text(self.session.peer if self.session else None),
                len(self._gate.live),
                self._gate.by_client.get(ip, 0),
            )
            await self.push(refusal)
            if self.transport is not None:
                self.transport.close()
            return
        self._gate.live.add(self)
        self._progress()
        try:
            await super()._handle_client()
        finally:
            self._gate.live.discard(self)
            self._gate.release(ip)
            if self._idle_handle is not None:
                self._idle_handle.cancel()

    def _progress(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self._idle_handle = self.loop.call_later(self._timeout_duration, self._idle)

    def _timeout_cb(self) -> None:
        # aiosmtpd's own timer (no bytes at all for the timeout): also a session cut for want
        # of progress, counted with ours so `status` shows every slot freed this way.
        self.event_handler.refuse("idle")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _idle(self) -> None:
        log.info(
            "%s: no progress in %s s; closing",
            _peer_text(self.session.peer if self.session else None),
            self._timeout_duration,
        )
        self.event_handler.refuse("idle")
        if self.transport is not None:
            self.transport.close()

    async def smtp_MAIL(self, arg: str) -> None:
        self._progress()
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str) -> None:
        self._progress()
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self._progress()
        await super().smtp_DATA(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        self._progress()
        await super().smtp_AUTH(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        self._progress()
        await super().smtp_STARTTLS(arg)


class _Controller(Controller):
    def __init__(self, handler: _Handler, gate: _SessionGate, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._gate = gate

    def factory(self) -> SMTP:
        return _SMTP(self.handler, gate=self._gate, **self.SMTP_kwargs)


class Listener:
    """The SMTP listener on its own thread: start(), then stop()."""

    def __init__(
        self,
        options: ListenerOptions,
        spool: Spool,
        rcpt_policy: RcptPolicy,
        on_spooled: Callable[[str], None],
        clock: Callable[[], datetime],
    ) -> None:
        self.options = options
        self.spool = spool
        self.rcpt_policy = rcpt_policy
        self.on_spooled = on_spooled
        self.clock = clock
        self._controller: _Controller | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._gate = _SessionGate(
            options.max_connections, options.max_sessions_per_client, options.trusted_peers
        )
        self._handler: _Handler | None = None

    def _tls_context(self) -> ssl.SSLContext | None:
        o = self.options
        if o.tls_cert is None:
            if o.tls_key is not None or o.require_starttls:
                raise ListenerError("listener: tls_key/require_starttls need tls_cert")
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(o.tls_cert), str(o.tls_key) if o.tls_key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ListenerError(
                f"listener: cannot load TLS certificate {o.tls_cert}: {exc}"
            ) from None
        return ctx

    def _check_port(self) -> None:
        # aiosmtpd reports a taken port only after its ready timeout, and as a bare OSError;
        # a trial bind (with the same SO_REUSEADDR asyncio uses) fails fast and clearly.
        o = self.options
        try:
            infos = socket.getaddrinfo(o.host, o.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ListenerError(f"listener: cannot resolve {o.host}: {exc}") from None
        family, socktype, proto, _, addr = infos[0]
        with socket.socket(family, socktype, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as exc:
                raise ListenerError(
                    f"listener: cannot listen on {o.host}:{o.port}: {exc.strerror or exc}"
                ) from None

    def start(self) -> None:
        if self._controller is not None:
            raise ListenerError("listener already started")
        # aiosmtpd logs every SMTP command at INFO ("mail.log"); that chatter cost about a
        # tenth of the listener's CPU under load, and our handler already logs one line per
        # accepted or refused message.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        o = self.options
        tls = self._tls_context()
        auth_kwargs: dict[str, Any] = {}
        if o.auth_users:
            if tls is None:
                # aiosmtpd refuses AUTH before TLS (auth_require_tls); without a certificate
                # no client could ever log in, so say so now instead of failing every session.
                raise ListenerError("listener: auth_users needs tls_cert (AUTH only over TLS)")
            auth_kwargs = {
                "authenticator": _Authenticator(o.auth_users),
                "auth_required": True,
            }
        self._check_port()
        self._executor = ThreadPoolExecutor(SPOOL_WORKERS, thread_name_prefix="mailflow-spool")
        handler = _Handler(
            o, self.spool, self.rcpt_policy, self.on_spooled, self.clock, self._executor
        )
        self._handler = handler
        controller = _Controller(
            handler,
            self._gate,
            hostname=o.host,  # the bind address; pinned so "localhost" can't become ::1
            port=o.port,
            server_hostname=o.hostname,  # the banner
            ident="mailflow ESMTP",
            # International senders (RFC 6531) can reply: MAIL FROM may be UTF-8.
            enable_SMTPUTF8=True,
            data_size_limit=o.max_message_bytes,
            timeout=o.timeout_seconds,
            tls_context=tls,
            require_starttls=bool(tls and o.require_starttls),
            **auth_kwargs,
        )
        try:
            controller.start()
        except Exception as exc:
            controller.stop(no_assert=True)
            self._executor.shutdown(wait=False)
            self._executor = None
            raise ListenerError(f"listener: cannot start on {o.host}:{o.port}: {exc}") from exc
        self._controller = controller
        log.info(
            "listening on %s:%d as %s (max %d bytes, %d sessions, tls=%s, auth=%s)",
            o.host,
            o.port,
            o.hostname,
            o.max_message_bytes,
            o.max_connections,
            tls is not None,
            bool(o.auth_users),
        )

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is None:
            return

        # Close live sessions first: cancelling their tasks alone leaves sockets open until
        # the loop is closed under them. A message not yet answered was not acknowledged, so
        # the sender retries it.
        def close_sessions() -> None:
            for s in list(self._gate.live):
                if s.transport is not None:
                    s.transport.close()

        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            controller.loop.call_soon_threadsafe(close_sessions)
        controller.stop(no_assert=True)
        if self._executor is not None:
            # wait=True: a spool write in progress finishes (its file is then either
            # committed in new/ or cleaned by recover()), never cut mid-fsync by exit.
            self._executor.shutdown(wait=True)
            self._executor = None
        log.info(
            "listener stopped (%d messages spooled with %d syncs of spool/new: group commit)",
            self.spool.spooled,
            self.spool.dir_syncs,
        )

    @property
    def running(self) -> bool:
        return self._controller is not None

    @property
    def refusals(self) -> dict[str, int]:
        """How often each protection refused someone since start: "disk" (452 below
        min_free), "sender_quota"/"total_quota" (452 over a held-mail quota), "per_client"
        (421), "idle" (closed without progress), "endless_line" (552 and closed)."""
        return dict(self._handler.refusals) if self._handler is not None else {}
