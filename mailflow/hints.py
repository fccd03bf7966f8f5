"""Near misses: what a person probably meant when a value is almost right ("did you mean").

Each function takes the value that was refused and returns the intended value, or None when
there is no single good guess. The callers keep refusing the value (an admin's data stays
exactly what she typed and confirmed); they only add `(did you mean "X"?)` to the error, so
the fix is one copy and paste away. Pure: no disk beyond the time-zone list the standard
library reads, no clock, no environment.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from collections.abc import Iterable
from functools import cache

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# Abbreviations people write for a zone, and the IANA zone they most likely mean. Where an
# abbreviation is ambiguous (IST: India, Ireland, Israel; CST: US, China) the guess is the
# zone with the most people; the error still shows the guess as a question.
_ABBREVIATIONS = {
    "pst": "America/Los_Angeles",
    "pdt": "America/Los_Angeles",
    "pt": "America/Los_Angeles",
    "mdt": "America/Denver",
    "mt": "America/Denver",
    "cst": "America/Chicago",
    "cdt": "America/Chicago",
    "ct": "America/Chicago",
    "edt": "America/New_York",
    "et": "America/New_York",
    "akst": "America/Anchorage",
    "akdt": "America/Anchorage",
    "brt": "America/Sao_Paulo",
    "bst": "Europe/London",
    "cest": "Europe/Berlin",
    "eest": "Europe/Athens",
    "west": "Europe/Lisbon",
    "msk": "Europe/Moscow",
    "ist": "Asia/Kolkata",
    "pkt": "Asia/Karachi",
    "sgt": "Asia/Singapore",
    "hkt": "Asia/Hong_Kong",
    "jst": "Asia/Tokyo",
    "kst": "Asia/Seoul",
    "aest": "Australia/Sydney",
    "aedt": "Australia/Sydney",
    "awst": "Australia/Perth",
    "nzst": "Pacific/Auckland",
    "nzdt": "Pacific/Auckland",
}


@cache
def _zones() -> dict[str, str]:
    """Every IANA zone name by its lower-case form."""
    return {name.lower(): name for name in zoneinfo.available_timezones() if name != "localtime"}


def timezone(value: str) -> str | None:
    """The IANA zone `value` probably names: another case (`asia/kolkata`), an abbreviation
    (`PST`), a city (`new york`, `Kolkata`), or a small typo (`Europe/Berln`)."""
    text = value.strip()
    if not text:
        return None
    zones = _zones()
    key = re.sub(r"\s+", "_", text).lower()
    if key in zones:
        return zones[key]
    if key in _ABBREVIATIONS:
        return _ABBREVIATIONS[key]
    cities = [name for low, name in zones.items() if low.rsplit("/", 1)[-1] == key and "/" in low]
    if len(cities) == 1:
        return cities[0]
    close = difflib.get_close_matches(key, list(zones), n=1, cutoff=0.85)
    return zones[close[0]] if close else None


def weekday(value: str) -> str | None:
    """The weekday `value` abbreviates (`Mon`, `tues`, `Th`), if exactly one."""
    text = value.strip().lower().rstrip(".")
    if len(text) < 2:
        return None
    found = [day for day in WEEKDAYS if day.startswith(text)]
    if len(found) == 1:
        return found[0]
    close = difflib.get_close_matches(text, WEEKDAYS, n=1, cutoff=0.75)
    return close[0] if close else None


_TIME = re.compile(
    r"^(?P<h>\d{1,2})(?:[:.h]?(?P<m>\d{2}))?\s*(?P<ampm>[ap]\.?m\.?)?$", re.IGNORECASE
)


def clock_time(value: str) -> str | None:
    """`value` written as HH:MM (24 hours), when it is a time in another form: `9:00`, `9`,
    `9am`, `9.30`, `9:30 PM`, `0930`."""
    m = _TIME.match(value.strip())
    if not m:
        return None
    hour, minute = int(m.group("h")), int(m.group("m") or 0)
    ampm = (m.group("ampm") or "").lower().replace(".", "")
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59:
        return None
    return f"{hour:02d}:{minute:02d}"


def skill_key(skill: str) -> str:
    """What two spellings of one skill share: letters and digits only, lower case."""
    return re.sub(r"[\W_]+", "", skill.lower())


def skill(value: str, known: Iterable[str]) -> str | None:
    """The known skill `value` differs from only in case, spacing or punctuation
    (`PublicSpeaking`, `public-speaking` for `public speaking`); None when `value` is one of
    them, or no single one matches."""
    key = skill_key(value)
    if not key:
        return None
    found = sorted({k for k in known if skill_key(k) == key})
    if len(found) != 1 or found[0] == value:
        return None
    return found[0]


def name(value: str, known: Iterable[str]) -> str | None:
    """The known name `value` is a small typo of (`shedule` for `schedule`, `prot` for
    `port`), if one is close enough."""
    close = difflib.get_close_matches(value.strip().lower(), list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(guess: str | None) -> str:
    """` (did you mean "X"?)`, or "" without a guess: to end an error message."""
    return f' (did you mean "{guess}"?)' if guess else ""
