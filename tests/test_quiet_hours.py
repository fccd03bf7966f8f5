"""Issue 13, mail at human hours: quiet hours in each reader's zone, the first check-in at the
next check-in moment, and the exemptions (her check-in and reminder at the time she chose, an
answer to the person who just wrote).

End to end on the shared world (conftest): the CLI in-process, the real listener on loopback,
the recording relay, real TinyDB files, one simulated clock that the test moves.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from clitools import Mailflow
from conftest import MailWorld, SettableClock, answer, next_monday

from mailflow.config import parse_quiet_hours
from mailflow.schedule import quiet_until

ROME, TOKYO = ZoneInfo("Europe/Rome"), ZoneInfo("Asia/Tokyo")
ADA, GRACE = "ada@example.com", "grace@example.com"
# 21:10 on a Monday in Rome: the moment a member got her first check-in in the issue.
EVENING = next_monday(21, "Europe/Rome") + timedelta(minutes=10)


@pytest.fixture
def app_settings() -> dict[str, dict[str, Any]]:
    return {"schedule": {"digest_delay_minutes": 0}}  # quiet_hours: the default 21:00-07:00


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(EVENING)


def local(m: Any, zone: ZoneInfo) -> datetime:
    """The Date header of a recorded message, in `zone`."""
    return parsedate_to_datetime(str(m.message["Date"])).astimezone(zone)


def at(day: datetime, hh: int, mm: int, zone: ZoneInfo) -> datetime:
    """`day`'s date in `zone` at hh:mm there, as UTC."""
    d = day.astimezone(zone).date()
    return datetime.combine(d, time(hh, mm), tzinfo=zone).astimezone(UTC)


# -- the window ----------------------------------------------------------------------------------


def test_quiet_until_spans_midnight_in_the_readers_zone() -> None:
    quiet = parse_quiet_hours("21:00-07:00")
    monday = EVENING.astimezone(ROME).date()
    rome = [datetime.combine(monday, time(h, m), tzinfo=ROME) for h, m in ((20, 59), (21, 0))]
    assert quiet_until(rome[0], ROME, quiet) is None
    tuesday_seven = datetime.combine(monday + timedelta(days=1), time(7), tzinfo=ROME)
    assert quiet_until(rome[1], ROME, quiet) == tuesday_seven
    assert quiet_until(tuesday_seven - timedelta(minutes=1), ROME, quiet) == tuesday_seven
    assert quiet_until(tuesday_seven, ROME, quiet) is None
    assert quiet_until(rome[1], ROME, None) is None  # quiet_hours = ""
    day_shift = parse_quiet_hours("12:00-13:30")
    noon = datetime.combine(monday, time(12, 15), tzinfo=TOKYO)
    assert quiet_until(noon, TOKYO, day_shift) == datetime.combine(monday, time(13, 30), TOKYO)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("21:00", 'expected "HH:MM-HH:MM"'),
        ("9pm-7am", '(did you mean "21:00"?)'),
        ("07:00-07:00", 'use "" for no quiet hours'),
    ],
)
def test_bad_quiet_hours_are_refused_with_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    mf = Mailflow(tmp_path, capsys, extra=f'[schedule]\nquiet_hours = "{value}"\n')
    err = mf.bad("status", lines=None)
    assert err.startswith("error: schedule.quiet_hours: ") and message in err, err


# -- end to end ----------------------------------------------------------------------------------


def test_a_partnership_made_in_the_evening_waits_for_the_next_checkin_moment(
    mailworld: MailWorld,
) -> None:
    world = mailworld
    world.add_person(ADA, "Eng", "Europe/Rome")
    world.add_person(GRACE, "Sales", "UTC", "--offers", "public speaking")
    pid = world.add(ADA, GRACE, "--accepted")
    # Grace's evening is still daytime (20:10 or 19:10 UTC); Ada's introduction waits for 07:00.
    assert len(world.mail_to(GRACE)) == 1
    assert world.mail_to(ADA) == []
    lines = world.tick(EVENING + timedelta(seconds=30))
    assert not [line for line in lines if "checkin" in line], lines  # none within seconds
    assert world.mail_to(ADA) == []
    world.tick(at(EVENING + timedelta(days=1), 6, 59, ROME))
    assert world.mail_to(ADA) == []
    world.tick(at(EVENING + timedelta(days=1), 7, 0, ROME))
    [intro] = world.mail_to(ADA)
    assert local(intro, ROME).time() == time(7, 0)  # dated when it left, not at 21:10
    for days in range(1, 7):  # nothing more all week
        world.tick(at(EVENING + timedelta(days=days), 12, 0, ROME))
    assert world.mail_to(ADA) == [intro]
    monday = EVENING + timedelta(days=7)
    world.tick(at(monday, 9, 0, ROME))
    checkin = world.last_to(ADA, "check-in")
    assert local(checkin, ROME).time() == time(9, 0)
    assert world.show(pid)["consent"] == "accepted"


def test_checkins_at_her_chosen_hour_and_answers_go_at_night_news_waits(
    mailworld: MailWorld,
) -> None:
    world = mailworld
    world.now = EVENING - timedelta(days=3)  # the Friday before, in daytime everywhere
    world.add_person(ADA, "Eng", "Europe/Rome")
    world.add_person(GRACE, "Sales", "Asia/Tokyo", "--offers", "public speaking")
    pid = world.add(ADA, GRACE, "--accepted", "--checkin-time", "22:00")
    # Monday 22:00 in Rome: her chosen time, inside quiet hours, and it goes out then.
    world.tick(at(EVENING, 22, 0, ROME))
    checkin = world.last_to(ADA, "check-in")
    assert local(checkin, ROME).time() == time(22, 0)
    # She answers at 22:30: the receipt answers her at once; Grace's digest waits for 07:00 in
    # Tokyo (22:30 in Rome is 05:30 or 06:30 there).
    world.now = at(EVENING, 22, 30, ROME)
    mine = len(world.mail_to(ADA))
    world.send(
        answer(checkin, ADA, "Done: rehearsed twice\nSetback: skipped the meetup\n\ngoal 1 done")
    )
    lines = world.tick()
    assert len(world.mail_to(ADA)) == mine + 1, lines  # the receipt
    assert any("digest" in line and "held until" in line for line in lines), lines
    before = len(world.mail_to(GRACE))
    seven = quiet_until(world.now, TOKYO, parse_quiet_hours("21:00-07:00"))
    assert seven is not None
    world.tick(seven - timedelta(minutes=1))
    assert len(world.mail_to(GRACE)) == before
    world.tick(seven)
    digest = world.last_to(GRACE)
    assert local(digest, TOKYO).time() == time(7, 0)
    assert [r["text"][:14] for r in world.show(pid)["reports"]] == ["Done: rehearse"]


def test_closing_summaries_wait_for_each_readers_morning(mailworld: MailWorld) -> None:
    world = mailworld
    friday = at(EVENING - timedelta(days=3), 12, 0, ROME)
    world.now = friday
    world.add_person(ADA, "Eng", "Europe/Rome")
    world.add_person(GRACE, "Sales", "Asia/Tokyo", "--offers", "public speaking")
    due = friday.astimezone(ROME).date() + timedelta(days=1)
    out = world.cli(
        "partnerships", "add", "--member", ADA, "--partner", GRACE, "--skill", "public speaking",
        "--goal", f"{due} Give the lightning talk", "--why", "w", "--saddle", "s", "--accepted",
    )  # fmt: skip
    pid = int(out.strip().splitlines()[-1])
    mine, before = len(world.mail_to(ADA)), len(world.mail_to(GRACE))
    # Sunday 00:30 in Rome (07:30 or 08:30 in Tokyo): the partnership completes.
    world.tick(at(friday + timedelta(days=2), 0, 30, ROME))
    assert world.show(pid)["status"] == "ended"
    [summary] = world.mail_to(GRACE)[before:]
    assert local(summary, TOKYO) == world.now.astimezone(TOKYO).replace(microsecond=0)
    assert len(world.mail_to(ADA)) == mine  # held
    world.tick(at(world.now, 7, 0, ROME))
    [summary] = world.mail_to(ADA)[mine:]
    assert local(summary, ROME).time() == time(7, 0)


@pytest.mark.parametrize("app_settings", [{"schedule": {"quiet_hours": ""}}])
def test_without_quiet_hours_mail_goes_at_once(mailworld: MailWorld) -> None:
    mailworld.add_person(ADA, "Eng", "Europe/Rome")
    mailworld.add_person(GRACE, "Sales", "UTC", "--offers", "public speaking")
    mailworld.add(ADA, GRACE)
    assert len(mailworld.mail_to(ADA)) == 1
