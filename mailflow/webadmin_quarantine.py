"""The admin site's quarantine: list, show, release, drop (part of `WebAdmin`).

Each is the function behind `mailflow quarantine list/show/release/drop` (`mailflow.quarantine`),
called over the site's parts, plus the audit record of each decision. Nothing is read or
decided here that the command line does not read or decide the same way.

The one place the site shows what someone wrote: quarantined mail reached nobody, and an admin
must read it to release it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mailflow import quarantine
from mailflow.intake import Intake
from mailflow.letters import ServiceInfo
from mailflow.spool import Spool


@dataclass(frozen=True)
class Detail:
    """One quarantined message as its page shows it: `quarantine show`, and what a release
    would do with it, in words."""

    shown: quarantine.Shown
    releasable: bool  # a readable envelope: without one it can only be dropped
    release_note: str

    @property
    def item(self) -> quarantine.Item:
        return self.shown.item

    @property
    def envelope(self) -> dict[str, object]:
        return self.shown.envelope

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self.shown.headers

    @property
    def parsed(self) -> object:
        return self.shown.parsed


class QuarantineDesk:
    """Quarantined mail; a part of `WebAdmin`, which sets `spool`, `intake` and `svc` and
    provides `record` and `_changed`."""

    spool: Spool
    intake: Intake
    svc: ServiceInfo

    def quarantine_list(self) -> list[quarantine.Item]:
        """Every quarantined message, newest first (`mailflow quarantine list`, reversed)."""
        return list(reversed(quarantine.items(self.spool, self.svc.keys)))

    def quarantine_show(self, qid: str) -> Detail:
        """`mailflow quarantine show ID`: reason, envelope, headers, the parser's reading."""
        shown = quarantine.show(self.spool, self.svc.keys, qid)
        releasable = bool(shown.envelope)
        if not releasable:
            note = "This file has no readable envelope: it can only be dropped."
        elif shown.item.reason.startswith("sender mismatch"):
            note = (
                "Release counts what it says for the period it was written for, and the "
                "partner gets that period's digest now. It came from another address than the "
                "one the check-in went to: what it asks (commands, a yes or no) is not done, "
                "and the member is told which."
            )
        else:
            note = (
                "Release counts it for the period it was written for, and the partner gets "
                "that period's digest now. What still cannot count stays here."
            )
        return Detail(shown, releasable, note)

    def quarantine_release(self, qid: str, now: datetime, who: str) -> list[str]:
        """`mailflow quarantine release ID`, audited: the lines to show the admin."""
        done = quarantine.release(self.intake, qid, now, who)
        self._changed()
        not_run = f"; not run: {', '.join(done.not_run)}" if done.not_run else ""
        self.record(
            now,
            who,
            "quarantine released",
            qid,
            f"from {done.item.sender or 'nobody'}; reason was: {done.item.reason}{not_run}",
        )
        lines = [f"Released {qid}."]
        if done.not_run:
            lines.append(f"Not run (sent from {done.item.sender}): " + "; ".join(done.not_run))
        return lines + [" ".join(line.split())[:200] for line in done.lines]

    def quarantine_drop(self, qid: str, now: datetime, who: str) -> str:
        """`mailflow quarantine drop ID`, audited."""
        item = quarantine.drop(self.spool, qid, now, who)
        self._changed()
        self.record(
            now,
            who,
            "quarantine dropped",
            qid,
            f"from {item.sender or 'nobody'}; reason was: {item.reason}",
        )
        return f"Dropped {qid}."
