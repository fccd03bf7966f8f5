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
   - a relay: one SMTP connection for the batch (STARTTLS or implicit TLS, AUTH).

Outcomes, per message:
- 250: sent. 5xx: failed with the relay's reason, never retried.
- an international address (RFC 6531): sent as it is, with SMTPUTF8, when the relay offers
  it (`[relay] smtputf8`: "auto" asks the EHLO, "always" assumes it, "never" does not use
  it); otherwise in its ASCII form (IDN domains as A-labels, in the envelope and the
  headers, `mime.downgrade`). An address without an ASCII form (a non-ASCII local part)
  then fails at once with that reason, never retried, and is listed in
  `FlushResult.undeliverable` so the admin can be told.
- 4xx for this message: retried after a backoff (60 s doubling, capped at 1 h); after
  `max_attempts` tries (30 by default, about a day) failed, with the last reason.
- the connection lost while this message was in flight (a relay that drops it after DATA,
  every time): a new connection takes the rest at once, so one poison message never holds
  up the others. The lost message counts as one attempt of its own when the relay took
  other messages in the same flush (so it is the message, not the relay); otherwise it is
  treated as an outage.
- the relay unreachable (refused, 421 greeting, TLS or AUTH failure): an outage. Every due
  message waits (for as long as it has been queued, between 60 s and 1 h) without using up
  an attempt: an outage delays mail, it never makes it fail.

Outcomes are recorded per message, the moment the relay answers. Rewriting a period file
per message would cost a 10,000-message fan-out 10,000 rewrites of a multi-megabyte file, so
each outcome is first appended to a small journal (`mail/out/.outcomes.journal`, 4 MiB
allocated once, so appending needs no new space even on a full disk), and the period files
are updated in groups (every `mark_every`, 200, and at the end of a flush); after that the
journal is emptied. A flush starts by applying what an earlier one left in the journal, and
a message whose outcome is there is never sent again, even while the period file cannot be
written (disk full): a failed mark is retried, never answered by resending. The journal is
written with pwrite (a killed process loses nothing the kernel has) and fdatasync'ed every
20 outcomes and before each group's marks. So a SIGKILL resends at most the message in
flight (the relay said 250 and we died before writing it down, the window SMTP itself
has), a power loss at most the last 20. Every resend carries the same bytes, hence the same
stable Message-ID (`make_message_id`), so receivers can drop the copy. Nothing is ever
marked sent that the relay did not accept.

`flush` never raises: an unexpected error is logged and reported in `FlushResult.errors`,
and what the relay accepted before it is still marked; the caller (the sender thread of a
tick) survives it and reports it. Only one process delivers at a time (a file lock around
`flush`), so `tick` run next to `serve` cannot send the same queued message twice. Nothing
here reads the wall clock: `now` is passed in, which keeps retries testable and
deterministic.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import smtplib
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from filelock import FileLock
from filelock import Timeout as LockTimeout

from mailflow.addresses import SMTPUTF8_NEEDED, ascii_form
from mailflow.config import RelayConfig
from mailflow.disk import REAL, Disk
from mailflow.errors import CorruptFileError, one_line
from mailflow.mime import downgrade, needs_smtputf8, plain_address
from mailflow.models import FAILED, QUEUED, SENT, Outgoing, from_iso, to_iso
from mailflow.store import Store, fsync_dir

log = logging.getLogger("mailflow.outbox")

RECENT_PERIODS = 3  # flush/pending/failed look at this many most recent period files
MARK_EVERY = 200  # period-file marks are written in groups of this many outcomes
BACKOFF_BASE_SECONDS = 60
BACKOFF_CAP_SECONDS = 3600
MAX_ATTEMPTS = 30  # 4xx answers (or drops) for one message before it fails: about a day
MAX_CONNECTIONS_PER_FLUSH = 6  # reconnects after drops; the rest waits for the next flush
FLUSH_LOCK_WAIT_SECONDS = 10.0  # how long a flush waits for another process's flush
JOURNAL_NAME = ".outcomes.journal"
JOURNAL_BYTES = 4 * 1024 * 1024  # about 25,000 outcomes; allocated once, never grows
JOURNAL_SYNC_EVERY = 20  # outcomes between fdatasyncs: what a power loss may resend
JOURNAL_ENTRY_ROOM = 2048  # a message is sent only while its outcome surely fits
_JOURNAL_ERROR_CHARS = 300

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


def outage_wait(item: Outgoing, now: datetime) -> timedelta:
    """How long a message waits out a relay outage: as long as it has been queued, between
    60 s and 1 h. Doubling without a counter, so an outage uses up none of its attempts."""
    age = (now - item.created_at).total_seconds()
    return timedelta(seconds=min(BACKOFF_CAP_SECONDS, max(BACKOFF_BASE_SECONDS, age)))


def write_atomic(
    path: Path,
    data: bytes,
    *,
    sync_dir: bool = True,
    sync_file: bool = True,
    disk: Disk = REAL,
) -> None:
    """Replace `path` with `data` so a reader or a crash sees the old file or the new one.

    sync_file=False skips the file's fsync: the caller makes it durable later (os.sync).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    disk.before_write(tmp, len(data))
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


def _create_new(path: Path, data: bytes, disk: Disk = REAL) -> bool:
    """Write a file that did not exist, in place (one create, no rename); False if it exists.

    Safe without the temp-file dance because nothing reads a message file before a record
    points at it, and the record is written only after this file is complete and synced. A
    writer that loses the race (the file exists) falls back to an atomic replace.
    """
    disk.before_write(path, len(data))
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
    # One line each, for `error:` output and a non-zero exit: marks that could not be
    # written (kept in the journal, retried), an unexpected error that ended the flush early.
    errors: list[str] = field(default_factory=list)
    # Outcomes known (journal or memory) but not yet in the period files: never resent.
    unmarked: int = 0
    # (address, reason, (Message-ID,)): failed because the address cannot travel this way
    # (SMTPUTF8); shaped like a bounce's (address, reason, returned) for `mark_bouncing`.
    undeliverable: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)

    @property
    def attempted(self) -> int:
        return self.sent + self.failed + self.deferred


# Outcome of one delivery attempt: (kind, reason). "lost" means the connection is unusable;
# "outage" means the relay could not be asked at all (no attempt is used up).
_Outcome = tuple[str, str]
_SENT, _FAILED, _DEFERRED, _LOST, _OUTAGE = "sent", "failed", "deferred", "lost", "outage"
_REFUSED = "refused"  # we cannot send it to this address this way: failed, admin told
_LOST_IN_DATA = "lost in data"  # the relay had taken MAIL and RCPT: the message's own attempt


class _Halt(Exception):
    """Stop sending: an outcome could not be written down anywhere durable."""


class _Journal:
    """Outcomes not yet in the period files, appended in place in a preallocated file.

    The file is JOURNAL_BYTES long from its first use; its content is the prefix up to the
    first NUL byte, one JSON line per outcome. Appending overwrites zeros (no new blocks,
    so it works on a full disk); emptying writes zeros back from the start (a crash halfway
    leaves a NUL first, which reads as empty: everything there was already marked).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._end = 0
        self._unsynced = 0

    def open(self) -> list[dict[str, Any]]:
        """Open (allocating the file on first use) and return the entries it holds."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < JOURNAL_BYTES:
                _allocate(fd, JOURNAL_BYTES)
                os.fsync(fd)
                fsync_dir(self.path.parent)
            content = _read_until_nul(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # A torn last line (power loss mid-append) is dropped, and overwritten next.
        self._end = content.rfind(b"\n") + 1
        entries = []
        for line in content[: self._end].splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("k"), str):
                entries.append(entry)
        return entries

    def append(self, entry: dict[str, Any]) -> None:
        assert self._fd is not None
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
        if self._end + len(line) >= JOURNAL_BYTES:  # the last byte stays NUL
            raise OSError(errno.ENOSPC, "outcome journal is full", str(self.path))
        os.pwrite(self._fd, line, self._end)
        self._end += len(line)
        self._unsynced += 1
        if self._unsynced >= JOURNAL_SYNC_EVERY:
            self.sync()

    def room(self) -> int:
        return JOURNAL_BYTES - 1 - self._end

    def sync(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fdatasync(self._fd)
            self._unsynced = 0

    def clear(self) -> None:
        """Empty it: every entry is in the period files now."""
        if self._fd is None or not self._end:
            return
        os.pwrite(self._fd, bytes(self._end), 0)
        os.fdatasync(self._fd)
        self._end = 0
        self._unsynced = 0

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                if self._unsynced:
                    os.fdatasync(fd)
            os.close(fd)


def _allocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        # No fallocate here: real zeros take the space just as well.
        have = os.fstat(fd).st_size
        os.pwrite(fd, bytes(size - have), have)


def _read_until_nul(fd: int) -> bytes:
    out = bytearray()
    offset = 0
    while offset < JOURNAL_BYTES:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            break
        nul = chunk.find(b"\0")
        if nul >= 0:
            out += chunk[:nul]
            break
        out += chunk
        offset += len(chunk)
    return bytes(out)


def _entry(period: str, item: Outgoing) -> dict[str, Any]:
    return {
        "p": period,
        "k": item.key,
        "s": item.status,
        "a": item.attempts,
        "n": to_iso(item.next_attempt_at),
        "t": to_iso(item.sent_at),
        "e": item.error[:_JOURNAL_ERROR_CHARS],
    }


def _apply(current: Outgoing, entry: dict[str, Any]) -> Outgoing | None:
    """`current` with a journalled outcome applied, or None when it no longer applies."""
    # Only a queued record is ours to change; anything else was changed by someone who
    # knew better (e.g. an admin) or by this very entry already.
    if current.status != QUEUED or int(entry.get("a", 0)) < current.attempts:
        return None
    return replace(
        current,
        status=str(entry["s"]),
        attempts=int(entry.get("a", 0)),
        next_attempt_at=from_iso(entry.get("n")),
        sent_at=from_iso(entry.get("t")),
        error=str(entry.get("e", "")),
    )


class _Marks:
    """Outcomes: journalled one by one, written to the period files in groups."""

    def __init__(
        self,
        store: Store,
        journal: _Journal,
        backlog: Iterable[dict[str, Any]],
        every: int,
        before_sync: Callable[[], None],
    ) -> None:
        self._store = store
        self._journal = journal
        self._every = max(1, every)
        self._before_sync = before_sync
        # Everything journalled (or held in memory) since the journal was last emptied, in
        # order: a commit writes all of it, so that emptying the journal loses nothing.
        self.uncommitted: list[dict[str, Any]] = list(backlog)
        self.orphans: list[dict[str, Any]] = []  # sent, but the journal would not take it
        self._since_commit = 0
        self.error: str | None = None

    def add(self, period: str, item: Outgoing) -> None:
        entry = _entry(period, item)
        try:
            self._journal.append(entry)
        except OSError as exc:
            # The outcome is known only here now: keep it, and send nothing more until it
            # is written down (a later flush of this process retries it first).
            self.orphans.append(entry)
            self.uncommitted.append(entry)
            self.error = f"cannot record outcomes in {self._journal.path}: {exc.strerror or exc}"
            raise _Halt(self.error) from exc
        self.uncommitted.append(entry)
        self._since_commit += 1
        if self._since_commit >= self._every:
            self.commit()

    def check_room(self) -> None:
        """_Halt unless the journal surely takes one more outcome: a message is sent only
        when what the relay answers can be written down."""
        if self._journal.room() < JOURNAL_ENTRY_ROOM:
            self.error = (
                f"outcome journal {self._journal.path} is full; nothing more is sent until "
                "the period files can be written"
            )
            raise _Halt(self.error)

    def held_keys(self) -> set[str]:
        return {e["k"] for e in self.uncommitted}

    def commit(self) -> bool:
        """Write every uncommitted outcome to its period file; True when all are written."""
        self._since_commit = 0
        if not self.uncommitted:
            return True
        by_period: dict[str, dict[str, dict[str, Any]]] = {}
        for entry in self.uncommitted:  # in order: the last outcome of a key wins
            by_period.setdefault(str(entry.get("p", "")), {})[entry["k"]] = entry
        try:
            # E.g. make the outbox/ renames durable before the records claim "sent".
            self._before_sync()
            self._journal.sync()
            for period, entries in by_period.items():
                if not _PERIOD.match(period):
                    log.warning("outcome journal: bad period %r skipped", period)
                    continue
                with self._store.week_tx(period) as view:
                    for key, entry in entries.items():
                        current = view.outgoing(key)
                        new = None if current is None else _apply(current, entry)
                        if new is None:
                            if current is None or current.status == QUEUED:
                                log.warning("outgoing %s: outcome not applied", key)
                            continue
                        view.put_outgoing(new)
            self._journal.clear()
        except Exception as exc:  # noqa: BLE001 - kept in the journal; retried, never resent
            self.error = f"cannot mark outcomes: {one_line(str(exc)) or type(exc).__name__}"
            log.error("%s; %d outcome(s) kept in the journal", self.error, len(self.uncommitted))
            return False
        self.uncommitted.clear()
        self.orphans.clear()
        self.error = None
        return True


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
        max_attempts: int = MAX_ATTEMPTS,
        disk: Disk = REAL,
    ) -> None:
        self.store = store
        self.relay = relay
        self.envelope_from = envelope_from
        self.data_dir = data_dir
        self.mark_every = mark_every
        self.max_attempts = max(1, max_attempts)
        self.disk = disk
        # Verified TLS by default; tests (and private CAs) pass their own context.
        tls = tls_context or ssl.create_default_context()
        self._link = _RelayLink(relay, password, envelope_from, tls)
        self.out_dir = data_dir / "mail" / "out"
        self.file_dir = data_dir / "outbox"
        self._known_dirs: set[Path] = set()
        self._unsynced = False  # write_message(sync=False) happened since the last sync()
        self.journal_path = self.out_dir / JOURNAL_NAME
        # Outcomes of an earlier flush of this process that no journal would take (only
        # when the journal itself failed): never resent, written down first next time.
        self._orphans: list[dict[str, Any]] = []

    # -- setup --------------------------------------------------------------------------------

    def init(self) -> None:
        """Create the directories and remove temp files a killed writer left behind.
        Call at start, like Store.init, before any other process writes here."""
        for folder in (self.out_dir, self.file_dir):
            self._ensure_dir(folder)
        # Allocate the outcome journal now, while there is room: on a full disk later it
        # needs none (see _Journal).
        journal = _Journal(self.journal_path)
        try:
            journal.open()
        except OSError as exc:
            log.error("cannot allocate the outcome journal %s: %s", self.journal_path, exc)
        finally:
            journal.close()
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
        if not sync and not path.exists() and _create_new(path, data, self.disk):
            # A fan-out's usual case, the file is new: created at once, without reading it
            # first (a file that exists is compared first, so the same bytes write nothing).
            self._unsynced = True
            return path.relative_to(self.data_dir).as_posix()
        try:
            same = path.read_bytes() == data
        except FileNotFoundError:
            same = False
        if not same:
            if sync or not _create_new(path, data, self.disk):
                write_atomic(path, data, sync_dir=sync, sync_file=sync, disk=self.disk)
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

    def _outgoings(
        self,
        periods: Sequence[str] | None,
        errors: list[str] | None = None,
        status: str | None = None,
    ) -> Iterable[tuple[str, Outgoing]]:
        """(period, record) of the chosen periods (only those in `status`, when given). A
        period file that cannot be read is skipped (and named in `errors`, and in the store's
        problems): its mail waits, the other periods' mail goes."""
        for p in self._periods(periods):
            try:
                items = self.store.week(p).outgoings(status)
            except CorruptFileError as exc:
                if errors is not None:
                    errors.append(f"{exc}; its mail waits until the file is repaired")
                continue
            for o in items:
                yield p, o

    def pending(self, periods: Sequence[str] | None = None) -> list[Outgoing]:
        """Queued messages in the recent periods, oldest first."""
        out = [o for _, o in self._outgoings(periods, status=QUEUED)]
        return sorted(out, key=lambda o: (o.created_at, o.key))

    def count(self, status: str, periods: Sequence[str] | None = None) -> int:
        """How many messages of the recent periods are in `status` (no object per message)."""
        tallies = (self.store.outgoing_tally(p) for p in self._periods(periods))
        return sum(t.counts.get(status, 0) for t in tallies)

    def failed(self, periods: Sequence[str] | None = None) -> list[Outgoing]:
        """Messages the relay refused permanently, with its reason in `error`."""
        out = [o for p in self._periods(periods) for o in self.store.outgoing_tally(p).failed]
        return sorted(out, key=lambda o: (o.created_at, o.key))

    def _due(
        self, now: datetime, periods: Sequence[str] | None, errors: list[str] | None = None
    ) -> list[tuple[str, Outgoing]]:
        due = [
            (p, o)
            for p, o in self._outgoings(periods, errors, QUEUED)
            if o.next_attempt_at is None or o.next_attempt_at <= now
        ]
        # Oldest first, so a long backlog drains in the order it was queued.
        due.sort(key=lambda po: (po[1].created_at, po[1].key))
        return due

    # -- step 3: delivery -------------------------------------------------------------------------

    def flush(self, now: datetime, periods: Sequence[str] | None = None) -> FlushResult:
        """Deliver every queued message that is due at `now`; see the module docstring.

        Never raises (but for a naive `now`): problems are in `FlushResult.errors`.
        """
        if now.tzinfo is None:
            raise ValueError("flush needs an aware datetime")
        result = FlushResult()
        try:
            self._ensure_dir(self.out_dir)
            lock = FileLock(str(self.out_dir / ".flush.lock"), timeout=FLUSH_LOCK_WAIT_SECONDS)
            lock.acquire()
        except LockTimeout:
            log.info("flush skipped: another process is delivering")
            result.busy = True
            return result
        except Exception as exc:  # noqa: BLE001 - e.g. no room for the lock file: retry later
            return self._flush_error(result, "cannot start delivery", exc)
        try:
            self._flush_locked(now, periods, result)
        finally:
            lock.release()
        log.info(
            "flush: sent=%d failed=%d deferred=%d", result.sent, result.failed, result.deferred
        )
        return result

    def _flush_error(self, result: FlushResult, what: str, exc: BaseException) -> FlushResult:
        text = f"{what}: {one_line(str(exc)) or type(exc).__name__}"
        if isinstance(exc, OSError | smtplib.SMTPException):
            log.error("%s", text)
        else:
            log.exception("%s", text)  # a bug: keep the traceback in the log
        result.errors.append(text)
        return result

    def _flush_locked(
        self, now: datetime, periods: Sequence[str] | None, result: FlushResult
    ) -> None:
        journal = _Journal(self.journal_path)
        try:
            backlog = journal.open()
        except OSError as exc:
            # Without a journal an outcome could be lost in a crash and the message resent:
            # send nothing until it can be opened (it is allocated once, on first use).
            self._flush_error(result, f"cannot open the outcome journal {self.journal_path}", exc)
            return
        marks = _Marks(
            self.store,
            journal,
            [*self._orphans, *backlog],
            self.mark_every,
            self._sync_file_dir if not self.relay.host else _nothing,
        )
        try:
            # What an earlier flush learned but could not mark is marked first; if that
            # still fails, those messages are held back (never resent) and the rest flows.
            marks.commit()
            held = marks.held_keys()
            due = [(p, o) for p, o in self._due(now, periods, result.errors) if o.key not in held]
            if due:
                if self.relay.host:
                    self._deliver_relay(due, now, result, marks)
                else:
                    self._deliver_files(due, now, result, marks)
        except _Halt as exc:
            result.errors.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - the sender must survive any error
            self._flush_error(result, "delivery stopped", exc)
        finally:
            # Also after an error: what the relay accepted must be marked (or stay journalled).
            marks.commit()
            if marks.error and marks.error not in result.errors:
                result.errors.append(marks.error)
            self._orphans = list(marks.orphans)
            result.unmarked = len({e["k"] for e in marks.uncommitted})
            journal.close()

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
        """Record one outcome (journal now, period file with its group), one log line."""
        kind, reason = outcome
        attempts = item.attempts + 1
        if kind == _DEFERRED and attempts >= self.max_attempts:
            kind, reason = _FAILED, f"gave up after {attempts} attempts: {reason}"
        if kind == _REFUSED:
            kind = _FAILED
            result.undeliverable.append((item.to, reason, (item.message_id.lower(),)))
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
            if kind == _OUTAGE:  # the relay was not asked: no attempt used up
                attempts, retry = item.attempts, now + outage_wait(item, now)
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
            marks.check_room()
            data = self._read(item)
            if not isinstance(data, tuple):
                # A file has no EHLO: it takes SMTPUTF8 unless the config says never.
                form = wire_form(item.to, data, self.envelope_from, self.relay)
                data = form.data if isinstance(form, Wire) else form
            if isinstance(data, tuple):
                self._settle(period, item, data, now, result, marks)
                continue
            outcome = _write_copy(self.file_dir / f"{safe_name(item.key)}.eml", data, self.disk)
            self._settle(period, item, outcome, now, result, marks)

    def _deliver_relay(
        self, due: list[tuple[str, Outgoing]], now: datetime, result: FlushResult, marks: _Marks
    ) -> None:
        where = f"{self.relay.host}:{self.relay.port}"
        queue = deque(due)
        lost: list[tuple[str, Outgoing, _Outcome]] = []  # in flight when a connection broke
        delivered = False  # the relay took at least one message in this flush
        lost_in_a_row = 0
        for connection in range(MAX_CONNECTIONS_PER_FLUSH):
            if not queue or lost_in_a_row >= 2:
                break  # two drops in a row: the relay, not a message; the rest waits
            try:
                conn = self._link.connect()
            except (OSError, smtplib.SMTPException) as exc:
                reason = f"relay {where} unavailable: {_describe(exc)}"
                # One line for the outage, not one per message of a 10,000-message fan-out.
                log.warning("%s; %d message(s) deferred", reason, len(queue))
                while queue:
                    period, item = queue.popleft()
                    outcome = (_OUTAGE, reason)
                    self._settle(period, item, outcome, now, result, marks, quiet=True)
                break
            if connection == 0:
                log.info("connected to relay %s for %d message(s)", where, len(queue))
            try:
                while queue:
                    period, item = queue[0]
                    marks.check_room()
                    data = self._read(item)
                    outcome = data if isinstance(data, tuple) else self._send(conn, item, data)
                    queue.popleft()
                    if outcome[0] in (_LOST, _LOST_IN_DATA):
                        lost.append((period, item, outcome))
                        lost_in_a_row += 1
                        log.warning(
                            "relay %s connection lost sending %s: %s; %d message(s) left",
                            where,
                            item.key,
                            outcome[1],
                            len(queue),
                        )
                        break  # a new connection for the rest
                    lost_in_a_row = 0
                    delivered = delivered or outcome[0] == _SENT
                    self._settle(period, item, outcome, now, result, marks)
            finally:
                with suppress(OSError, smtplib.SMTPException):
                    conn.quit()
                conn.close()
        # A message in flight when the connection broke uses up an attempt (and "fails"
        # after max_attempts) when the relay had taken its MAIL and RCPT, or took other
        # messages in this flush: then it is the message. Otherwise the relay is in
        # trouble, and that is an outage. What is left in `queue` is untouched: it is still
        # due, and the next flush takes it.
        for period, item, (kind, reason) in lost:
            counted = kind == _LOST_IN_DATA or delivered
            outcome = (_DEFERRED if counted else _OUTAGE, f"connection lost: {reason}")
            self._settle(period, item, outcome, now, result, marks)

    def _send(self, conn: smtplib.SMTP, item: Outgoing, data: bytes) -> _Outcome:
        return self._link.send(conn, item, data)


def _write_copy(path: Path, data: bytes, disk: Disk) -> _Outcome:
    """Deliver to a file. The name comes from the key, so a copy repeated after a crash
    replaces the first one: exactly one file per message. The directory fsync happens before
    the journal's and the marks' (see _Marks.commit)."""
    try:
        write_atomic(path, data, sync_dir=False, disk=disk)
    except OSError as exc:  # e.g. disk full: try again later, no attempt used up
        return (_OUTAGE, f"cannot write outbox: {exc.strerror or exc}")
    return (_SENT, "")


class _RelayLink:
    """The SMTP side of delivery: a connection to the relay, and one transaction per message."""

    def __init__(
        self, relay: RelayConfig, password: str | None, envelope_from: str, tls: ssl.SSLContext
    ) -> None:
        self.relay = relay
        self._password = password  # never logged, never in a repr or an error
        self.envelope_from = envelope_from
        self._tls = tls
        domain = envelope_from.rpartition("@")[2]
        # Our own name for EHLO: smtplib's default (getfqdn) can stall on a DNS lookup.
        self._helo_name = domain or "localhost"

    def connect(self) -> smtplib.SMTP:
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

    def send(self, conn: smtplib.SMTP, item: Outgoing, data: bytes) -> _Outcome:
        """One transaction, step by step (as smtplib's sendmail does), so that a connection
        lost after the relay took MAIL and RCPT (at or after DATA) is told apart from one
        lost before: the first is this message's attempt, the second the relay's trouble."""
        options: list[str] = []
        stage = "mail"
        try:
            conn.ehlo_or_helo_if_needed()
            form = wire_form(item.to, data, self.envelope_from, self.relay, conn)
            if not isinstance(form, Wire):
                return form
            sender, rcpt, data = form.sender, form.rcpt, form.data
            if form.smtputf8:
                options.append("SMTPUTF8")
                # "always": smtplib refuses the option unless the EHLO listed it.
                conn.esmtp_features.setdefault("smtputf8", "")
            if not data.isascii() and conn.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            if conn.does_esmtp and conn.has_extn("size"):
                options.append(f"SIZE={len(data)}")
            code, resp = _mail(conn, sender, options)
            if code == 250:
                stage = "rcpt"
                code, resp = _rcpt(conn, rcpt)
            if code in (250, 251):
                stage = "data"
                code, resp = conn.data(data)
            if code not in (250, 251):
                with suppress(smtplib.SMTPException, OSError):
                    conn.rset()
                return _classify(code, resp)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            return (_LOST_IN_DATA if stage == "data" else _LOST), _describe(exc)
        except smtplib.SMTPResponseException as exc:  # e.g. DATA answered other than 354
            with suppress(smtplib.SMTPException, OSError):
                conn.rset()
            return _classify(exc.smtp_code, exc.smtp_error)
        except smtplib.SMTPException as exc:
            return _LOST, _describe(exc)
        return _SENT, ""


def _mail(conn: smtplib.SMTP, sender: str, options: list[str]) -> tuple[int, bytes]:
    """`conn.mail(sender, options)`: the same command. smtplib quotes every address with
    the email package's address parser, a third of a fan-out sender's time per message;
    a plain address is its own quoted form (`<local@domain>`)."""
    if "SMTPUTF8" in options or not plain_address(sender):
        return conn.mail(sender, options)
    extra = " " + " ".join(options) if options and conn.does_esmtp else ""
    conn.putcmd("mail", f"FROM:<{sender}>{extra}")
    return conn.getreply()


def _rcpt(conn: smtplib.SMTP, rcpt: str) -> tuple[int, bytes]:
    """`conn.rcpt(rcpt)`, without the parse for a plain address (see `_mail`)."""
    if not plain_address(rcpt):
        return conn.rcpt(rcpt)
    conn.putcmd("rcpt", f"TO:<{rcpt}>")
    return conn.getreply()


@dataclass(frozen=True)
class Wire:
    """How one message travels: envelope sender, recipient, bytes, and whether with SMTPUTF8."""

    sender: str
    rcpt: str
    data: bytes
    smtputf8: bool


def wire_form(
    to: str, data: bytes, envelope_from: str, relay: RelayConfig, conn: smtplib.SMTP | None = None
) -> Wire | _Outcome:
    """How one message travels (`Wire`), or the `_REFUSED` outcome when it cannot.

    `conn` is the relay's connection (its EHLO says whether it offers SMTPUTF8); None for
    the outbox files, which take it unless "never"."""
    needs = not (to.isascii() and envelope_from.isascii()) or needs_smtputf8(data)
    if not needs:
        return Wire(envelope_from, to, data, False)
    mode = relay.smtputf8
    if mode == "always" or (
        mode == "auto" and (conn is None or (conn.does_esmtp and conn.has_extn("smtputf8")))
    ):
        return Wire(envelope_from, to, data, True)
    rcpt, sender = ascii_form(to), ascii_form(envelope_from)
    ascii_data = downgrade(data) if needs_smtputf8(data) else data
    if rcpt is None or sender is None or ascii_data is None:
        why = 'relay smtputf8 = "never"' if mode == "never" else "the relay does not offer it"
        return _REFUSED, f"cannot deliver to {to}: {SMTPUTF8_NEEDED}, and {why}"
    return Wire(sender, rcpt, ascii_data, False)


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
