"""Our wire marks, without disk or network: tokens, addresses, Message-ID forms, hash16.

These forms are stored in period files and seen by receivers; the literal values below are
the ones mailflow has always produced, so a change here is an upgrade break, not a refactor.
"""

from __future__ import annotations

import pytest

from mailflow.tokens import (
    AGREE,
    CHECKIN,
    DIGEST,
    REPLY_MARKER,
    Keys,
    Rcpt,
    Token,
    classify_rcpt,
    hash16,
    letter_message_id,
    make_token,
    parse_token,
    reply_address,
    token_from_ids,
    token_message_id,
    token_of_address,
)

SECRET = b"test-secret-0123456789abcdef"
DOMAIN = "hot.example.com"
KEYS = Keys(SECRET, DOMAIN)


def test_token_form_and_round_trip() -> None:
    token = make_token(SECRET, CHECKIN, 12, "2026-W48")
    label, tag = token.rsplit("-", 1)
    assert label == "c12-2026w48"
    assert len(tag) == 26 and tag == tag.lower()
    assert parse_token(SECRET, token) == Token(CHECKIN, 12, "2026-W48")
    assert parse_token(SECRET, token.upper()) == Token(CHECKIN, 12, "2026-W48")  # MTAs fold case


def test_tokens_are_signed() -> None:
    token = make_token(SECRET, DIGEST, 3, "2026-W01")
    assert parse_token(b"another secret", token) is None
    forged = token.replace("d3-", "d4-")
    assert parse_token(SECRET, forged) is None
    assert parse_token(SECRET, "c1-2026w01-" + "a" * 26) is None
    assert parse_token(SECRET, "garbage") is None
    with pytest.raises(ValueError, match="unknown token kind"):
        make_token(SECRET, "x", 1, "2026-W01")


def test_the_same_inputs_make_the_same_token() -> None:
    # A stable token is what lets an old check-in's address still match after an upgrade.
    assert make_token(SECRET, AGREE, 5, "2026-W44") == make_token(SECRET, AGREE, 5, "2026-W44")
    assert make_token(b"k", CHECKIN, 1, "2026-W45") == "c1-2026w45-kyctmx3lh42hm44ddbmabc5jtg"


def test_addresses() -> None:
    token = KEYS.token(CHECKIN, 7, "2026-W48")
    assert KEYS.address(CHECKIN, 7, "2026-W48") == f"checkin+{token}@{DOMAIN}"
    assert reply_address(token, DOMAIN) == f"checkin+{token}@{DOMAIN}"
    assert token_of_address(f"<CHECKIN+{token.upper()}@HOT.example.com>", DOMAIN) == token
    assert token_of_address(f"checkin+{token}@other.example", DOMAIN) is None
    assert token_of_address(f"bounces+{token}@{DOMAIN}", DOMAIN) is None
    assert KEYS.plain_address == "checkin@hot.example.com"
    assert KEYS.bounce_address == "bounces@hot.example.com"


@pytest.mark.parametrize(
    ("address", "verdict"),
    [
        ("checkin@hot.example.com", Rcpt.PLAIN),
        ("<Checkin@HOT.EXAMPLE.COM>", Rcpt.PLAIN),
        ("bounces@hot.example.com", Rcpt.BOUNCES),
        ("checkin@other.example", Rcpt.FOREIGN),
        ("victim@elsewhere.example", Rcpt.FOREIGN),
        ("postmaster@hot.example.com", Rcpt.BAD_TOKEN),
        ("checkin+c1-2026w48-aaaaaaaaaaaaaaaaaaaaaaaaaa@hot.example.com", Rcpt.BAD_TOKEN),
    ],
)
def test_classify_rcpt(address: str, verdict: Rcpt) -> None:
    assert classify_rcpt(address, DOMAIN, SECRET) == (verdict, None)
    assert verdict.accepted == (verdict in (Rcpt.PLAIN, Rcpt.BOUNCES))


def test_classify_rcpt_of_a_reply_address_gives_its_token() -> None:
    address = KEYS.address(DIGEST, 2, "2026-W50")
    assert KEYS.rcpt(address) == (Rcpt.TOKEN, Token(DIGEST, 2, "2026-W50"))
    assert Rcpt.TOKEN.accepted


def test_message_id_forms() -> None:
    token = KEYS.token(CHECKIN, 1, "2026-W48")
    assert token_message_id("checkin", token, DOMAIN) == f"<checkin.{token}@{DOMAIN}>"
    assert token_message_id("digest2", token, DOMAIN) == f"<digest2.{token}@{DOMAIN}>"
    assert letter_message_id("receipt", "receipt:abc", DOMAIN) == (
        f"<receipt.{hash16('receipt:abc')}@{DOMAIN}>"
    )


def test_hash16_is_sha256_prefix_and_keeps_surrogates() -> None:
    assert hash16("intro:1:member") == "4933526cc511a3fd"
    assert len(hash16("x")) == 16
    assert hash16("\udcff") == "a8100ae6aa1940d0"  # surrogateescape: never an encode error


def test_token_from_ids_finds_ours_only() -> None:
    token = KEYS.token(CHECKIN, 4, "2026-W49")
    ids = ["<abc@elsewhere.example>", f" <reminder.{token}@HOT.example.com> "]
    assert token_from_ids(ids, DOMAIN) == token
    assert token_from_ids(["<nodot@hot.example.com>"], DOMAIN) is None
    assert token_from_ids([], DOMAIN) is None


def test_reply_marker() -> None:
    assert REPLY_MARKER == "--- reply above this line ---"
