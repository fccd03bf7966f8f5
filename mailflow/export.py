"""Export of progress records for a program's own reporting (CSV or JSON), pure.

`export_rows` turns reports (read with `Store.reports(since=...)`) into rows, the writers
print them. One row per stored progress record (a member's reply), oldest first.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date
from typing import Any, TextIO

from mailflow.models import Partnership, Report

EXPORT_FIELDS = (
    "partnership",
    "member",
    "partner",
    "skill",
    "period",
    "received_at",
    "setback",
    "done",
    "setback_text",
    "next",
    "text",
    "message_id",
)

# A cell starting with one of these is run as a formula by Excel, LibreOffice and Google
# Sheets when the CSV is opened ("CSV injection"): member-written text such as
# "=HYPERLINK(...)" must not become live. A leading apostrophe makes it plain text there.
# Tab and CR are on OWASP's list too. A side effect: a text that starts with "- " (a bullet
# list) also gets the apostrophe; the JSON export is untouched for programs that want exact text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def export_rows(
    partnerships: Mapping[int, Partnership], reports: Iterable[Report], since: date | None
) -> list[dict[str, Any]]:
    """One row per report with `received_at` (as a UTC date) on or after `since`, oldest first."""
    rows: list[dict[str, Any]] = []
    # message_id breaks ties so that two reports in the same second always export in one order.
    for r in sorted(reports, key=lambda r: (r.received_at, r.message_id)):
        received = r.received_at.astimezone(UTC)
        if since is not None and received.date() < since:
            continue
        p = partnerships.get(r.partnership_id)
        rows.append(
            {
                "partnership": r.partnership_id,
                # Partnerships are never deleted, but an export must not die on one bad record:
                # fall back to the sender, which ingest checked against the member.
                "member": p.member if p else r.sender,
                "partner": p.partner if p else "",
                "skill": p.skill if p else "",
                "period": r.period,
                "received_at": received.isoformat(),
                "setback": r.setback,
                "done": r.done,
                "setback_text": r.setback_text,
                "next": r.next,
                "text": r.text,
                "message_id": r.message_id,
            }
        )
    return rows


def _csv_cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = "" if value is None else str(value)
    # Only strings can carry user text; numbers (the partnership id) are left as they are.
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def write_csv(rows: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """RFC 4180 CSV with a header; multi-line texts stay in one quoted cell."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_FIELDS)
    for row in rows:
        writer.writerow([_csv_cell(row.get(name)) for name in EXPORT_FIELDS])


def write_json(rows: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """A JSON array of row objects; setback stays a boolean, text stays exactly as stored."""
    json.dump(list(rows), out, ensure_ascii=False, indent=2)
    out.write("\n")
