"""Partner suggestions: who could partner a member for a skill, least busy first.

Pure: callers pass the people and partnerships that exist. The eligibility rule is the same
one `partnerships add` enforces by default (`people.eligibility_problems`), so a suggestion
never proposes a pairing that would then be refused without `--allow-same-line`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    offerers: Iterable[str] | None = None,
) -> list[Suggestion]:
    """Eligible people who offer `skill` for `member`, fewest active partnerships, then email.

    `member` must already be a normalised address (the CLI runs `normalize_email`);
    `offerers` as for `eligible_partners`.
    """
    return list(eligible_partners(member, skill, people, partnerships, offerers))


def eligible_partners(
    member: str,
    skill: str,
    people: Mapping[str, Person],
    partnerships: Sequence[Partnership],
    offerers: Iterable[str] | None = None,
) -> Iterator[Suggestion]:
    """`suggest_partners`, one at a time: the eligibility rule runs only for as many people as
    the caller takes (self-service shows three of thousands).

    `offerers`: the addresses of everyone who offers `skill`, when the caller has an index of
    them (the store's); then only those people are looked up, so the cost follows the number
    of offerers and how many suggestions are taken, not the size of `people`. Without it,
    every person in `people` is read. Either way the order is (load, email).
    """
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
    if offerers is None:
        # offer_directory does the skill match and the load count (not-ended partnerships as
        # partner) and already sorts by (load, email); reusing it keeps `people list
        # --offers` and suggestions in the same order.
        ranked: Iterable[tuple[Person, int]] = offer_directory(
            wanted, people.values(), partnerships
        )
    else:
        ranked = _ranked(wanted, offerers, people, partnerships)
    for person, load in ranked:
        if person.email not in paired and not eligibility_problems(member, person.email, people):
            yield Suggestion(person, load)


def _ranked(
    skill: str,
    offerers: Iterable[str],
    people: Mapping[str, Person],
    partnerships: Sequence[Partnership],
) -> Iterator[tuple[Person, int]]:
    """offer_directory's order over the indexed offerers, reading each person only when the
    walk reaches her (an index entry whose person is gone or no longer offers it is skipped)."""
    load: dict[str, int] = {}
    for p in partnerships:
        if p.status != ENDED:
            load[p.partner] = load.get(p.partner, 0) + 1
    for email in sorted(set(offerers), key=lambda e: (load.get(e, 0), e)):
        person = people.get(email)
        if person is not None and skill in person.offers:
            yield person, load.get(email, 0)
