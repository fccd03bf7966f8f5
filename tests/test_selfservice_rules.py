"""Issue 15: the pure handler of self-service mail (selfservice.handle) on its own: the same
message handled twice changes nothing twice and sends the same letters (a batch run again
after a crash), and an old self-service mail acts no more."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from mailflow import selfservice
from mailflow.actions import Desk
from mailflow.config import ScheduleConfig
from mailflow.letters import ServiceInfo
from mailflow.models import Inbound, Person
from mailflow.schedule import Settings
from mailflow.tokens import Keys
from mailflow.triage import Program

KEYS = Keys(b"selfservice-test-key", "hot.example.com", "", "hotteam@hot.example.com")
SVC = ServiceInfo(
    KEYS, "mailflow@hot.example.com", Settings.from_config(ScheduleConfig()), "admin@x.example"
)
AT = datetime(2026, 12, 1, 10, tzinfo=UTC)
ADA = Person("ada@example.com", "Ada", "Eng", None, "UTC")
GRACE = Person("grace@example.com", "Grace", "Sales", None, "UTC", ("sql",))
WORLD = selfservice.World({p.email: p for p in (ADA, GRACE)}, [], [], 1, 1)


def program(text: str, mid: str, request: int | None = None) -> Program:
    return Program(ADA.email, text, request, Inbound(mid, AT, "program", ADA.email), text)


def keys_of(change: selfservice.Change) -> list[str]:
    return [letter.key for letter in change.letters]


def test_the_same_message_twice_makes_one_request_one_partnership_the_same_letters() -> None:
    desk = Desk(SVC, AT, "<find@x>", "S1")
    first = selfservice.handle(program("partner for SQL", "<find@x>"), WORLD, desk)
    assert [r.candidates for r in first.requests] == [(GRACE.email,)]
    world = selfservice.applied(WORLD, first)
    again = selfservice.handle(program("partner for SQL", "<find@x>"), world, desk)
    assert again.requests == () and keys_of(again) == keys_of(first)

    n = first.requests[0].n
    ask = program("ask 1\nGoal: 2027-02-01 joins\nWhy: w\nSaddle: s", "<ask@x>", n)
    desk = Desk(SVC, AT, "<ask@x>", "S2")
    made = selfservice.handle(ask, world, desk)
    assert [p.partner for p in made.partnerships] == [GRACE.email]
    assert {letter.template for letter in made.letters} == {"program", "intro"}
    world = selfservice.applied(world, made)
    rerun = selfservice.handle(ask, world, desk)
    assert rerun.partnerships == () and keys_of(rerun) == keys_of(made)


def test_an_old_self_service_mail_acts_no_more_and_is_dropped_later() -> None:
    desk = Desk(SVC, AT, "<find@x>", "S1")
    world = selfservice.applied(
        WORLD, selfservice.handle(program("partner for sql", "<find@x>"), WORLD, desk)
    )
    late = AT + timedelta(weeks=selfservice.REQUEST_WEEKS, days=1)
    ask = program("ask 1\nGoal: 2027-12-01 joins\nWhy: w\nSaddle: s", "<late@x>", 1)
    change = selfservice.handle(ask, world, replace(desk, at=late, mid="<late@x>"))
    assert change.partnerships == ()
    assert "more than 8 weeks old" in change.letters[0].ctx["problems"][0]
    assert selfservice.expired(world, late) == []
    assert selfservice.expired(world, AT + timedelta(weeks=17)) == [1]


class Counting(dict[str, Person]):
    """A directory that counts lookups and refuses to be read whole (as the store's shards)."""

    def __init__(self, people: dict[str, Person]) -> None:
        super().__init__(people)
        self.lookups = 0

    def get(self, key: str, default: Person | None = None) -> Person | None:  # type: ignore[override]
        self.lookups += 1
        return super().get(key, default)

    def __getitem__(self, key: str) -> Person:
        self.lookups += 1
        return super().__getitem__(key)

    def values(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the whole directory was read")


def test_with_the_stores_index_a_mail_reads_the_offerers_not_the_directory() -> None:
    """The same suggestions and the same batch view with the index as without it, and with
    it a `partner for` mail looks up a handful of people among thousands."""
    people = {ADA.email: ADA}
    for i in range(2000):
        offers = ("sql",) if i % 100 == 0 else ("writing",)
        email = f"p{i:04}@example.com"
        people[email] = Person(email, f"P {i}", f"D{i % 7}", None, "UTC", offers)
    offerers = {
        skill: sorted(e for e, p in people.items() if skill in p.offers)
        for skill in ("sql", "writing")
    }
    plain = selfservice.World(dict(people), [], [], 1, 1)
    directory = Counting(people)
    indexed = selfservice.World(directory, [], [], 1, 1, frozenset(offerers), offerers)

    desk = Desk(SVC, AT, "<find@x>", "S1")
    mail = program("partner for SQL", "<find@x>")
    want = selfservice.handle(mail, plain, desk)
    got = selfservice.handle(mail, indexed, desk)
    assert got.requests == want.requests and len(got.requests[0].candidates) == 3
    assert [letter.key for letter in got.letters] == [letter.key for letter in want.letters]
    assert directory.lookups < 40  # her, three suggestions, their reporting lines

    # A change in the batch (a new offerer) is seen by the next message, as without index.
    newcomer = Person("aaa@example.com", "A", "D9", None, "UTC", ("sql", "go"))
    change = selfservice.Change(people=(newcomer,))
    plain, indexed = selfservice.applied(plain, change), selfservice.applied(indexed, change)
    assert indexed.skills() == plain.skills() == {"sql", "writing", "go"}
    assert indexed.offering("sql") == ["aaa@example.com", *offerers["sql"]]
    mail = program("partner for sql", "<find2@x>")
    desk = Desk(SVC, AT, "<find2@x>", "S2")
    want, got = selfservice.handle(mail, plain, desk), selfservice.handle(mail, indexed, desk)
    assert got.requests == want.requests
    assert got.requests[0].candidates[0] == "aaa@example.com"
