"""Partner suggestions: who could partner a member for a skill, least busy first.

Pure: callers pass the people and partnerships that exist. The eligibility rule is the same
one `partnerships add` enforces by default (`people.eligibility_problems`), so a suggestion
never proposes a pairing that would then be refused without `--allow-same-line`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from mailflow.models import ENDED, Partnership, Person
from mailflow.people import DomainError, eligibility_problems, normalize_skill, offer_directory


@dataclass(frozen=True)
class Suggestion:
    person: Person
    active_partnerships: int  # as partner, status active or paused (not ended)


def suggest_partners(
    member: str,
    skill: str,
    people: Mapping[str, Person],
    partnerships: Sequence[Partnership],
) -> list[Suggestion]:
    """Eligible people who offer `skill` for `member`, fewest active partnerships, then email.

    `member` must already be a normalised address (the CLI runs `normalize_email`).
    """
    return list(eligible_partners(member, skill, people, partnerships))


def eligible_partners(
    member: str,
    skill: str,
    people: Mapping[str, Person],
    partnerships: Sequence[Partnership],
) -> Iterator[Suggestion]:
    """`suggest_partners`, one at a time: the eligibility rule runs only for as many people as
    the caller takes (self-service shows three of thousands)."""
    if member not in people:
        raise DomainError(f"member: no such person {member}")
    wanted = normalize_skill(skill)
    # Anyone already paired with the member (either direction) is already "in the loop";
    # an ended partnership no longer counts, so former partners can be suggested again.
    paired = {
        p.partner if p.member == member else p.member
        for p in partnerships
        if p.status != ENDED and member in (p.member, p.partner)
    }
    # offer_directory does the skill match and the load count (not-ended partnerships as
    # partner) and already sorts by (load, email); reusing it keeps `people list --offers`
    # and suggestions in the same order.
    for person, load in offer_directory(wanted, people.values(), partnerships):
        if person.email not in paired and not eligibility_problems(member, person.email, people):
            yield Suggestion(person, load)
