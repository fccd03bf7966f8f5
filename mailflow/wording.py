"""Counts in words: `1 person`, `2 people`, `1 day left`, `0 messages`.

Every count a person reads (the command line, the admin site, our mail) goes through `count`,
so "imported 1 people" cannot come back. Pure: no disk, no clock.
"""

from __future__ import annotations

# Nouns whose plural is not the singular plus "s".
_IRREGULAR = {"person": "people", "entry": "entries", "company": "companies"}


def plural(n: int, noun: str) -> str:
    """`noun` as it goes with the number `n`: "person" for 1, "people" for 0 or 2."""
    if n == 1:
        return noun
    return _IRREGULAR.get(noun, noun + "s")


def count(n: int, noun: str) -> str:
    """`1 person`, `3 people`, `0 messages`."""
    return f"{n} {plural(n, noun)}"
