"""Storage: the only module that touches TinyDB; it takes and returns domain objects.

Layout under data_dir/db/ (every file is in TinyDB's JSON format, `{table: {doc_id: doc}}`):
- core.json: the program: partnerships, meta, the index of bouncing addresses and that of the
  skills on offer (skill -> how many offer it). Its size grows with the program, not with
  the directory.
- people/XX.json: the directory, in 256 shards by a hash of the address (XX = crc32 % 256 in
  hex), with each manager's count of reports in her own shard (`managed`), and who offers a
  skill in the skill's shard (`offerers`, one document per person and skill, keyed
  "EMAIL SKILL"). A question about
  one person reads one shard, the eligibility walk up a reporting line reads one shard per
  manager, and a change to one person rewrites one shard (and her manager's): an admin
  action costs the same in a directory of 100 people as in one of 100,000.
- commit.json: present only while a transaction that changes several files (an import, a
  bounce flag with its index entry) is being applied; see `Store._commit_many`.
- weeks/YYYY-Www.json: one file per period label: the scheduler's per-partnership state
  (weeks), progress records (reports), other inbound mail (inbound) and outgoing mail
  (outgoing). A write rewrites only its own period's file, so its cost does not grow with
  years of history.

Why not plain `TinyDB(path)`: it writes in place (a kill leaves a torn file), caches document
ids per process (two writers lose updates), and re-parses the whole file on every operation.
Here every read-modify-write runs as one transaction: take the file's lock (filelock, flock
based, so it also excludes other processes such as a CLI command while `serve` runs), read
the file (re-parsed only when its inode/mtime/size changed since we last saw it), apply the
changes in memory, then write a temp file, fsync, `os.replace`, fsync the directory. Readers
need no lock: a rename is atomic, so they see the old file or the new one, never a mix.

Up to issue 16 people lived in core.json; the first start of this version moves them to their
shards (`Store._migrate_locked`): shards are written and synced first, and rewriting
core.json without its people table is the single atomic step that commits the move.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from filelock import Timeout as LockTimeout
from tinydb.storages import Storage

from mailflow.disk import REAL, Disk
from mailflow.errors import (
    CorruptFileError,
    DiskFullError,
    StoreError,
    StoreLockedError,
    is_transient,
)
from mailflow.models import (
    FAILED,
    QUEUED,
    Inbound,
    Outgoing,
    Partnership,
    PeriodSummary,
    Person,
    Report,
    Request,
    Roster,
    Week,
)

log = logging.getLogger("mailflow.store")
_T = TypeVar("_T")

LOCK_TIMEOUT_SECONDS = 60
CACHE_FILES = 6
# ...and at most this many bytes of JSON (parsed, a file takes several times its size): old
# weeks of a 10,000-partnership program are 10+ MB each, and `serve` must stay small.
CACHE_BYTES = 16 * 1024 * 1024
# Only a file named exactly like a period is a period: "2030-W02 (copy).json" or
# "2030-W02.bak.json" (an editor's or an operator's copy) would otherwise be read as weeks
# of their own, stop delivery on a bad name, or send their queued mail a second time.
_PERIOD_FILE = re.compile(r"^(\d{4}-W\d{2})\.json$")
# The directory's shards: fixed forever (a different count would need a migration).
PEOPLE_SHARDS = 256
# Parsed shards kept for lookups (most recently used first out last), at most this many bytes
# of JSON: parsed, a shard takes ~4x its size, and `serve` must not hold the whole directory
# (50,000 people are 10 MB of JSON, 37 MB parsed). Re-parsing one 40 KB shard takes ~0.5 ms.
SHARD_CACHE_BYTES = 1024 * 1024
_SHARD_FILE = re.compile(r"^[0-9a-f]{2}\.json$")


def shard_name(email: str) -> str:
    """The shard file a person's record lives in: stable across processes and versions."""
    return f"{zlib.crc32(email.encode('utf-8')) % PEOPLE_SHARDS:02x}.json"


class AtomicJSONStorage(Storage):
    """A TinyDB storage that never leaves a half-written file behind."""

    def __init__(self, path: Path, disk: Disk = REAL) -> None:
        self.path = path
        self.disk = disk

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read database: {exc.strerror}") from None
        if not raw.strip():
            raise CorruptFileError(self.path, "database file is empty (corrupt); restore it")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptFileError(self.path, f"database file is corrupt: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise CorruptFileError(self.path, "database file is corrupt: not TinyDB tables")
        return data

    def write(self, data: dict[str, dict[str, Any]], payload: bytes | None = None) -> None:
        """Replace the file with `data` (or with `payload`, data already serialised)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        if payload is None:
            payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            self.disk.before_write(tmp, len(payload))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(payload)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with suppress(OSError):
                    tmp.unlink()
                raise
            fsync_dir(self.path.parent)
        except OSError as exc:
            # Typed, naming the file: a full disk passes by itself (callers retry, and
            # keep what they hold); the old file is untouched either way.
            reason = exc.strerror or str(exc)
            if is_transient(exc):
                raise DiskFullError(self.path, f"cannot write database: {reason}") from None
            raise StoreError(f"{self.path}: cannot write database: {reason}") from None

    def close(self) -> None:
        pass


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class _Fragments:
    """Serialised documents of one file, reused while the document objects stay the same.

    A period file grows to thousands of documents, and a batch changes a few of them; a
    transaction copies the tables but shares the documents, and a put replaces a document
    rather than editing it. So a document that is the very object we serialised last time
    has the same JSON, and a rewrite serialises only what changed. The output is byte for
    byte what json.dumps(data, ensure_ascii=False, separators=(",", ":")) gives, encoded.

    Memory (`serve` keeps this for the period under way): each document's UTF-8 once, as
    bytes, and no copy of a whole table; a rewrite joins the pieces once into the payload
    (a join of strings, then of tables, then an encode made four copies of a 7 MB file).
    """

    def __init__(self) -> None:
        # table -> (doc ids, docs, {doc_id: (doc, b'"id":{json}')}, its pieces with commas)
        self.tables: dict[
            str, tuple[list[str], list[Any], dict[str, tuple[Any, bytes]], list[bytes]]
        ] = {}

    def _table(self, name: str, table: dict[str, Any]) -> list[bytes]:
        ids, docs = list(table), list(table.values())
        old = self.tables.get(name)
        if (
            old is not None
            and len(old[1]) == len(docs)
            and old[0] == ids
            and all(map(operator.is_, old[1], docs))
        ):
            return old[3]
        cached = old[2] if old is not None else {}
        fresh: dict[str, tuple[Any, bytes]] = {}
        pieces: list[bytes] = []
        for doc_id, doc in zip(ids, docs, strict=True):
            hit = cached.get(doc_id)
            if hit is None or hit[0] is not doc:
                hit = (doc, f"{_dumps(doc_id)}:{_dumps(doc)}".encode())
            fresh[doc_id] = hit
            if pieces:
                pieces.append(b",")
            pieces.append(hit[1])
        self.tables[name] = (ids, docs, fresh, pieces)
        return pieces

    def dumps(self, data: dict[str, dict[str, Any]]) -> bytes:
        out: list[bytes] = [b"{"]
        for name, table in data.items():
            if len(out) > 1:
                out.append(b",")
            out.append(f"{_dumps(name)}:{{".encode())
            out.extend(self._table(name, table))
            out.append(b"}")
        out.append(b"}")
        for name in set(self.tables) - set(data):
            del self.tables[name]
        return b"".join(out)


def fsync_dir(path: Path) -> None:
    """Make a rename or create in this directory durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Table:
    """A TinyDB table (doc_id -> doc) with an index on our own key field."""

    def __init__(self, raw: dict[str, dict[str, Any]], key_field: str, where: Path) -> None:
        self.raw = raw
        self.key_field = key_field
        self.by_key: dict[Any, str] = {}
        for doc_id, doc in raw.items():
            if not isinstance(doc, dict):
                raise CorruptFileError(where, f"document {doc_id}: not an object")
            if key_field not in doc:
                raise CorruptFileError(where, f'document {doc_id}: missing "{key_field}"')
            self.by_key[doc[key_field]] = doc_id
        try:
            self.next_id = max((int(i) for i in raw), default=0) + 1
        except ValueError:
            raise CorruptFileError(where, "document ids must be numbers") from None

    def get(self, key: Any) -> dict[str, Any] | None:
        doc_id = self.by_key.get(key)
        return None if doc_id is None else self.raw[doc_id]

    def put(self, doc: dict[str, Any]) -> None:
        key = doc[self.key_field]
        doc_id = self.by_key.get(key)
        if doc_id is None:
            doc_id = str(self.next_id)
            self.next_id += 1
            self.by_key[key] = doc_id
        self.raw[doc_id] = doc

    def delete(self, key: Any) -> bool:
        doc_id = self.by_key.pop(key, None)
        if doc_id is None:
            return False
        del self.raw[doc_id]
        return True

    def docs(self) -> Iterator[dict[str, Any]]:
        return iter(self.raw.values())

    def __len__(self) -> int:
        return len(self.raw)


# What a record is called in an error: "partnership 3", "person ada@example.com".
_KINDS = {
    "people": "person",
    "partnerships": "partnership",
    "meta": "meta",
    "bouncing": "bouncing address",
    "offered": "offered skill",
    "managed": "manager",
    "offerers": "offer",
    "weeks": "week",
    "reports": "report",
    "inbound": "inbound",
    "outgoing": "outgoing",
}

_KEYS = {
    "people": "email",
    "partnerships": "id",
    "meta": "name",
    "bouncing": "email",
    "offered": "skill",
    "managed": "email",
    "offerers": "key",
    "weeks": "key",
    "reports": "message_id",
    "inbound": "message_id",
    "outgoing": "key",
    "requests": "n",
}


class _View:
    """Tables of one database file, read-only unless opened by a transaction."""

    def __init__(
        self, data: dict[str, dict[str, Any]], writable: bool, path: Path = Path("?")
    ) -> None:
        self._data = data
        self._tables: dict[str, _Table] = {}
        self._writable = writable
        self.path = path
        self.changed = False

    def _table(self, name: str) -> _Table:
        table = self._tables.get(name)
        if table is None:
            raw = self._data.get(name)
            if raw is None:
                raw = {}
                if self._writable:
                    self._data[name] = raw
            table = self._tables[name] = _Table(raw, _KEYS[name], self.path)
        return table

    def _obj(self, table: str, doc: dict[str, Any], make: Callable[[dict[str, Any]], _T]) -> _T:
        """A domain object from a stored document; a hand-edited one of the wrong shape is a
        CorruptFileError naming the file and the record (`FILE: partnership 3: missing
        "member"`), never a KeyError from deep inside."""
        try:
            return make(doc)
        except StoreError as exc:  # a missing stamp: models names the record already
            raise CorruptFileError(self.path, str(exc)) from None
        except KeyError as exc:
            what = _what(table, doc)
            raise CorruptFileError(self.path, f'{what}: missing "{exc.args[0]}"') from None
        except (TypeError, ValueError, AttributeError) as exc:
            what = _what(table, doc)
            raise CorruptFileError(self.path, f"{what}: wrong value ({exc})") from None

    def _objs(
        self, table: str, docs: Iterable[dict[str, Any]], make: Callable[[dict[str, Any]], _T]
    ) -> list[_T]:
        return [self._obj(table, d, make) for d in docs]

    def _docs(self, name: str) -> Iterable[dict[str, Any]]:
        """A table's documents, without building its key index just to read them all."""
        table = self._tables.get(name)
        return table.raw.values() if table is not None else self._data.get(name, {}).values()

    def _put(self, name: str, doc: dict[str, Any]) -> None:
        if not self._writable:
            raise RuntimeError("write outside a transaction")
        self._table(name).put(doc)
        self.changed = True

    def _delete(self, name: str, key: Any) -> None:
        if not self._writable:
            raise RuntimeError("write outside a transaction")
        if self._table(name).delete(key):
            self.changed = True


def _offerer(email: str, skill: str) -> dict[str, str]:
    # An address has no space, so "EMAIL SKILL" is unique and splits back at the first one.
    return {"key": f"{email} {skill}", "email": email, "skill": skill}


class Directory(Mapping[str, Person]):
    """email -> Person over the shard files, reading a shard only when asked about someone
    in it (each once per Directory). Lookups (`[]`, `get`, `in`) cost one small file however
    large the directory; iterating reads every shard. Read-only unless made by `core_tx`.
    """

    def __init__(self, store: Store, writable: bool) -> None:
        self._store = store
        self._writable = writable
        self._views: dict[str, _View] = {}
        self._people: dict[str, Person | None] = {}
        # Read-only lookups: each shard's version as first seen by this Directory (one stat
        # per shard), and the addresses of the program's people (asked once).
        self._stamps: dict[str, tuple[int, int, int] | None] = {}
        self._wanted: Mapping[str, frozenset[str]] | None = None

    def _view(self, name: str) -> _View:
        view = self._views.get(name)
        if view is None:
            path = self._store.people_dir / name
            data = self._store._load_shard(path)[1]
            if self._writable:
                data = {table: dict(docs) for table, docs in data.items()}
            view = self._views[name] = _View(data, self._writable, path)
        return view

    def __getitem__(self, email: str) -> Person:
        try:
            person = self._people[email]
        except KeyError:
            name = shard_name(email)
            if self._writable or name in self._views:
                view = self._view(name)
                doc = view._table("people").get(email)
                person = None if doc is None else view._obj("people", doc, Person.from_doc)
            else:
                person = self._lookup(name, email)
            self._people[email] = person
        if person is None:
            raise KeyError(email)
        return person

    def _lookup(self, name: str, email: str) -> Person | None:
        """A read-only lookup through the store's people of the program (see `_Program`):
        no parsed shard is kept by this Directory, so a tick that asks for the program's
        10,000 people holds 10,000 Person objects, not the 50,000-person directory."""
        stamp = self._stamps.get(name)
        if stamp is None:
            stamp = self._stamps[name] = _stamp_of(self._store.people_dir / name)
        if self._wanted is None:
            self._wanted = self._store._program_emails()
        return self._store._program.person(self._store, name, stamp, email, self._wanted)

    def __contains__(self, email: object) -> bool:
        return isinstance(email, str) and self.get(email) is not None

    def __iter__(self) -> Iterator[str]:
        for name in self._store.shard_names():
            yield from list(self._view(name)._table("people").by_key)

    def __len__(self) -> int:
        return sum(len(self._view(n)._table("people")) for n in self._store.shard_names())

    def put(self, person: Person) -> None:
        self._view(shard_name(person.email))._put("people", person.to_doc())
        self._people[person.email] = person

    def remove(self, email: str) -> bool:
        """Delete a person; False when there was none."""
        view = self._view(shard_name(email))
        there = view._table("people").get(email) is not None
        view._delete("people", email)
        self._people[email] = None
        return there

    def reports_to(self, manager: str) -> int:
        """How many people name `manager` as theirs (the count kept in her shard)."""
        doc = self._view(shard_name(manager))._table("managed").get(manager)
        return int(doc.get("count", 0)) if doc is not None else 0

    def count_report(self, manager: str | None, delta: int) -> None:
        """Someone starts (+1) or stops (-1) naming `manager` as theirs."""
        if not manager:
            return
        n = self.reports_to(manager) + delta
        view = self._view(shard_name(manager))
        if n > 0:
            view._put("managed", {"email": manager, "count": n})
        else:
            view._delete("managed", manager)

    def offerers(self, skill: str) -> list[str]:
        """The addresses of everyone who offers `skill` (normalised), from the index in the
        skill's shard: one file, however large the directory."""
        docs = self._view(shard_name(skill))._docs("offerers")
        return sorted(d["email"] for d in docs if d.get("skill") == skill)

    def count_offers(self, email: str, skills: Iterable[str], delta: int) -> None:
        """`email` starts (+1) or stops (-1) offering each of `skills`."""
        for skill in skills:
            view = self._view(shard_name(skill))
            if delta > 0:
                view._put("offerers", _offerer(email, skill))
            else:
                view._delete("offerers", _offerer(email, skill)["key"])

    def changed(self) -> list[tuple[Path, dict[str, dict[str, Any]]]]:
        """(path, data) of each shard this transaction changed."""
        return [(v.path, v._data) for v in self._views.values() if v.changed]


class OfferIndex(Mapping[str, list[str]]):
    """skill -> the addresses of everyone who offers it, each skill read from its own shard
    when asked (`skills`: the skills on offer, from core.json's index)."""

    def __init__(self, directory: Directory, skills: Iterable[str]) -> None:
        self._directory = directory
        self._skills = sorted(set(skills))

    def __getitem__(self, skill: str) -> list[str]:
        found = self._directory.offerers(skill)
        if not found:
            raise KeyError(skill)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._skills)

    def __len__(self) -> int:
        return len(self._skills)


class CoreView(_View):
    def __init__(
        self, data: dict[str, dict[str, Any]], writable: bool, path: Path, people: Directory
    ) -> None:
        super().__init__(data, writable, path)
        self.directory = people

    def people(self) -> list[Person]:
        """Everyone (reads every shard): for lists and imports, not for one person."""
        return list(self.directory.values())

    def person(self, email: str) -> Person | None:
        return self.directory.get(email)

    def put_person(self, person: Person) -> None:
        """Store a person; the indexes (bouncing and offered skills in core.json, the count
        of reports in the manager's shard) follow in the same commit."""
        old = self.directory.get(person.email)
        self.directory.put(person)
        before = set(old.offers) if old is not None else set()
        self._count_offers(before - set(person.offers), -1)
        self._count_offers(set(person.offers) - before, +1)
        self.directory.count_offers(person.email, before - set(person.offers), -1)
        self.directory.count_offers(person.email, set(person.offers) - before, +1)
        if old is None or old.manager != person.manager:
            self.directory.count_report(old.manager if old else None, -1)
            self.directory.count_report(person.manager, +1)
        index = self._table("bouncing")
        entry = index.get(person.email)
        if person.bouncing:
            if entry is None or entry.get("reason") != person.bounce_reason:
                self._put("bouncing", {"email": person.email, "reason": person.bounce_reason})
        elif entry is not None:
            self._delete("bouncing", person.email)

    def remove_person(self, email: str) -> bool:
        """Delete a person and their index entries; False when there was none. Their
        records stay (by address)."""
        old = self.directory.get(email)
        if old is None or not self.directory.remove(email):
            return False
        self._count_offers(old.offers, -1)
        self.directory.count_offers(email, old.offers, -1)
        self.directory.count_report(old.manager, -1)
        self._delete("bouncing", email)
        return True

    def _count_offers(self, skills: Iterable[str], delta: int) -> None:
        table = self._table("offered")
        for skill in skills:
            doc = table.get(skill)
            n = (int(doc.get("count", 0)) if doc is not None else 0) + delta
            if n > 0:
                self._put("offered", {"skill": skill, "count": n})
            else:
                self._delete("offered", skill)

    def offered(self, besides: Person | None = None) -> set[str]:
        """Every skill someone offers, from the index (no shard is read); `besides`: not
        counting what that person offers."""
        mine = set(besides.offers) if besides is not None else set()
        return {
            d["skill"]
            for d in self._table("offered").docs()
            if int(d.get("count", 0)) > (1 if d["skill"] in mine else 0)
        }

    def bouncing(self) -> dict[str, str]:
        """Bouncing address -> reason, from the index (no shard is read)."""
        return {
            d["email"]: str(d.get("reason", ""))
            for d in self._table("bouncing").docs()
            if isinstance(d.get("email"), str)
        }

    def partnerships(self) -> list[Partnership]:
        docs = self._table("partnerships").docs()
        return sorted(self._objs("partnerships", docs, Partnership.from_doc), key=lambda p: p.id)

    def partnership(self, pid: int) -> Partnership | None:
        doc = self._table("partnerships").get(pid)
        return None if doc is None else self._obj("partnerships", doc, Partnership.from_doc)

    def put_partnership(self, p: Partnership) -> None:
        self._put("partnerships", p.to_doc())

    def next_partnership_id(self) -> int:
        return max((int(k) for k in self._table("partnerships").by_key), default=0) + 1

    def requests(self) -> list[Request]:
        return sorted(
            (Request.from_doc(d) for d in self._table("requests").docs()), key=lambda r: r.n
        )

    def request(self, n: int) -> Request | None:
        """A self-service request (`models.Request`) by its number."""
        doc = self._table("requests").get(n)
        return None if doc is None else Request.from_doc(doc)

    def put_request(self, r: Request) -> None:
        self._put("requests", r.to_doc())

    def remove_request(self, n: int) -> None:
        if not self._writable:
            raise RuntimeError("write outside a transaction")
        self.changed = self._table("requests").delete(n) or self.changed

    def next_request_n(self) -> int:
        """Request numbers are never reused (a pruned request's token must stay dead)."""
        stored = max((int(d["n"]) for d in self._table("requests").docs()), default=0) + 1
        return max(stored, int(self.meta("next_request") or 1))

    def meta(self, name: str) -> Any:
        doc = self._table("meta").get(name)
        return None if doc is None else doc.get("value")

    def set_meta(self, name: str, value: Any) -> None:
        self._put("meta", {"name": name, "value": value})


class WeekView(_View):
    def __init__(
        self, period: str, data: dict[str, dict[str, Any]], writable: bool, path: Path = Path("?")
    ) -> None:
        super().__init__(data, writable, path)
        self.period = period
        self._report_index: dict[int, list[dict[str, Any]]] | None = None

    def week(self, partnership_id: int) -> Week | None:
        doc = self._table("weeks").get(f"{partnership_id}:{self.period}")
        return None if doc is None else self._obj("weeks", doc, Week.from_doc)

    def weeks(self) -> list[Week]:
        return self._objs("weeks", self._table("weeks").docs(), Week.from_doc)

    def put_week(self, week: Week) -> None:
        if week.period != self.period:
            raise ValueError(f"week {week.period} stored in {self.period}")
        self._put("weeks", week.to_doc())

    def _reports_by_pid(self) -> dict[int, list[dict[str, Any]]]:
        # Built once per view: a tick asks for each partnership's reports, and a scan per
        # question would make a 10,000-partnership fan-out quadratic.
        if self._report_index is None:
            index: dict[int, list[dict[str, Any]]] = {}
            for d in self._table("reports").docs():
                pid = self._obj("reports", d, lambda d: int(d["partnership_id"]))
                index.setdefault(pid, []).append(d)
            self._report_index = index
        return self._report_index

    def reports(self, partnership_id: int | None = None) -> list[Report]:
        if partnership_id is None:
            docs: Iterable[dict[str, Any]] = self._table("reports").docs()
        else:
            docs = self._reports_by_pid().get(partnership_id, [])
        return sorted(self._objs("reports", docs, Report.from_doc), key=lambda r: r.received_at)

    def report_count(self, partnership_id: int) -> int:
        return len(self._reports_by_pid().get(partnership_id, []))

    def has_message(self, message_id: str) -> bool:
        return (
            self._table("reports").get(message_id) is not None
            or self._table("inbound").get(message_id) is not None
        )

    def add_report(self, report: Report) -> bool:
        """Store a progress record once; False when its Message-ID is already here."""
        if self.has_message(report.message_id):
            return False
        doc = report.to_doc()
        self._put("reports", doc)
        if self._report_index is not None:
            self._report_index.setdefault(report.partnership_id, []).append(doc)
        return True

    def inbound(self) -> list[Inbound]:
        return self._objs("inbound", self._table("inbound").docs(), Inbound.from_doc)

    def add_inbound(self, item: Inbound) -> bool:
        if self.has_message(item.message_id):
            return False
        self._put("inbound", item.to_doc())
        return True

    def outgoing(self, key: str) -> Outgoing | None:
        doc = self._table("outgoing").get(key)
        return None if doc is None else self._obj("outgoing", doc, Outgoing.from_doc)

    def outgoings(self, status: str | None = None) -> list[Outgoing]:
        """The period's outgoing mail (only that in `status`, when given)."""
        if status is None:
            return self._objs("outgoing", self._table("outgoing").docs(), Outgoing.from_doc)
        # Filtered on the stored documents: a period of 30,000 sent messages builds no object
        # for the few still queued or failed that a delivery or `status` asks about.
        docs = (d for d in self._docs("outgoing") if _status(d) == status)
        return self._objs("outgoing", docs, Outgoing.from_doc)

    def put_outgoing(self, item: Outgoing) -> None:
        self._put("outgoing", item.to_doc())


def _what(table: str, doc: Any) -> str:
    key = doc.get(_KEYS[table]) if isinstance(doc, dict) else None
    return f"{_KINDS[table]} {key}" if key is not None else _KINDS[table]


@dataclass(frozen=True)
class Problem:
    """Something wrong with a file in the data directory, found while reading it.

    `error`: its data is unavailable (a corrupt week: that week's work stops, the rest goes
    on), and a tick must say so and exit non-zero. Otherwise a warning (a stray file in
    db/weeks/ that is not read at all).
    """

    path: Path
    message: str
    error: bool

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _split_people(
    raw: dict[str, Any], core_path: Path
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """An old core.json's people table as shard files by name (people, and the count of
    reports of each manager and the offerers of each skill in their shards), and core.json's
    indexes (bouncing, offered)."""
    people = _Table(raw, "email", core_path)  # checks every document has an address
    shards: dict[str, dict[str, dict[str, Any]]] = {}
    bouncing: dict[str, Any] = {}
    offered: dict[str, int] = {}
    reports: dict[str, int] = {}
    for doc in people.docs():
        table = shards.setdefault(shard_name(doc["email"]), {"people": {}})["people"]
        table[str(len(table) + 1)] = doc
        if doc.get("bouncing"):
            reason = doc.get("bounce_reason", "")
            bouncing[str(len(bouncing) + 1)] = {"email": doc["email"], "reason": reason}
        offers = doc.get("offers")
        for skill in set(offers) if isinstance(offers, list) else ():
            if isinstance(skill, str):
                offered[skill] = offered.get(skill, 0) + 1
                shard = shards.setdefault(shard_name(skill), {"people": {}})
                table = shard.setdefault("offerers", {})
                table[str(len(table) + 1)] = _offerer(doc["email"], skill)
        if isinstance(doc.get("manager"), str) and doc["manager"]:
            reports[doc["manager"]] = reports.get(doc["manager"], 0) + 1
    for manager, n in reports.items():
        managed = shards.setdefault(shard_name(manager), {"people": {}}).setdefault("managed", {})
        managed[str(len(managed) + 1)] = {"email": manager, "count": n}
    index = {
        "bouncing": bouncing,
        "offered": {
            str(i): {"skill": skill, "count": n}
            for i, (skill, n) in enumerate(sorted(offered.items()), 1)
        },
    }
    return shards, index


class _Journal:
    """The redo journal of a change that spans files (db/commit.json).

    `commit`: each new file is written and fsynced beside its target as `.NAME.staged`;
    then commit.json, naming them, is written atomically (the commit point); `recover` then
    renames each over its target, fsyncs the directories and removes the journal. A crash
    before the journal leaves the old files (staged ones are discarded at the next start);
    a crash after it is rolled forward by the next transaction or read.
    """

    def __init__(self, db_dir: Path, disk: Disk) -> None:
        self.db_dir = db_dir
        self.path = db_dir / "commit.json"
        self.disk = disk

    def commit(self, files: list[tuple[Path, dict[str, dict[str, Any]]]]) -> None:
        staged = [path.with_name(f".{path.name}.staged") for path, _ in files]
        try:
            for stage, (_, data) in zip(staged, files, strict=True):
                payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
                self.write_synced(stage, payload)
            for folder in {path.parent for path, _ in files}:
                fsync_dir(folder)
            names = [str(path.relative_to(self.db_dir)) for path, _ in files]
            AtomicJSONStorage(self.path, self.disk).write({}, json.dumps({"files": names}).encode())
        except BaseException:
            if not self.path.exists():  # not committed: nothing of it may show
                for stage in staged:
                    with suppress(OSError):
                        stage.unlink()
            raise

    def recover(self) -> list[Path]:
        """Finish the commit the journal names, if any; the files it replaced."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            targets = [self.db_dir / str(n) for n in json.loads(raw)["files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptFileError(self.path, f"commit journal is corrupt: {exc}") from None
        for target in targets:
            stage = target.with_name(f".{target.name}.staged")
            if stage.exists():
                os.replace(stage, target)
        for folder in {self.db_dir, *(t.parent for t in targets)}:
            fsync_dir(folder)
        self.path.unlink()
        fsync_dir(self.db_dir)
        return targets

    def write_shards(self, folder: Path, shards: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Replace every shard file in `folder` by `shards` (the migration), each synced."""
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.json"):  # a crashed earlier attempt's shards
            old.unlink()
        for name, tables in shards.items():
            payload = json.dumps(tables, ensure_ascii=False, separators=(",", ":"))
            self.write_synced(folder / name, payload.encode())
        fsync_dir(folder)

    def write_synced(self, path: Path, payload: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.disk.before_write(path, len(payload))
            with open(path, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            with suppress(OSError):
                path.unlink()
            reason = exc.strerror or str(exc)
            if is_transient(exc):
                raise DiskFullError(path, f"cannot write database: {reason}") from None
            raise StoreError(f"{path}: cannot write database: {reason}") from None


def _status(doc: dict[str, Any]) -> str:
    return str(doc.get("status", QUEUED))  # as Outgoing.from_doc reads it


@dataclass(frozen=True)
class OutgoingTally:
    """How a period's outgoing mail stands: how many in each status, and the failed ones."""

    counts: Mapping[str, int]
    failed: tuple[Outgoing, ...]


@dataclass(frozen=True)
class _Digest:
    """What is kept of one version of a period file once it has been read for its numbers."""

    stamp: tuple[int, int, int]
    summary: dict[int, PeriodSummary]
    tally: OutgoingTally
    problem: Problem | None = None  # the file could not be read: reported at each use


def _summary(view: WeekView, data: dict[str, dict[str, Any]]) -> dict[int, PeriodSummary]:
    summary: dict[int, PeriodSummary] = {}
    for d in data.get("weeks", {}).values():
        pid = view._obj("weeks", d, lambda d: int(d["partnership_id"]))
        summary[pid] = PeriodSummary(
            checkin_sent=d.get("checkin_at") is not None,
            no_report_sent=d.get("no_report_at") is not None,
        )
    for d in data.get("reports", {}).values():
        pid, setback = view._obj(
            "reports", d, lambda d: (int(d["partnership_id"]), bool(d["setback"]))
        )
        prev = summary.get(pid, PeriodSummary())
        summary[pid] = PeriodSummary(
            prev.checkin_sent,
            prev.no_report_sent,
            prev.reports + 1,
            prev.setback or setback,
        )
    return summary


def _tally(view: WeekView, data: dict[str, dict[str, Any]]) -> OutgoingTally:
    counts: dict[str, int] = {}
    failed = []
    for d in data.get("outgoing", {}).values():
        status = _status(d)
        counts[status] = counts.get(status, 0) + 1
        if status == FAILED:
            failed.append(view._obj("outgoing", d, Outgoing.from_doc))
    return OutgoingTally(counts, tuple(failed))


@dataclass
class _Cached:
    stamp: tuple[int, int, int]
    data: dict[str, dict[str, Any]]


# A temp file is named ".{target}.{pid}.{thread}.tmp" by AtomicJSONStorage.write.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.\d+\.\d+\.tmp$")


_Tables = dict[str, dict[str, Any]]


def _stamp_of(path: Path) -> tuple[int, int, int] | None:
    """A file's version as the caches compare it (inode, mtime, size); None: no file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _ShardCache:
    """Parsed shards, least recently used first, at most SHARD_CACHE_BYTES of JSON; a file
    whose version changed is read again. Shared by the store's threads."""

    def __init__(self) -> None:
        self.entries: dict[Path, _Cached] = {}
        self._lock = threading.Lock()

    def load(
        self, path: Path, disk: Disk, note: Callable[[Problem], None]
    ) -> tuple[tuple[int, int, int] | None, _Tables]:
        stamp = _stamp_of(path)
        if stamp is None:
            return None, {}
        with self._lock:
            cached = self.entries.pop(path, None)
            if cached is not None and cached.stamp == stamp:
                self.entries[path] = cached  # now the most recently used
                return stamp, cached.data
        try:
            data = AtomicJSONStorage(path, disk).read() or {}
        except CorruptFileError as exc:
            note(Problem(path, str(exc).removeprefix(f"{path}: "), error=True))
            raise
        with self._lock:
            self.entries.pop(path, None)
            self.entries[path] = _Cached(stamp, data)
            total = sum(c.stamp[2] for c in self.entries.values())
            while len(self.entries) > 1 and total > SHARD_CACHE_BYTES:
                total -= self.entries.pop(next(iter(self.entries))).stamp[2]
        return stamp, data


def _program_by_shard(core: _Tables) -> dict[str, frozenset[str]]:
    """Shard name -> the members and partners named in core.json who live in it."""
    by_shard: dict[str, set[str]] = {}
    for doc in core.get("partnerships", {}).values():
        for field in ("member", "partner"):
            email = doc.get(field) if isinstance(doc, dict) else None
            if isinstance(email, str):
                by_shard.setdefault(shard_name(email), set()).add(email)
    return {name: frozenset(emails) for name, emails in by_shard.items()}


class _Program:
    """The program's people (every member and partner in core.json) as Person objects, per
    version of their shard: whom `serve` asks about at every tick and ingest batch.

    Reading a shard for one of them converts all of them in that shard, so a tick that asks
    for 10,000 people spread over all 256 shards reads each shard once and keeps 10,000
    objects, not the whole parsed directory. Anyone else is looked up in the store's bounded
    cache of parsed shards and not kept here: the size follows the program, not the directory.
    A shard that changed on disk (a CLI command while `serve` runs) has a new stamp, so its
    people are read again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shards: dict[str, tuple[tuple[int, int, int] | None, dict[str, Person | None]]] = {}

    def person(
        self,
        store: Store,
        name: str,
        stamp: tuple[int, int, int] | None,
        email: str,
        wanted: Mapping[str, frozenset[str]],
    ) -> Person | None:
        mine = wanted.get(name, frozenset())
        with self._lock:
            entry = self._shards.get(name)
            if entry is not None and entry[0] == stamp and email in entry[1]:
                return entry[1][email]
        path = store.people_dir / name
        stamp, data = store._load_shard(path)
        view = _View(data, False, path)
        table = view._table("people")
        doc = table.get(email)
        person = None if doc is None else view._obj("people", doc, Person.from_doc)
        if email not in mine:
            return person
        found: dict[str, Person | None] = {email: person}
        for other in mine - {email}:
            doc = table.get(other)
            # A malformed record is named when someone asks for that person.
            with suppress(CorruptFileError):
                found[other] = None if doc is None else view._obj("people", doc, Person.from_doc)
        with self._lock:
            entry = self._shards.get(name)
            if entry is not None and entry[0] == stamp:
                entry[1].update(found)
            else:
                self._shards[name] = (stamp, found)
        return person


class Store:
    """Handle on one data directory. Safe across threads and processes."""

    def __init__(self, data_dir: Path, disk: Disk = REAL) -> None:
        self.data_dir = data_dir
        self.db_dir = data_dir / "db"
        self.disk = disk  # the fault hook for tests (see disk.py)
        self._problems: dict[tuple[Path, str], Problem] = {}
        self._problems_lock = threading.Lock()
        self._cache: dict[Path, _Cached] = {}
        self._digests: dict[Path, _Digest] = {}
        self._guards: dict[Path, threading.RLock] = {}
        self._guards_lock = threading.Lock()
        self._fragments: tuple[Path, _Fragments] | None = None
        # Parsed shards by file version, least recently used first (bounded: SHARD_CACHE_BYTES).
        self._shards = _ShardCache()
        # The program's people as objects, per shard version: what serve asks about.
        self._program = _Program()
        self._core_emails: tuple[_Tables, dict[str, frozenset[str]]] | None = None
        self._journal = _Journal(self.db_dir, disk)
        self._core_objects: tuple[dict[str, dict[str, Any]], dict[int, Partnership]] | None = None

    def init(self) -> None:
        """Create the directories and clear temp files a killed writer left behind.

        A temp file may also belong to a live writer in another process (every CLI command
        runs init() while `serve` may be writing): deleting it made that writer's os.replace
        fail. Writers only write under the target file's lock, so a temp file seen while
        holding that lock is a leftover; one whose lock is busy is skipped (its writer is
        alive, or the next init() gets it).
        """
        (self.db_dir / "weeks").mkdir(parents=True, exist_ok=True)
        self.people_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.db_dir, self.db_dir / "weeks", self.people_dir):
            for tmp in folder.glob(".*.tmp"):
                m = _TEMP_NAME.match(tmp.name)
                if m is None:
                    continue
                # Shards and the journal are written under the core lock.
                target = folder / m.group("target")
                if folder == self.people_dir or target == self.journal_path:
                    target = self.core_path
                lock = FileLock(str(target) + ".lock", timeout=0)
                try:
                    lock.acquire()
                except LockTimeout:
                    continue
                try:
                    with suppress(OSError):
                        tmp.unlink()
                finally:
                    lock.release()
        # Finish (or discard) a killed writer's multi-file commit; move an old core.json's people.
        # Locked only when needed: a read-only command must not wait for serve's writes.
        staged = [f for d in (self.db_dir, self.people_dir) for f in d.glob(".*.staged")]
        if staged or self.journal_path.exists() or "people" in self._load(self.core_path):
            with self._transaction(self.core_path) as data:  # (applies a journal first)
                for folder in (self.db_dir, self.people_dir):
                    for stale in folder.glob(".*.staged"):  # staged, never committed
                        with suppress(OSError):
                            stale.unlink()
                if "people" in data:
                    self._migrate_locked(data)

    # -- plumbing ---------------------------------------------------------------------------

    def _guard(self, path: Path) -> threading.RLock:
        with self._guards_lock:
            guard = self._guards.get(path)
            if guard is None:
                guard = self._guards[path] = threading.RLock()
            return guard

    def _load(self, path: Path, keep: bool = True) -> dict[str, dict[str, Any]]:
        """The file's current content, re-parsed only when it changed on disk."""
        try:
            st = path.stat()
        except FileNotFoundError:
            self._cache.pop(path, None)
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached.stamp == stamp:
            return cached.data
        try:
            data = AtomicJSONStorage(path, self.disk).read() or {}
        except CorruptFileError as exc:
            self._note(Problem(path, str(exc).removeprefix(f"{path}: "), error=True))
            raise
        if keep:
            self._remember(path, _Cached(stamp, data))
        return data

    def _remember(self, path: Path, entry: _Cached) -> None:
        # A long-running `serve` touches a new week file every week: keep only the most
        # recently used few parsed, so memory does not grow with years of history.
        self._cache.pop(path, None)
        self._cache[path] = entry
        while len(self._cache) > 1 and (
            len(self._cache) > CACHE_FILES
            or sum(c.stamp[2] for c in self._cache.values()) > CACHE_BYTES
        ):
            self._cache.pop(next(iter(self._cache)))

    @contextmanager
    def _transaction(self, path: Path) -> Iterator[dict[str, dict[str, Any]]]:
        guard = self._guard(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_SECONDS)
        with guard:
            try:
                lock.acquire()
            except LockTimeout:
                raise StoreLockedError(path, "database is locked by another process") from None
            try:
                if path == self.core_path:
                    self._recover_locked()
                # Copy the tables (not the documents: puts replace documents, never edit
                # them) so snapshots handed out earlier, and the cache if this transaction
                # fails, never see half-applied changes.
                yield {name: dict(table) for name, table in self._load(path).items()}
            finally:
                lock.release()

    def _commit(self, path: Path, data: dict[str, dict[str, Any]]) -> None:
        # Keep serialised documents only for the file written last (the period under way):
        # it is the one rewritten again and again, and the cache costs its size in memory.
        # (Two threads writing two files may swap it under each other: harmless, a hit
        # needs the very same document object, whichever file it came from.)
        frag = self._fragments
        if frag is None or frag[0] != path:
            frag = self._fragments = (path, _Fragments())
        AtomicJSONStorage(path, self.disk).write(data, frag[1].dumps(data))
        st = path.stat()
        self._remember(path, _Cached((st.st_ino, st.st_mtime_ns, st.st_size), data))

    # -- public -----------------------------------------------------------------------------

    @property
    def core_path(self) -> Path:
        return self.db_dir / "core.json"

    def week_path(self, period: str) -> Path:
        return self.db_dir / "weeks" / f"{period}.json"

    @property
    def people_dir(self) -> Path:
        return self.db_dir / "people"

    @property
    def journal_path(self) -> Path:
        return self._journal.path

    def shard_path(self, email: str) -> Path:
        """The shard file that holds (or would hold) this person."""
        return self.people_dir / shard_name(email)

    def shard_names(self) -> list[str]:
        if not self.people_dir.is_dir():
            return []
        return sorted(p.name for p in self.people_dir.iterdir() if _SHARD_FILE.match(p.name))

    def _load_shard(self, path: Path) -> tuple[tuple[int, int, int] | None, _Tables]:
        """(version, parsed content) of a shard as it is now (see `_ShardCache`)."""
        return self._shards.load(path, self.disk, self._note)

    def _program_emails(self) -> Mapping[str, frozenset[str]]:
        """Shard name -> the addresses of the program's people in it (every member and
        partner named in core.json), computed once per version of core.json."""
        data = self._core_data()
        with self._guard(self.core_path):
            hit = self._core_emails
            if hit is None or hit[0] is not data:
                hit = self._core_emails = (data, _program_by_shard(data))
            return hit[1]

    def _core_data(self) -> dict[str, dict[str, Any]]:
        """core.json as it is now, after any unfinished commit or migration is settled."""
        with self._guard(self.core_path):
            if self.journal_path.exists():
                # A writer is applying a multi-file commit (or died doing it): wait for it
                # (or finish its work) so that this read sees all of it or none of it.
                with self._transaction(self.core_path):
                    pass
            data = self._load(self.core_path)
            if "people" in data:
                with self._transaction(self.core_path) as fresh:
                    if "people" in fresh:
                        self._migrate_locked(fresh)
                data = self._load(self.core_path)
            return data

    def core(self) -> CoreView:
        """A read-only snapshot of the partnerships; people are read shard by shard when asked."""
        return CoreView(
            self._core_data(), writable=False, path=self.core_path, people=Directory(self, False)
        )

    def _core_maps(self) -> tuple[Directory, dict[int, Partnership]]:
        # Partnership objects are frozen, so they can be shared across calls; they are rebuilt
        # only when core.json changed (a new parsed dict), not on every small ingest batch.
        data = self._core_data()
        with self._guard(self.core_path):
            hit = self._core_objects
            if hit is None or hit[0] is not data:
                view = CoreView(data, False, self.core_path, Directory(self, False))
                hit = self._core_objects = (data, {p.id: p for p in view.partnerships()})
            return Directory(self, False), hit[1]

    def roster(self) -> Roster:
        """People (a Directory) and partnerships (id order, objects shared per version)."""
        people, partnerships = self._core_maps()
        return Roster(people, dict(partnerships))

    def offer_index(self, skills: Iterable[str]) -> OfferIndex:
        """skill -> who offers it, over the shards as stored now (`skills`: the skills on
        offer, e.g. `CoreView.offered()` of the caller's transaction)."""
        return OfferIndex(Directory(self, False), skills)

    def people_map(self) -> Mapping[str, Person]:
        """email -> Person, read shard by shard (parsed shards cached per file version)."""
        return self._core_maps()[0]

    def partnerships_map(self) -> dict[int, Partnership]:
        """id -> Partnership in id order, as core().partnerships() would give."""
        return dict(self._core_maps()[1])

    @contextmanager
    def core_tx(self) -> Iterator[CoreView]:
        """Read-modify-write of people and partnerships, atomic and exclusive: every file it
        changed (core.json, shards) is replaced together or not at all."""
        with self._transaction(self.core_path) as data:
            if "people" in data:
                self._migrate_locked(data)
            people = Directory(self, writable=True)
            view = CoreView(data, writable=True, path=self.core_path, people=people)
            yield view
            files = people.changed()
            if view.changed:
                files.append((self.core_path, data))
            self._commit_many(files)

    def _commit_many(self, files: list[tuple[Path, dict[str, dict[str, Any]]]]) -> None:
        """Replace every file in `files` as a set (caller holds the core lock): one file by
        the usual temp file and rename, several through the journal (`_Journal.commit`)."""
        if len(files) == 1 and files[0][0] == self.core_path:
            self._commit(*files[0])
        elif len(files) == 1:
            AtomicJSONStorage(files[0][0], self.disk).write(files[0][1])
        elif files:
            self._journal.commit(files)
            self._recover_locked()

    def _recover_locked(self) -> None:
        """Apply the journal of a multi-file commit, if there is one (core lock held)."""
        for target in self._journal.recover():
            self._cache.pop(target, None)

    def _migrate_locked(self, data: dict[str, dict[str, Any]]) -> None:
        """Move the people table of an old core.json into shards (core lock held; `data`
        is the transaction's copy of core.json, changed in place and committed).

        Shards first, each synced; then core.json without people (with its indexes)
        replaces the old one atomically. A crash before that rename leaves the old
        core.json, and the next start does the whole move again.
        """
        shards, index = _split_people(data.pop("people"), self.core_path)
        self._journal.write_shards(self.people_dir, shards)
        data.update(index)
        self._commit(self.core_path, data)
        log.info("moved the people of core.json into %s", self.people_dir)

    def week(self, period: str) -> WeekView:
        """A read-only snapshot of one period; CorruptFileError (naming the file) when that
        file cannot be read, which stops only what needs this period."""
        path = self.week_path(period)
        with self._guard(path):
            return WeekView(period, self._load(path), writable=False, path=path)

    @contextmanager
    def week_tx(self, period: str) -> Iterator[WeekView]:
        path = self.week_path(period)
        with self._transaction(path) as data:
            view = WeekView(period, data, writable=True, path=path)
            yield view
            if view.changed:
                self._commit(path, data)

    def period_summary(self, period: str) -> dict[int, PeriodSummary]:
        """Per partnership: what happened in one period, for history strips, summaries and
        `status`.

        Cached per file version without keeping the file itself, so reading a year of
        history costs one parse per old week per process and little memory. A file that
        cannot be read gives an empty summary (that week shows as nothing happened) and a
        `Problem` for `take_problems`: one broken old week must not stop every check-in
        whose history strip passes over it.
        """
        return self._digest(period).summary

    def outgoing_tally(self, period: str) -> OutgoingTally:
        """How one period's outgoing mail stands: counts by status and the failed messages.

        Cached per file version with the summary (one parse gives both): `status` counts the
        queued and failed mail of the latest periods, whose 30,000 records each are nearly all
        sent, without an object per record and, in a long-running process, without parsing a
        file again that has not changed.
        """
        return self._digest(period).tally

    def _digest(self, period: str) -> _Digest:
        path = self.week_path(period)
        with self._guard(path):
            try:
                st = path.stat()
            except FileNotFoundError:
                return _Digest((0, 0, 0), {}, OutgoingTally({}, ()))
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            hit = self._digests.get(path)
            if hit is not None and hit.stamp == stamp:
                if hit.problem is not None:
                    self._note(hit.problem)  # still broken: still reported, not parsed again
                return hit
            try:
                digest = self._read_digest(path, stamp)
            except CorruptFileError as exc:
                problem = Problem(path, str(exc).removeprefix(f"{path}: "), error=True)
                self._note(problem)
                digest = _Digest(stamp, {}, OutgoingTally({}, ()), problem)
            self._digests[path] = digest
            return digest

    def _read_digest(self, path: Path, stamp: tuple[int, int, int]) -> _Digest:
        cached = self._cache.get(path)
        data = cached.data if cached and cached.stamp == stamp else self._load(path, False)
        view = WeekView(path.stem, data, writable=False, path=path)
        return _Digest(stamp, _summary(view, data), _tally(view, data))

    # -- problems ---------------------------------------------------------------------------

    def _note(self, problem: Problem) -> None:
        with self._problems_lock:
            if (problem.path, problem.message) not in self._problems:
                (log.error if problem.error else log.warning)("%s", problem)
            self._problems[(problem.path, problem.message)] = problem

    def take_problems(self) -> list[Problem]:
        """The problems noticed while reading since the last call (each once), oldest first.

        For the caller of a whole run (`tick`, a `serve` tick): print each as an `error:`
        (or warning) line and exit non-zero when any is an error.
        """
        with self._problems_lock:
            out = list(self._problems.values())
            self._problems.clear()
        return out

    def periods(self) -> list[str]:
        """Every period label that has a file, oldest first.

        Only files named exactly like a period (`YYYY-Www.json`) count; any other file in
        db/weeks/ is left alone and reported once as a warning (`take_problems`).
        """
        folder = self.db_dir / "weeks"
        if not folder.is_dir():
            return []
        labels = []
        for p in folder.glob("*.json"):
            m = _PERIOD_FILE.match(p.name)
            if m is not None:
                labels.append(m.group(1))
            elif not p.name.startswith("."):
                message = "not a period file (expected YYYY-Www.json); ignored"
                self._note(Problem(p, message, error=False))
        return sorted(labels)

    def reports(self, pid: int | None = None, since: date | None = None) -> Iterator[Report]:
        """Every stored report (of partnership `pid`), period file by period file, oldest first.

        With `since`, period files that cannot hold a report received (UTC) on or after that
        day are skipped. A report is stored under the member's period at receipt, and a
        period runs from one check-in to the next in the member's zone, so a report received
        on UTC day `since` can sit in a period labelled up to two ISO weeks earlier (a day of
        time-zone offset, plus a late check-in day such as Sunday evening). The cut-off is
        therefore the ISO week of `since - 8 days`; it only saves reading files, a caller
        still filters exactly by `received_at`.
        """
        cutoff: tuple[int, int] | None = None
        if since is not None:
            year, week, _ = (since - timedelta(days=8)).isocalendar()
            cutoff = (year, week)
        for period in self.periods():
            if cutoff is not None and _label_key(period, cutoff) < cutoff:
                continue
            yield from self.week(period).reports(pid)


def _label_key(label: str, default: tuple[int, int]) -> tuple[int, int]:
    """(year, week) of a period label; `default` for a file name we did not write (read it
    rather than silently drop its reports)."""
    try:
        year, week = label.split("-W")
        return int(year), int(week)
    except ValueError:
        return default
