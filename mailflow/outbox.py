"""Outgoing mail: on disk before it is recorded, recorded before it is sent, marked after.

The sender's half of design.md section 7 ("a relay outage delays mail; it never loses or
duplicates it"). The life of one message:

1. `write_message` puts the rendered bytes (CRLF, ready for DATA) in
   data_dir/mail/out/<period>/<name>.eml: temp file, fsync, rename, fsync the directory.
2. The scheduler, in one `store.week_tx(period)`, marks its job done and stores an `Outgoing`
   (status queued) that points at that file. From here on the message cannot be lost: the
   file and the record are both durable, and the job will not render it again.
3. `flush(now)` delivers every queued record whose `next_attempt_at` has come:
   - no relay host (the embedded default): the file is copied into data_dir/outbox/ under a
     name derived from the key, so a repeat copy overwrites instead of duplicating;
   - a relay: one SMTP connection for the whole batch (STARTTLS or implicit TLS, AUTH).
   Outcomes: 250 -> sent; 5xx -> failed with the relay's reason, never retried; 4xx -> stays
   queued, retried after a backoff (60 s doubling, capped at 1 h); the relay unreachable or
   the connection lost -> this and every remaining message of the batch stay queued with
   backoff, and the next flush reconnects.

The at-least-once window. Marks are written in groups (every `mark_every` messages, 200 by
default, and at the end of a flush, also when it fails): rewriting a period file per message
would cost a 10,000-message fan-out 10,000 rewrites of a multi-megabyte file. So a crash
after the relay's 250 and before the group's mark resends at most one group (about a tenth of
a second of sending) on restart; SMTP itself has the same window for a single message (the
connection drops after the final dot but before the 250 arrives). Every resend carries the
same bytes, hence the same stable Message-ID (`make_message_id`), so receivers can drop the
copy. Nothing is ever marked sent that the relay did not accept.

Only one process delivers at a time (a file lock around `flush`), so `tick` run next to
`serve` cannot send the same queued message twice. Nothing here reads the wall clock: `now`
is passed in, which keeps retries testable and deterministic.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import smtplib
import ssl
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

from mailflow.config import RelayConfig
from mailflow.models import FAILED, QUEUED, SENT, Outgoing
from mailflow.store import Store, fsync_dir

log = logging.getLogger("mailflow.outbox")

RECENT_PERIODS = 3  # flush/pending/failed look at this many most recent period files
MARK_EVERY = 200  # group commit size for marks: the most a crash can make us resend
BACKOFF_BASE_SECONDS = 60
BACKOFF_CAP_SECONDS = 3600
FLUSH_LOCK_WAIT_SECONDS = 10.0  # how long a flush waits for another process's flush

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PERIOD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def make_message_id(key: str, domain: str) -> str:
    """A Message-ID that depends only on the key, so a resend keeps it and can be deduped."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return f"<mf.{digest}@{domain}>"


def safe_name(key: str) -> str:
    """A file name for a key: readable, and unique because it ends in the key's hash
    (two keys that slugify alike, "a:b" and "a_b", still get different files)."""
    slug = _UNSAFE.sub("_", key).strip("._")[:80] or "message"
    return f"{slug}.{hashlib.sha256(key.encode('utf-8')).hexdigest()[:12]}"


def backoff(attempts: int) -> timedelta:
    """Delay before the next try after `attempts` failed ones: 60 s, 120 s, ... at most 1 h."""
    exponent = min(max(attempts - 1, 0), 16)  # bounded so a huge count cannot overflow
    return timedelta(seconds=min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**exponent))


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True, sync_file: bool = True) -> None:
    """Replace `path` with `data` so a reader or a crash sees the old file or the new one.

    sync_file=False skips the file's fsync: the caller makes it durable later (os.sync).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if sync_file:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(path.parent)


def _create_new(path: Path, data: bytes) -> bool:
    """Write a file that did not exist, in place (one create, no rename); False if it exists.

    Safe without the temp-file dance because nothing reads a message file before a record
    points at it, and the record is written only after this file is complete and synced. A
    writer that loses the race (the file exists) falls back to an atomic replace.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        with suppress(OSError):
            path.unlink()
        raise
    return True


@dataclass
class FlushResult:
    """What one flush did, for the log line and for `tick`'s output."""

    sent: int = 0
    failed: int = 0
    deferred: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, relay's reason)
    busy: bool = False  # another process was flushing; nothing was attempted

    @property
    def attempted(self) -> int:
        return self.sent + self.failed + self.deferred


# Outcome of one delivery attempt: (kind, reason). "lost" means the connection is unusable.
_Outcome = tuple[str, str]
_SENT, _FAILED, _DEFERRED, _LOST = "sent", "failed", "deferred", "lost"


class _Marks:
    """Group commit of status changes: one week_tx per period file per group."""

    def __init__(self, store: Store, every: int, before_commit: Callable[[], None]) -> None:
        self._store = store
        self._every = max(1, every)
        self._before_commit = before_commit
        self._pending: dict[str, dict[str, Outgoing]] = {}
        self._count = 0

    def add(self, period: str, item: Outgoing) -> None:
        self._pending.setdefault(period, {})[item.key] = item
        self._count += 1
        if self._count >= self._every:
            self.commit()

    def commit(self) -> None:
        if not self._pending:
            return
        # E.g. make the outbox/ renames durable before the records claim "sent".
        self._before_commit()
        for period, items in self._pending.items():
            with self._store.week_tx(period) as view:
                for key, new in items.items():
                    current = view.outgoing(key)
                    # Only a queued record is ours to change; anything else was changed by
                    # someone who knew better (e.g. an admin), so leave it alone.
                    if current is None or current.status != QUEUED:
                        log.warning("outgoing %s is no longer queued; mark skipped", key)
                        continue
                    view.put_outgoing(new)
        self._pending.clear()
        self._count = 0


class Outbox:
    """Delivers recorded outgoing mail through the configured relay or into data_dir/outbox/."""

    def __init__(
        self,
        store: Store,
        relay: RelayConfig,
        password: str | None,
        envelope_from: str,
        data_dir: Path,
        *,
        tls_context: ssl.SSLContext | None = None,
        mark_every: int = MARK_EVERY,
    ) -> None:
        self.store = store
        self.relay = relay
        self._password = password  # never logged, never in a repr or an error
        self.envelope_from = envelope_from
        self.data_dir = data_dir
        self.mark_every = mark_every
        # Verified TLS by default; tests (and private CAs) pass their own context.
        self._tls = tls_context or ssl.create_default_context()
        domain = envelope_from.rpartition("@")[2]
        # Our own name for EHLO: smtplib's default (getfqdn) can stall on a DNS lookup.
        self._helo_name = domain or "localhost"
        self.out_dir = data_dir / "mail" / "out"
        self.file_dir = data_dir / "outbox"
        self._known_dirs: set[Path] = set()
        self._unsynced = False  # write_message(sync=False) happened since the last sync()

    # -- setup --------------------------------------------------------------------------------

    def init(self) -> None:
        """Create the directories and remove temp files a killed writer left behind.
        Call at start, like Store.init, before any other process writes here."""
        for folder in (self.out_dir, self.file_dir):
            self._ensure_dir(folder)
        for folder in (self.file_dir, *[p for p in self.out_dir.iterdir() if p.is_dir()]):
            for tmp in folder.glob(".*.tmp"):
                with suppress(OSError):
                    tmp.unlink()

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        missing = []
        probe = folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        folder.mkdir(parents=True, exist_ok=True)
        # A new directory entry is durable only once its parent is fsynced.
        for created in reversed(missing):
            fsync_dir(created.parent)
        self._known_dirs.add(folder)

    # -- step 1: the rendered message on disk ---------------------------------------------------

    def message_path(self, key: str, period: str) -> Path:
        if not _PERIOD.match(period):
            raise ValueError(f"not a period label: {period!r}")
        return self.out_dir / period / f"{safe_name(key)}.eml"

    def write_message(self, key: str, period: str, msg: EmailMessage, *, sync: bool = True) -> str:
        """Store the message's wire bytes durably; return the path relative to data_dir.

        Idempotent: the same key always maps to the same file, and identical bytes are not
        rewritten. Different bytes replace the file (a render retried after a crash before
        its record was stored).

        sync=False is for a fan-out: the file and directory fsyncs are skipped, and the
        caller must call `sync()` once before storing the records. An fsync costs 0.4-0.7 ms
        on our machines, more than the rest of a check-in's path; one sync() for the batch
        costs about as much as a few of them.
        """
        # CRLF line ends (the SMTP policy), keeping the message's other policy choices (utf8).
        data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
        return self.write_bytes(key, period, data, sync=sync)

    def write_bytes(self, key: str, period: str, data: bytes, *, sync: bool = True) -> str:
        """As write_message, for a message already in its wire form (CRLF line ends)."""
        path = self.message_path(key, period)
        self._ensure_dir(path.parent)
        try:
            same = path.read_bytes() == data
        except FileNotFoundError:
            same = False
        if not same:
            if sync or not _create_new(path, data):
                write_atomic(path, data, sync_dir=sync, sync_file=sync)
            if not sync:
                self._unsynced = True
        return path.relative_to(self.data_dir).as_posix()

    def sync(self) -> None:
        """Make every write_message(..., sync=False) so far durable (files and renames).

        One os.sync() (on Linux it returns once the data is written) commits the whole batch
        in one journal transaction instead of one fsync per file and per rename.
        """
        if self._unsynced:
            os.sync()
            self._unsynced = False

    # -- reading the queue ----------------------------------------------------------------------

    def _periods(self, periods: Sequence[str] | None) -> list[str]:
        chosen = self.store.periods()[-RECENT_PERIODS:] if periods is None else list(periods)
        for period in chosen:
            if not _PERIOD.match(period):
                raise ValueError(f"not a period label: {period!r}")
        return chosen

    def _with_status(self, status: str, periods: Sequence[str] | None) -> list[Outgoing]:
        out = [o for p in self._periods(periods) for o in self.store.week(p).outgoings(status)]
        return sorted(out, key=lambda o: (o.created_at, o.key))

    def pending(self, periods: Sequence[str] | None = None) -> list[Outgoing]:
        """Queued messages in the recent periods."""
        return self._with_status(QUEUED, periods)

    def count(self, status: str, periods: Sequence[str] | None = None) -> int:
        """How many messages of the recent periods are in `status` (for `status`: counting
        builds no object per message, and most of a week's are long sent)."""
        return sum(
            self.store.outgoing_tally(p).counts.get(status, 0) for p in self._periods(periods)
        )

    def failed(self, periods: Sequence[str] | None = None) -> list[Outgoing]:
        """Messages the relay refused permanently, with its reason in `error`."""
        out = [o for p in self._periods(periods) for o in self.store.outgoing_tally(p).failed]
        return sorted(out, key=lambda o: (o.created_at, o.key))

    def _due(self, now: datetime, periods: Sequence[str] | None) -> list[tuple[str, Outgoing]]:
        due = [
            (p, o)
            for p in self._periods(periods)
            for o in self.store.week(p).outgoings(QUEUED)
            if o.next_attempt_at is None or o.next_attempt_at <= now
        ]
        # Oldest first, so a long backlog drains in the order it was queued.
        due.sort(key=lambda po: (po[1].created_at, po[1].key))
        return due

    # -- step 3: delivery -------------------------------------------------------------------------

    def flush(self, now: datetime, periods: Sequence[str] | None = None) -> FlushResult:
        """Deliver every queued message that is due at `now`; see the module docstring."""
        if now.tzinfo is None:
            raise ValueError("flush needs an aware datetime")
        result = FlushResult()
        self._ensure_dir(self.out_dir)
        lock = FileLock(str(self.out_dir / ".flush.lock"), timeout=FLUSH_LOCK_WAIT_SECONDS)
        try:
            lock.acquire()
        except LockTimeout:
            log.info("flush skipped: another process is delivering")
            result.busy = True
            return result
        try:
            # Read the queue only under the lock: what another flusher marked is then visible.
            due = self._due(now, periods)
            if not due:
                return result
            marks = _Marks(
                self.store,
                self.mark_every,
                self._sync_file_dir if not self.relay.host else _nothing,
            )
            try:
                if self.relay.host:
                    self._deliver_relay(due, now, result, marks)
                else:
                    self._deliver_files(due, now, result, marks)
            finally:
                # Also on an unexpected error: what the relay accepted must be marked.
                marks.commit()
        finally:
            lock.release()
        log.info(
            "flush: sent=%d failed=%d deferred=%d", result.sent, result.failed, result.deferred
        )
        return result

    def _settle(
        self,
        period: str,
        item: Outgoing,
        outcome: _Outcome,
        now: datetime,
        result: FlushResult,
        marks: _Marks,
        *,
        quiet: bool = False,
    ) -> None:
        """Record one outcome: the new status goes into the group commit, one log line out."""
        kind, reason = outcome
        attempts = item.attempts + 1
        if kind == _SENT:
            new = replace(
                item, status=SENT, attempts=attempts, sent_at=now, next_attempt_at=None, error=""
            )
            result.sent += 1
            log.info("sent %s to %s %s", item.key, item.to, item.message_id)
        elif kind == _FAILED:
            new = replace(
                item, status=FAILED, attempts=attempts, next_attempt_at=None, error=reason
            )
            result.failed += 1
            result.failures.append((item.key, reason))
            log.warning("failed %s to %s: %s", item.key, item.to, reason)
        else:
            retry = now + backoff(attempts)
            new = replace(item, attempts=attempts, next_attempt_at=retry, error=reason)
            result.deferred += 1
            if not quiet:
                log.warning(
                    "deferred %s to %s (attempt %d, retry at %s): %s",
                    item.key,
                    item.to,
                    attempts,
                    retry.isoformat(),
                    reason,
                )
        marks.add(period, new)

    def _read(self, item: Outgoing) -> bytes | _Outcome:
        try:
            return (self.data_dir / item.path).read_bytes()
        except FileNotFoundError:
            # Without its file the message can never be sent; say so instead of retrying.
            return _FAILED, f"message file missing: {item.path}"
        except OSError as exc:
            return _DEFERRED, f"cannot read {item.path}: {exc.strerror or exc}"

    def _sync_file_dir(self) -> None:
        fsync_dir(self.file_dir)

    def _deliver_files(
        self, due: list[tuple[str, Outgoing]], now: datetime, result: FlushResult, marks: _Marks
    ) -> None:
        self._ensure_dir(self.file_dir)
        for period, item in due:
            data = self._read(item)
            if isinstance(data, tuple):
                self._settle(period, item, data, now, result, marks)
                continue
            try:
                # The name comes from the key, so a copy repeated after a crash replaces the
                # first one: exactly one file per message. The directory fsync happens once
                # per group, before the marks (see _Marks.commit).
                write_atomic(self.file_dir / f"{safe_name(item.key)}.eml", data, sync_dir=False)
            except OSError as exc:  # e.g. disk full: try again later
                self._settle(
                    period, item, (_DEFERRED, f"cannot write outbox: {exc}"), now, result, marks
                )
                continue
            self._settle(period, item, (_SENT, ""), now, result, marks)

    def _connect(self) -> smtplib.SMTP:
        r = self.relay
        conn: smtplib.SMTP
        if r.ssl:
            conn = smtplib.SMTP_SSL(
                r.host,
                r.port,
                local_hostname=self._helo_name,
                timeout=r.timeout_seconds,
                context=self._tls,
            )
        else:
            conn = smtplib.SMTP(
                r.host, r.port, local_hostname=self._helo_name, timeout=r.timeout_seconds
            )
        try:
            conn.ehlo()
            if r.starttls:
                conn.starttls(context=self._tls)
                conn.ehlo()
            if r.username:
                if self._password is None:
                    raise smtplib.SMTPException(
                        f"relay.username is set but ${r.password_env} is not"
                    )
                conn.login(r.username, self._password)
        except BaseException:
            conn.close()
            raise
        return conn

    def _deliver_relay(
        self, due: list[tuple[str, Outgoing]], now: datetime, result: FlushResult, marks: _Marks
    ) -> None:
        where = f"{self.relay.host}:{self.relay.port}"
        try:
            conn = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            reason = f"relay {where} unavailable: {_describe(exc)}"
            # One line for the outage, not one per message of a 10,000-message fan-out.
            log.warning("%s; %d message(s) deferred", reason, len(due))
            for period, item in due:
                self._settle(period, item, (_DEFERRED, reason), now, result, marks, quiet=True)
            return
        log.info("connected to relay %s for %d message(s)", where, len(due))
        try:
            for i, (period, item) in enumerate(due):
                data = self._read(item)
                outcome = data if isinstance(data, tuple) else self._send(conn, item, data)
                if outcome[0] != _LOST:
                    self._settle(period, item, outcome, now, result, marks)
                    continue
                # The connection is gone: this message and the rest wait for the next flush
                # (and its new connection). None of them is marked sent.
                rest = due[i:]
                log.warning(
                    "relay %s connection lost: %s; %d message(s) deferred",
                    where,
                    outcome[1],
                    len(rest),
                )
                for p, it in rest:
                    self._settle(p, it, (_DEFERRED, outcome[1]), now, result, marks, quiet=True)
                return
        finally:
            with suppress(OSError, smtplib.SMTPException):
                conn.quit()
            conn.close()

    def _send(self, conn: smtplib.SMTP, item: Outgoing, data: bytes) -> _Outcome:
        options: list[str] = []
        if not (item.to.isascii() and self.envelope_from.isascii()):
            options.append("SMTPUTF8")
        if not data.isascii() and conn.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        try:
            conn.sendmail(self.envelope_from, [item.to], data, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            code, resp = next(iter(exc.recipients.values()), (-1, b"recipient refused"))
            return _classify(code, resp)
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            return _classify(exc.smtp_code, exc.smtp_error)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            return _LOST, _describe(exc)
        except smtplib.SMTPResponseException as exc:
            return _classify(exc.smtp_code, exc.smtp_error)
        except smtplib.SMTPException as exc:
            return _LOST, _describe(exc)
        return _SENT, ""


def _nothing() -> None:
    pass


def _text(resp: bytes | str) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    return " ".join(text.split())  # multi-line replies become one log-friendly line


def _classify(code: int, resp: bytes | str) -> _Outcome:
    """Map an SMTP reply to an outcome: 5xx permanent, 421 = the server is closing."""
    reason = f"{code} {_text(resp)}".strip()
    if code in (421, 530):
        # 421: the server is closing the connection. 530 (authentication or STARTTLS
        # required) is our configuration, not the message: failing every message of a
        # fan-out for it would lose them all, so wait for the operator instead.
        return _LOST, reason
    if 500 <= code <= 599:
        return _FAILED, reason
    if 400 <= code <= 499:
        return _DEFERRED, reason
    return _LOST, reason  # no valid reply: don't trust the connection any more


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text
