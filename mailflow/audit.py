"""The audit log: who changed what, when, through the admin site (and who asked it for a link).

One JSON object per line in data_dir/web/audit.jsonl, appended under a file lock and fsynced
before the change is reported done, so the record survives a crash and two processes (`serve`
and `mailflow web link`, say) never interleave lines. Append-only on purpose: an entry is never
rewritten, so the file is also what an operator greps or ships to a log store. It never holds
what a member wrote (only ids, states, template names and addresses).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from filelock import FileLock

from mailflow.store import fsync_dir

MAX_FIELD = 500  # an entry stays one short line even when a value is typed by anyone


@dataclass(frozen=True)
class Entry:
    at: datetime
    who: str
    action: str
    target: str = ""
    detail: str = ""

    def to_doc(self) -> dict[str, str]:
        return {
            "at": self.at.isoformat(),
            "who": self.who,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, str]) -> Entry:
        return cls(
            at=datetime.fromisoformat(doc["at"]),
            who=str(doc.get("who", "")),
            action=str(doc.get("action", "")),
            target=str(doc.get("target", "")),
            detail=str(doc.get("detail", "")),
        )


def _clip(value: str) -> str:
    flat = " ".join(str(value).split())
    return flat if len(flat) <= MAX_FIELD else flat[: MAX_FIELD - 1] + "…"


class AuditLog:
    """An append-only JSON-lines file; safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(path) + ".lock", timeout=30)

    def record(
        self, at: datetime, who: str, action: str, target: str = "", detail: str = ""
    ) -> Entry:
        """Append one entry and make it durable before returning it."""
        if at.tzinfo is None:
            raise ValueError("audit entries need a timezone-aware time")
        entry = Entry(at, _clip(who), _clip(action), _clip(target), _clip(detail))
        line = json.dumps(entry.to_doc(), ensure_ascii=False) + "\n"
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        if created:
            fsync_dir(self.path.parent)
        return entry

    def entries(self, offset: int = 0, limit: int = 100) -> tuple[list[Entry], int]:
        """A page of entries, newest first, and how many there are in all.

        A torn last line (a crash mid-append, before the fsync returned) is skipped: that
        change was never reported done.
        """
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return [], 0
        found: list[Entry] = []
        for line in text.splitlines():
            try:
                found.append(Entry.from_doc(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                continue
        found.reverse()
        return found[offset : offset + limit], len(found)
