"""Spool: the durable hand-off between the SMTP listener and the processor.

The listener answers `250` only after `Spool.put` has returned, and `put` returns only once
the message is fsynced and renamed into `new/` (and that rename is fsynced too). So every
acknowledged message survives a crash; the processor later reads `pending()`, stores what it
needs and calls `remove()`, or `quarantine()` with a reason when it cannot understand it.

Layout (a maildir-like scheme: the rename is the commit point):
- `spool/tmp/<id>`: being written; never acknowledged, so `recover()` deletes leftovers.
  Writers hold a shared flock on `spool/.writers.lock` while a file of theirs is in tmp/;
  `recover()` deletes only under the exclusive lock, so a recovery in another process
  while `serve` is writing never deletes a write in flight.
- `spool/new/<id>`: committed, waiting for the processor.
- `spool/refusals.json`: what the running listener refused, by reason (see `record_refusals`).
- `quarantine/<id>` + `quarantine/<id>.reason.txt`: set aside with the reason (next to
  `spool/`, at data_dir level, so that status and operators find it in one place). The
  sidecar is `key: value` lines: `reason`, `envelope`, and when known `sender` (the From
  address), `partnership` and `period`; an admin's decision adds `released: ...` or
  `dropped: ...` before the message leaves the folder, so the sidecar stays behind as the
  record of what became of it.

One file per message: a first line `MFSPOOL1 {json envelope}\\n`, then the raw bytes exactly
as they will be parsed. JSON with `ensure_ascii` never contains a newline, so the first
newline always ends the envelope.

This module reads no clock (the received time is passed in) and knows nothing about SMTP.
Ids sort by received time, so `pending()` is oldest first. Archived copies under mail/in/
keep the same format (the file is moved there as it is); `raw_message` gives back the raw
bytes of any of these files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailflow.disk import REAL, Disk, room_for
from mailflow.errors import SpoolError
from mailflow.store import fsync_dir

log = logging.getLogger("mailflow.spool")

MAGIC = b"MFSPOOL1 "
REASON_SUFFIX = ".reason.txt"
UNREADABLE = "unreadable spool file"
WRITERS_LOCK = ".writers.lock"
REFUSALS = "refusals.json"  # the running listener's refusals, by reason (for status)
# An envelope line is small (at most a few dozen recipients); anything longer than this
# without a newline is a damaged file, and we refuse to read it into memory as a header.
_MAX_HEADER_BYTES = 256 * 1024
_ENVELOPE_PEEK = 4096  # enough for the envelope line of any message we accept


@dataclass(frozen=True)
class Sidecar:
    """What `quarantine/<id>.reason.txt` says about a quarantined message."""

    reason: str
    sender: str = ""  # the From address (older sidecars: the envelope sender)
    partnership_id: int | None = None
    period: str | None = None
    outcome: str = ""  # "released: ..." or "dropped: ..." once an admin decided; else ""


@dataclass(frozen=True)
class SpoolEntry:
    id: str
    path: Path
    mail_from: str  # "" is the null reverse-path `<>` (bounces and auto-replies use it)
    rcpt_tos: tuple[str, ...]
    peer: str
    received_at: datetime
    raw: bytes


@dataclass(frozen=True)
class Held:
    """Mail accepted but not (yet) stored as records: waiting in spool/new/ or quarantined.

    What the listener's quotas count (`[listener] quarantine_max_per_sender`,
    `quarantine_max_mb`) and what `status` can show.
    """

    messages: int
    bytes: int
    by_sender: dict[str, int]  # envelope sender, lower-cased ("" is the null sender)

    def from_sender(self, sender: str) -> int:
        return self.by_sender.get(sender.lower(), 0)


class _HeldIndex:
    """Who sent what is held, kept current by listing the two directories when they change.

    Correct across processes (the ingest process quarantines, `quarantine release/drop`
    runs in the CLI) without any shared state: a directory's mtime changes with every entry
    added or removed, and only new ids are read (their envelope line, once).
    """

    def __init__(self, dirs: tuple[Path, ...]) -> None:
        self.dirs = dirs
        self._stamps: tuple[int, ...] | None = None
        self._entries: dict[str, tuple[str, int]] = {}  # id -> (sender, size)
        self._lock = threading.Lock()
        self._held = Held(0, 0, {})

    def held(self) -> Held:
        with self._lock:
            try:
                stamps = tuple(d.stat().st_mtime_ns for d in self.dirs)
            except OSError:
                return self._held
            if stamps == self._stamps:
                return self._held
            found: dict[str, Path] = {}
            for d in self.dirs:
                for name in os.listdir(d):
                    if not name.startswith(".") and not name.endswith(REASON_SUFFIX):
                        found[name] = d / name
            entries = {i: e for i, e in self._entries.items() if i in found}
            for entry_id, path in found.items():
                if entry_id not in entries:
                    entry = _peek(path)
                    if entry is not None:
                        entries[entry_id] = entry
            by_sender: dict[str, int] = {}
            for sender, _size in entries.values():
                by_sender[sender] = by_sender.get(sender, 0) + 1
            self._entries, self._stamps = entries, stamps
            self._held = Held(len(entries), sum(size for _, size in entries.values()), by_sender)
            return self._held


def _peek(path: Path) -> tuple[str, int] | None:
    """(sender, size) of a spool or quarantine file; None when it vanished meanwhile."""
    try:
        with path.open("rb") as f:
            head = f.read(_ENVELOPE_PEEK)
            size = os.fstat(f.fileno()).st_size
    except (FileNotFoundError, IsADirectoryError):
        return None
    except OSError:
        return "", 0
    try:
        header, _ = _split(head)
    except SpoolError:
        return "", size  # unreadable: counted, as nobody's
    sender = header.get("mail_from")
    return (sender.lower() if isinstance(sender, str) else ""), size


class Spool:
    """A directory of committed messages; safe to use from several threads at once."""

    def __init__(self, root: Path, disk: Disk = REAL) -> None:
        self.root = Path(root)
        self.disk = disk  # free space, and the fault hook for tests (see disk.py)
        self.tmp_dir = self.root / "tmp"
        self.new_dir = self.root / "new"
        self.quarantine_dir = self.root.parent / "quarantine"
        for d in (self.tmp_dir, self.new_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Ids need a tie-breaker when two messages share a microsecond; a counter keeps the
        # order of arrival within this process, the random part keeps processes apart.
        self._seq = 0
        self._seq_lock = threading.Lock()
        # Group commit of new/ (see `put`): renames counted, and how many of them a
        # finished fsync of new/ covers; one writer at a time syncs, for all waiting.
        self._commit = threading.Condition()
        self._renamed = 0
        self._synced = 0
        self._syncing = False
        self.dir_syncs = 0  # fsyncs of new/ by put() so far (fewer than puts under load)
        self.spooled = 0  # messages put() committed into new/ so far
        self._held = _HeldIndex((self.new_dir, self.quarantine_dir))

    # -- room and quotas --------------------------------------------------------------------

    def has_room(self, floor_bytes: int) -> bool:
        """More than `floor_bytes` free where the spool lives (statvfs; one system call).

        Below it the listener refuses new mail with 452 and leaves the rest of the space
        to the database, the archive and the outgoing queue; it asks again at every MAIL,
        so it resumes by itself once space returns.
        """
        return room_for(self.disk, self.root, floor_bytes)

    def held(self) -> Held:
        """Mail waiting in new/ or quarantined, by envelope sender (for the quotas)."""
        return self._held.held()

    def record_refusals(self, counts: Mapping[str, int], since: datetime) -> None:
        """What the running listener refused since `since` (when `serve` started), by reason
        ("disk", "sender_quota", "total_quota", "per_client", "idle", "endless_line"), for
        `status`. Replaced atomically; best effort: when it cannot be written (a full disk)
        the last one stays and the listener goes on."""
        doc = {"since": since.isoformat(), "counts": dict(sorted(counts.items()))}
        tmp = self.root / (REFUSALS + ".tmp")
        try:
            tmp.write_text(json.dumps(doc), encoding="utf-8")
            os.replace(tmp, self.root / REFUSALS)
        except OSError as exc:
            log.warning("cannot record the listener's refusals: %s", exc)

    def refusals(self) -> dict[str, Any]:
        """The last `record_refusals` ({"since", "counts"}), or {} (none, or unreadable)."""
        try:
            doc = json.loads((self.root / REFUSALS).read_text(encoding="utf-8"))
            counts = {str(k): int(v) for k, v in doc["counts"].items()}
            return {"since": str(doc["since"]), "counts": counts}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writers(self, operation: int) -> Iterator[None]:
        """flock on spool/.writers.lock: LOCK_SH while writing, LOCK_EX to clean tmp/.

        A fresh descriptor each time: flock belongs to the open file, so threads sharing
        one descriptor would release each other's locks.
        """
        fd = os.open(self.root / WRITERS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)  # releases the lock

    def recover(self) -> None:
        """Delete files left in tmp/ by a crash: they were never acknowledged.

        Skipped while any writer (this or another process) is writing: then a file in tmp/
        may be a message being received; the next recover() gets the leftovers.
        """
        try:
            with self._writers(fcntl.LOCK_EX | fcntl.LOCK_NB):
                self._remove_leftovers()
        except BlockingIOError:
            log.info("spool recover: skipped, a writer is busy")

    def _remove_leftovers(self) -> None:
        removed = 0
        for p in self.tmp_dir.iterdir():
            try:
                p.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                log.warning("spool recover: unexpected directory %s left alone", p)
        if removed:
            fsync_dir(self.tmp_dir)
            log.info("spool recover: deleted %d unacknowledged partial file(s)", removed)

    def new_id(self, received_at: datetime) -> str:
        """A unique, filename-safe id that sorts by received time."""
        with self._seq_lock:
            self._seq = (self._seq + 1) % 0x1000000
            seq = self._seq
        stamp = _utc(received_at).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{stamp}-{seq:06x}-{secrets.token_hex(4)}"

    def put(
        self,
        raw: bytes,
        *,
        mail_from: str,
        rcpt_tos: Sequence[str],
        peer: str,
        received_at: datetime,
    ) -> str:
        """Write one message durably and return its id. Blocking.

        The file is fsynced by its writer (concurrent writers' fsyncs share the file
        system's journal commits), renamed into new/, and then new/ is fsynced: returns
        only once a fsync of new/ that began after this rename has finished. That last
        fsync is a group commit: while one writer syncs the directory, the renames of the
        others queue up, and the next sync covers them all; each waits for its own.
        """
        entry_id = self.new_id(received_at)
        header = {
            "id": entry_id,
            "mail_from": mail_from,
            "rcpt_tos": list(rcpt_tos),
            "peer": peer,
            "received_at": _utc(received_at).isoformat(),
        }
        line = MAGIC + json.dumps(header, ensure_ascii=True).encode("ascii") + b"\n"
        tmp = self.tmp_dir / entry_id
        self.disk.before_write(tmp, len(line) + len(raw))
        with self._writers(fcntl.LOCK_SH):
            # O_EXCL: ids are unique, so an existing file would mean a bug; never overwrite.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=True) as f:
                    f.write(line)
                    f.write(raw)
                    f.flush()
                    os.fsync(f.fileno())
                with self._commit:
                    os.replace(tmp, self.new_dir / entry_id)
                    self._renamed += 1
                    ticket = self.spooled = self._renamed
            except BaseException:
                # A failed write must not leave a half file that recover() would have to find.
                tmp.unlink(missing_ok=True)
                raise
        # The rename is the commit; without this fsync a crash could forget it.
        self._await_synced(ticket)
        return entry_id

    def _await_synced(self, ticket: int) -> None:
        """Return once a fsync of new/ that began after rename number `ticket` finished.

        Whoever finds no sync running starts one for every rename so far; the others wait
        for it (or, if it covered less, start the next). A failed sync raises in the writer
        that ran it; those waiting try again themselves, so each write learns its own fate.
        """
        with self._commit:
            while self._synced < ticket:
                if self._syncing:
                    self._commit.wait()
                    continue
                self._syncing = True
                covers = self._renamed
                self._commit.release()
                try:
                    self._sync_new_dir()
                finally:
                    self._commit.acquire()
                    self._syncing = False
                    self._commit.notify_all()
                self._synced = max(self._synced, covers)
                self.dir_syncs += 1

    def _sync_new_dir(self) -> None:
        """fsync spool/new/ (a seam for tests that watch the group commit)."""
        fsync_dir(self.new_dir)

    # -- reading ---------------------------------------------------------------------------

    def _ids(self) -> list[str]:
        return sorted(n for n in os.listdir(self.new_dir) if not n.startswith("."))

    def count_pending(self) -> int:
        return len(self._ids())

    def pending(self, limit: int | None = None) -> list[SpoolEntry]:
        """Committed messages, oldest first. Unreadable files are quarantined, not returned."""
        entries: list[SpoolEntry] = []
        for entry_id in self._ids():
            if limit is not None and len(entries) >= limit:
                break
            path = self.new_dir / entry_id
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # removed or quarantined by another thread meanwhile
            except IsADirectoryError:
                log.warning("spool: unexpected directory %s left alone", path)
                continue
            try:
                entries.append(_decode(entry_id, path, data))
            except SpoolError as exc:
                log.error("spool: %s is unreadable (%s); quarantining", entry_id, exc)
                # Gone meanwhile: another thread already disposed of it.
                with contextlib.suppress(FileNotFoundError):
                    self.quarantine(entry_id, UNREADABLE)
        return entries

    # -- disposal --------------------------------------------------------------------------

    def remove(self, entry_id: str) -> None:
        """The processor has stored what it needs: delete. Idempotent."""
        _check_id(entry_id)
        try:
            (self.new_dir / entry_id).unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.new_dir)

    def quarantine(
        self,
        entry_id: str,
        reason: str,
        *,
        sender: str = "",
        partnership_id: int | None = None,
        period: str | None = None,
    ) -> Path:
        """Move a pending message aside with a `<id>.reason.txt` sidecar; return its new path.

        `sender` (its From address) and, when the reason is about one, `partnership_id` and
        `period` go into the sidecar too (`status` and an admin's list show them). The
        sidecar is written (and fsynced) first: a crash in between leaves the message in
        new/ to be processed again, never a quarantined message without its reason.
        """
        _check_id(entry_id)
        src = self.new_dir / entry_id
        reason_line = _one_line(reason) or "(no reason given)"
        try:
            with src.open("rb") as f:
                head = f.read(_MAX_HEADER_BYTES)
            envelope = _envelope_text(head)
        except FileNotFoundError:
            raise
        except OSError as exc:
            envelope = f"(could not read: {exc})"
        text = f"reason: {reason_line}\nenvelope: {envelope}\n"
        if sender:
            text += f"sender: {_one_line(sender)}\n"
        if partnership_id is not None:
            text += f"partnership: {partnership_id}\n"
        if period:
            text += f"period: {_one_line(period)}\n"
        sidecar = self._write_sidecar(entry_id, text)
        dest = self.quarantine_dir / entry_id
        try:
            os.replace(src, dest)
        except FileNotFoundError:
            sidecar.unlink(missing_ok=True)
            raise
        fsync_dir(self.quarantine_dir)
        fsync_dir(self.new_dir)
        # INFO: quarantine is an expected outcome (the caller reports it, and `status` counts
        # it); a warning would also print on the console of every `tick`.
        log.info("spool: quarantined %s: %s", entry_id, reason_line)
        return dest

    def _write_sidecar(self, entry_id: str, text: str) -> Path:
        """Write `<id>.reason.txt` atomically (temp file, fsync, rename)."""
        sidecar = self.quarantine_dir / (entry_id + REASON_SUFFIX)
        tmp = self.quarantine_dir / f".{entry_id}.reason.tmp"
        self.disk.before_write(tmp, len(text))
        with tmp.open("w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, sidecar)
        return sidecar

    def quarantined(self) -> list[tuple[str, str]]:
        """(id, reason) of every quarantined message, oldest first."""
        out: list[tuple[str, str]] = []
        for name in sorted(os.listdir(self.quarantine_dir)):
            if name.startswith(".") or name.endswith(REASON_SUFFIX):
                continue
            out.append((name, self._reason(name)))
        return out

    def _reason(self, entry_id: str) -> str:
        return self.sidecar(entry_id).reason

    def _sidecar_text(self, entry_id: str) -> str | None:
        try:
            return (self.quarantine_dir / (entry_id + REASON_SUFFIX)).read_text(
                encoding="utf-8", errors="replace"
            )
        except OSError:
            return None

    def sidecar(self, entry_id: str) -> Sidecar:
        """The sidecar of a quarantined (or formerly quarantined) message; a missing or
        unreadable one reads as "(no reason recorded)"."""
        _check_id(entry_id)
        fields: dict[str, str] = {}
        for line in (self._sidecar_text(entry_id) or "").splitlines():
            key, sep, value = line.partition(": ")
            if sep and key not in fields:
                fields[key] = value
        pid = fields.get("partnership", "")
        sender = fields.get("sender", "")
        if not sender:
            try:
                envelope = json.loads(fields.get("envelope", ""))
                sender = str(envelope.get("mail_from", "")) if isinstance(envelope, dict) else ""
            except ValueError:
                sender = ""
        outcome = next((f"{k}: {fields[k]}" for k in ("released", "dropped") if k in fields), "")
        return Sidecar(
            reason=fields.get("reason") or "(no reason recorded)",
            sender=sender.lower(),
            partnership_id=int(pid) if pid.isdigit() else None,
            period=fields.get("period") or None,
            outcome=outcome,
        )

    def has_sidecar(self, entry_id: str) -> bool:
        """Whether `entry_id` was ever quarantined here (its sidecar outlives the message)."""
        _check_id(entry_id)
        return (self.quarantine_dir / (entry_id + REASON_SUFFIX)).is_file()

    def is_quarantined(self, entry_id: str) -> bool:
        """Whether the message `entry_id` is in the quarantine now."""
        _check_id(entry_id)
        return (self.quarantine_dir / entry_id).is_file()

    def quarantined_entry(self, entry_id: str) -> SpoolEntry:
        """A quarantined message as a `SpoolEntry` (its path in quarantine/).

        FileNotFoundError when it is not there; SpoolError when the file has no readable
        envelope (an "unreadable spool file" can only be dropped).
        """
        _check_id(entry_id)
        path = self.quarantine_dir / entry_id
        return _decode(entry_id, path, path.read_bytes())

    def read_quarantined(self, entry_id: str, limit: int = -1) -> bytes:
        """A quarantined file as it is (envelope line, then the raw message), or its first
        `limit` bytes."""
        _check_id(entry_id)
        with (self.quarantine_dir / entry_id).open("rb") as f:
            return f.read(limit)

    def close_quarantined(self, entry_id: str, outcome: str) -> None:
        """Record an admin's decision in the sidecar (`released: ...`, `dropped: ...`).

        Written before the message leaves quarantine/, so the sidecar is never left without
        the decision that emptied its folder.
        """
        _check_id(entry_id)
        text = self._sidecar_text(entry_id) or "reason: (no reason recorded)\n"
        self._write_sidecar(entry_id, text.rstrip("\n") + "\n" + _one_line(outcome) + "\n")
        fsync_dir(self.quarantine_dir)

    def drop_quarantined(self, entry_id: str) -> None:
        """Delete a quarantined message for good (its sidecar stays as the record)."""
        _check_id(entry_id)
        try:
            (self.quarantine_dir / entry_id).unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.quarantine_dir)


def raw_message(data: bytes) -> bytes:
    """The raw message of a spool, quarantine or archive file (after its `MFSPOOL1` line);
    any other bytes are taken to be a raw message already."""
    try:
        _, raw = _split(data)
    except SpoolError:
        return data
    return raw


def envelope_of(data: bytes) -> dict[str, object]:
    """The envelope of a spool-format file ({} when `data` has none)."""
    try:
        header, _ = _split(data)
    except SpoolError:
        return {}
    return header


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _utc(dt: datetime) -> datetime:
    # A naive datetime is ambiguous (local or UTC?) and ids must sort across restarts, so
    # refuse it rather than guess.
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware")
    return dt.astimezone(UTC)


def _check_id(entry_id: str) -> None:
    # Ids come back from callers; never let one name a path outside our directories.
    if not entry_id or "/" in entry_id or "\\" in entry_id or entry_id.startswith("."):
        raise ValueError(f"not a spool id: {entry_id!r}")


def _split(data: bytes) -> tuple[dict[str, object], bytes]:
    if not data.startswith(MAGIC):
        raise SpoolError("missing MFSPOOL1 header")
    end = data.find(b"\n", 0, _MAX_HEADER_BYTES)
    if end < 0:
        raise SpoolError("truncated header")
    try:
        header = json.loads(data[len(MAGIC) : end].decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SpoolError(f"bad header: {exc}") from None
    if not isinstance(header, dict):
        raise SpoolError("bad header: not an object")
    return header, data[end + 1 :]


def _decode(entry_id: str, path: Path, data: bytes) -> SpoolEntry:
    header, raw = _split(data)
    try:
        mail_from = header["mail_from"]
        rcpts = header["rcpt_tos"]
        peer = header["peer"]
        received_at = datetime.fromisoformat(str(header["received_at"]))
    except (KeyError, ValueError) as exc:
        raise SpoolError(f"bad header field: {exc}") from None
    if (
        not isinstance(mail_from, str)
        or not isinstance(peer, str)
        or not isinstance(rcpts, list)
        or not all(isinstance(r, str) for r in rcpts)
        or received_at.tzinfo is None
    ):
        raise SpoolError("bad header field types")
    return SpoolEntry(
        id=entry_id,
        path=path,
        mail_from=mail_from,
        rcpt_tos=tuple(rcpts),
        peer=peer,
        received_at=received_at,
        raw=raw,
    )


def _envelope_text(head: bytes) -> str:
    """The envelope as one line of JSON for the sidecar, or a note that it is unreadable."""
    try:
        header, _ = _split(head)
    except SpoolError as exc:
        return f"(unreadable: {exc})"
    return json.dumps(header, ensure_ascii=True)
