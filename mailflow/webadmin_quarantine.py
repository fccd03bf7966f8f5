"""The admin site's quarantine: list, show, release, drop (part of `WebAdmin`).

TODO(merge): issue 10 (branch `quarantine`) brings `mailflow.quarantine` behind `mailflow
quarantine list/show/release/drop`; until it is in main these are minimal versions over the
`spool` and `intake.ingest`. Once it is: `quarantine_list` becomes
`quarantine.items(self.spool, self.svc.keys)` reversed (its `Item` also has partnership and
period, which the list may show; it has no `size`, which no page uses), `quarantine_show`
`quarantine.show(self.spool, self.svc.keys, qid)` (`releasable` = `envelope` is not empty),
`quarantine_release` `quarantine.release(self.intake, qid, now, who)` (it counts the report for
its token's period, sends that digest, runs no command of an unproven sender, and records the
decision in the sidecar; the page shows its `lines` and `not_run`), `quarantine_drop`
`quarantine.drop(self.spool, qid, now, who)`; the private readers here and the README's
paragraph on release go, and each method keeps its audit record.

The one place the site shows what someone wrote: quarantined mail reached nobody, and an admin
must read it to release it.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import re
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mailflow.errors import DomainError
from mailflow.intake import Intake
from mailflow.parse import ParsedMessage, parse_message
from mailflow.spool import MAGIC, REASON_SUFFIX, Spool
from mailflow.store import fsync_dir

_MISMATCH = re.compile(
    r"^sender mismatch: from \S+, expected the (?:member|partner) (?P<addr>\S+)$"
)


@dataclass(frozen=True)
class QuarantineItem:
    id: str
    reason: str
    sender: str
    subject: str
    received_at: datetime | None
    size: int


@dataclass(frozen=True)
class QuarantineDetail:
    item: QuarantineItem
    envelope: dict[str, Any]
    headers: tuple[tuple[str, str], ...]
    parsed: ParsedMessage
    releasable: bool
    release_note: str


class QuarantineDesk:
    """Quarantined mail; a part of `WebAdmin`, which sets `spool` and `intake` and provides
    `record` and `_changed`."""

    spool: Spool
    intake: Intake

    def _quarantine_path(self, qid: str) -> Path:
        folder = self.spool.quarantine_dir
        names = {n for n in os.listdir(folder) if not n.startswith(".")}
        if qid not in names or qid.endswith(REASON_SUFFIX):
            raise DomainError(f"no quarantined message {qid!r}")
        return folder / qid

    def _read_quarantined(self, qid: str) -> tuple[dict[str, Any], bytes]:
        """The spool envelope and the raw message of a quarantined file.

        TODO(merge): goes with branch `quarantine` (`Spool.read_quarantined`, `envelope_of`,
        `raw_message`); the file is the spool file moved aside, so this is the spool's own
        format (`MFSPOOL1 {json}` line, then the raw bytes).
        """
        data = self._quarantine_path(qid).read_bytes()
        if data.startswith(MAGIC):
            head, _, raw = data.partition(b"\n")
            try:
                envelope = json.loads(head[len(MAGIC) :].decode("ascii"))
                if isinstance(envelope, dict):
                    return envelope, raw
            except (UnicodeDecodeError, ValueError):
                pass
        return {}, data

    def _item(self, qid: str, reason: str) -> QuarantineItem:
        try:
            envelope, raw = self._read_quarantined(qid)
        except (DomainError, OSError):
            return QuarantineItem(qid, reason, "", "", None, 0)
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
            raw[:65536]
        )
        received = None
        with suppress(KeyError, ValueError, TypeError):
            received = datetime.fromisoformat(str(envelope["received_at"]))
        return QuarantineItem(
            id=qid,
            reason=reason,
            sender=_header(headers, "From") or str(envelope.get("mail_from", "")),
            subject=_header(headers, "Subject"),
            received_at=received,
            size=len(raw),
        )

    def quarantine_list(self) -> list[QuarantineItem]:
        """Every quarantined message, newest first (`mailflow quarantine list`)."""
        items = [self._item(qid, reason) for qid, reason in self.spool.quarantined()]
        items.reverse()
        return items

    def quarantine_show(self, qid: str) -> QuarantineDetail:
        """The message as the parser reads it: reason, envelope, headers, new text."""
        reason = dict(self.spool.quarantined()).get(qid, "(no reason recorded)")
        envelope, raw = self._read_quarantined(qid)
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
            raw[:65536]
        )
        shown = tuple(
            (h, _header(headers, h))
            for h in ("From", "To", "Subject", "Date", "Message-ID", "In-Reply-To")
            if _header(headers, h)
        )
        releasable = bool(envelope)
        note = (
            "Release processes it again as it arrived."
            if releasable
            else "This file has no readable envelope: it can only be dropped."
        )
        match = _MISMATCH.match(reason)
        if releasable and match:
            note = (
                f"Release vouches for the sender: the message is processed as if it came "
                f"from {match.group('addr')} (the original From is kept in the archived copy)."
            )
        return QuarantineDetail(
            item=self._item(qid, reason),
            envelope=envelope,
            headers=shown,
            parsed=parse_message(raw),
            releasable=releasable,
            release_note=note,
        )

    def quarantine_release(self, qid: str, now: datetime, who: str) -> list[str]:
        """Put a quarantined message back into the spool and process it now.

        TODO(merge): `quarantine.release(self.intake, qid, now, who)` once branch `quarantine`
        (issue 10) is in main (see the module docstring). Until then: the message
        goes back into the spool with its original envelope and received time (so it counts
        for the period it arrived in), and, for a sender mismatch, with its From set to the
        expected address: the admin vouches for the sender, and the original From stays in
        the archived copy (X-Mailflow-Original-From). Then one ingest round, as `tick` does.
        """
        reason = dict(self.spool.quarantined()).get(qid, "")
        envelope, raw = self._read_quarantined(qid)
        if not envelope:
            raise DomainError(f"{qid}: no readable envelope; it can only be dropped")
        match = _MISMATCH.match(reason)
        stamp = f"by {who} at {now.isoformat()}"
        raw = _with_headers(
            raw, {"X-Mailflow-Released": stamp}, new_from=match.group("addr") if match else None
        )
        received = datetime.fromisoformat(str(envelope["received_at"]))
        spool = self.spool
        new_id = spool.put(
            raw,
            mail_from=str(envelope.get("mail_from", "")),
            rcpt_tos=[str(r) for r in envelope.get("rcpt_tos", [])],
            peer=str(envelope.get("peer", "")),
            received_at=received,
        )
        # Only now, with the copy durable in the spool, does the quarantined one go.
        self._remove_quarantined(qid)
        self._changed()
        self.record(now, who, "quarantine released", qid, f"reason was: {reason}")
        lines = self.intake.ingest(now).lines
        mine = [line for line in lines if new_id in line] or lines
        return [f"Released {qid}."] + _without_text(mine)

    def quarantine_drop(self, qid: str, now: datetime, who: str) -> str:
        """Delete a quarantined message for good (`quarantine drop ID`).

        TODO(merge): `quarantine.drop(self.spool, qid, now, who)` once branch `quarantine`
        (issue 10) is in main.
        """
        item = self._item(qid, dict(self.spool.quarantined()).get(qid, ""))
        self._quarantine_path(qid)  # refuses an unknown id before anything is recorded
        self.record(
            now, who, "quarantine dropped", qid, f"from {item.sender}; reason was: {item.reason}"
        )
        self._remove_quarantined(qid)
        self._changed()
        return f"Dropped {qid}."

    def _remove_quarantined(self, qid: str) -> None:
        path = self._quarantine_path(qid)
        path.unlink()
        (path.parent / (qid + REASON_SUFFIX)).unlink(missing_ok=True)
        fsync_dir(path.parent)


def _header(headers: Any, name: str) -> str:
    try:
        value = headers.get(name)
    except Exception:  # noqa: BLE001 - a malformed header must not break the page
        return ""
    return " ".join(str(value).split()) if value is not None else ""


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FROM_LINE = re.compile(rb"(?im)^From:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*")


def _with_headers(raw: bytes, extra: Mapping[str, str], new_from: str | None) -> bytes:
    """The raw message with headers added at the top (and From replaced, keeping the old)."""
    m = _HEADER_END.search(raw)
    head, body = (raw[: m.start()], raw[m.start() :]) if m else (raw, b"")
    newline = b"\r\n" if b"\r\n" in head[:2000] or not head else b"\n"
    added = b"".join(f"{k}: {v}".encode("ascii", "replace") + newline for k, v in extra.items())
    if new_from is not None:
        old = _FROM_LINE.search(head)
        original = old.group(0)[5:].strip() if old else b""
        added += b"X-Mailflow-Original-From: " + b" ".join(original.split()) + newline
        replacement = b"From: " + new_from.encode("ascii", "replace")
        head = (
            _FROM_LINE.sub(lambda _m: replacement, head, count=1)
            if old
            else (head + newline + replacement)
        )
    return added + head + body


def _without_text(lines: list[str]) -> list[str]:
    """Ingest's lines name ids, periods and addresses; keep them to one short line each."""
    return [" ".join(line.split())[:200] for line in lines]
