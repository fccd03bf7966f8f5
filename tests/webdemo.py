"""A small program with some history, made through the real paths, for pages with content.

Six weeks of a handful of partnerships: the CLI adds people and partnerships, `tick` sends the
check-ins, replies go into the spool as the listener puts them there and are ingested, the
deadline's no-report digests go out, one partnership is paused, one has no consent yet, one
has ended, and two replies are quarantined. Used by the accessibility tests and by
`scripts/screenshots.py`. Only the clock is simulated.
"""

from __future__ import annotations

from datetime import timedelta

from webtools import MONDAY, SECRET_REPORT, AdminSite

from mailflow.tokens import CHECKIN

PEOPLE = [
    ("ada@example.com", "Ada Lovelace", "Engineering", "Europe/Berlin"),
    ("grace@example.com", "Grace Hopper", "Sales", "America/New_York"),
    ("alan@example.com", "Alan Turing", "Research", "Europe/London"),
    ("katherine@example.com", "Katherine Johnson", "Finance", "America/Chicago"),
    ("linus@example.com", "Linus Pauling", "Operations", "UTC"),
    ("margaret@example.com", "Margaret Hamilton", "Design", "UTC"),
    ("barbara@example.com", "Barbara Liskov", "Legal", "UTC"),
    ("tim@example.com", "Tim Berners-Lee", "Support", "UTC"),
]
WEEKS = 6


def build(site: AdminSite) -> dict[str, str]:
    """The demo program in `site`; leaves `site.now` in the current week (Tuesday)."""
    first = MONDAY - timedelta(weeks=WEEKS)
    site.now = first - timedelta(days=2)
    for email, name, dept, tz in PEOPLE:
        offers = ["--offers", "sql"] if email.startswith("grace") else []
        site.cli("people", "add", email, "--name", name, "--department", dept,
                 "--timezone", tz, *offers)  # fmt: skip
    start = first.date().isoformat()

    def add(member: str, partner: str, skill: str, *extra: str) -> str:
        return site.cli(
            "partnerships", "add", "--member", member, "--partner", partner, "--skill", skill,
            "--goal", "2027-01-29 Write the quarterly report queries myself",
            "--goal", "2026-12-18 Finish the course, all six modules",
            "--why", "I want to answer my own questions", "--saddle", "One week is data.",
            "--start", start, "--checkin-time", "09:00", *extra,
        ).strip().splitlines()[-1]  # fmt: skip

    ids = {
        "sql": add("ada@example.com", "grace@example.com", "sql", "--accepted"),
        "speaking": add(
            "alan@example.com", "katherine@example.com", "public speaking", "--accepted"
        ),  # fmt: skip
        "negotiation": add(
            "linus@example.com", "margaret@example.com", "negotiation", "--accepted"
        ),  # fmt: skip
        "python": add("margaret@example.com", "alan@example.com", "python", "--accepted"),
        "budgeting": add("barbara@example.com", "tim@example.com", "budgeting"),
    }
    for week in range(WEEKS + 1):
        monday = first + timedelta(weeks=week)
        site.now = monday + timedelta(hours=10)  # after every member's 09:00
        site.app.tick(site.now)
        period = f"{monday.isocalendar()[0]}-W{monday.isocalendar()[1]:02d}"
        if week == WEEKS:
            break
        site.now = monday + timedelta(days=1, hours=8)
        setback = week in (2, 4)
        text = (
            "Done: two chapters of the course.\nSetback: missed Thursday's practice.\n"
            "Next: the joins exercise."
            if setback
            else "Done: wrote the sales-by-region query myself.\nNext: window functions."
        )
        reply(site, "ada@example.com", ids["sql"], period, text, f"sql-{week}")
        if week % 3 != 1:
            reply(site, "alan@example.com", ids["speaking"], period,
                  "Done: gave the stand-up update without notes.", f"sp-{week}")  # fmt: skip
        if week < 3:
            reply(site, "linus@example.com", ids["negotiation"], period,
                  "Done: practised the salary talk.", f"neg-{week}")  # fmt: skip
        site.now = monday + timedelta(days=4, hours=12)  # past the no-report deadline
        site.app.tick(site.now)
        if week == 3:
            site.cli("partnerships", "pause", ids["negotiation"])
        if week == 4:
            site.cli("partnerships", "end", ids["python"])
    # This week: Ada has reported (with the secret text no page may show); a reply from
    # someone else to her address, and one to an old check-in, wait in quarantine.
    period = f"{MONDAY.isocalendar()[0]}-W{MONDAY.isocalendar()[1]:02d}"
    site.now = MONDAY + timedelta(days=1, hours=7)
    reply(site, "ada@example.com", ids["sql"], period, f"Done: {SECRET_REPORT}.", "sql-now")
    reply(site, "ada.private@example.net", ids["sql"], period,
          "Done: finished module 5 on the train.\nNext: module 6.", "sql-private")  # fmt: skip
    reply(site, "tim@example.com", ids["speaking"], period,
          "Is this the right address for the budget course?", "stray")  # fmt: skip
    site.now = MONDAY + timedelta(days=1, hours=8)
    site.app.tick(site.now)
    return ids


def reply(site: AdminSite, sender: str, pid: str, period: str, text: str, tag: str) -> None:
    """A reply to that week's check-in address, as the listener would spool it."""
    to = site.app.svc.keys.address(CHECKIN, int(pid), period)
    site.spool_reply(sender, to, text, f"<{tag}.{period}@mail.example.com>")
