"""What an admin does to one partnership, from the command line or (later) the web.

Each action reads only the partnership it is about (and its member, for her date), applies
the rule from `partnerships` to the record as stored now and writes it back, in one core
transaction: its cost does not grow with the directory, and it never loses a change made
meanwhile by `serve`. Errors are `DomainError`s (an unknown id, a rule that refuses).

The other admin views are plain functions too: `status.status` (or `App.status`) for the
status page, `Templates.check` / `Templates.preview` for the templates, `store.reports` for
a partnership's progress records.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from mailflow import partnerships as pships
from mailflow.errors import DomainError
from mailflow.models import Partnership
from mailflow.store import CoreView, Store


def partnership(store: Store, pid: int) -> Partnership:
    """The partnership as stored now; DomainError when there is none with that id."""
    return _get(store.core(), pid)


def reports(store: Store, pid: int) -> list[dict[str, Any]]:
    """A partnership's progress records, oldest first, as `partnerships show --json` lists
    them: {period, received_at (ISO 8601), message_id, setback, text}."""
    rows = [
        {
            "period": r.period,
            "received_at": r.received_at.isoformat(),
            "message_id": r.message_id,
            "setback": r.setback,
            "text": r.text,
        }
        for r in store.reports(pid)
    ]
    return sorted(rows, key=lambda row: row["received_at"])


def pause(
    store: Store, pid: int, until: date | None, now: datetime, default_tz: str
) -> Partnership:
    """Pause check-ins (until a date, after which they resume by themselves, or open-ended).

    `until` must lie after the member's today (in her zone; `default_tz` if she is gone).
    """

    def change(core: CoreView, p: Partnership) -> Partnership:
        member = core.person(p.member)
        today = now.astimezone(ZoneInfo(member.timezone if member else default_tz)).date()
        return pships.pause(p, until, today)

    return _update(store, pid, change)


def resume(store: Store, pid: int) -> Partnership:
    """Resume check-ins of a paused partnership."""
    return _update(store, pid, lambda _core, p: pships.resume(p))


def end(store: Store, pid: int, now: datetime) -> Partnership:
    """End a partnership for good."""
    return _update(store, pid, lambda _core, p: pships.end(p, now))


def _get(core: CoreView, pid: int) -> Partnership:
    p = core.partnership(pid)
    if p is None:
        raise DomainError(f"no partnership {pid}")
    return p


def _update(
    store: Store, pid: int, change: Callable[[CoreView, Partnership], Partnership]
) -> Partnership:
    with store.core_tx() as core:
        updated = change(core, _get(core, pid))
        core.put_partnership(updated)
    return updated
