"""Reply parser: our own fixtures for each behaviour the parser promises (issue 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailflow.parse import (
    REPLY_MARKER,
    ParsedMessage,
    detect_setback,
    extract_reply_text,
    find_sections,
    html_to_text,
    parse_message,
)

FIXTURES = Path(__file__).parent / "fixtures" / "replies"


def parse_fixture(name: str) -> ParsedMessage:
    return parse_message((FIXTURES / name).read_bytes())


# --- quoted history: attribution lines in many languages -----------------------------------------

ATTRIBUTIONS = [
    "On Mon, Jan 6, 2025 at 9:00 AM Mailflow <checkin@mailflow.test> wrote:",
    "On Mon, Jan 6, 2025 at 9:00 AM Mailflow <checkin@mailflow.test>\nwrote:",
    "On 6 Jan 2025, at 09:00, Mailflow <checkin@mailflow.test> wrote:",
    "Am Mo., 6. Jan. 2025 um 09:00 Uhr schrieb Mailflow <checkin@mailflow.test>:",
    "Am 06.01.2025 um 09:00 schrieb Mailflow:",
    "Mailflow <checkin@mailflow.test> schrieb am Mo., 6. Jan. 2025, 09:00:",
    "Le lun. 6 janv. 2025 à 09:00, Mailflow <checkin@mailflow.test> a écrit :",
    "El lun, 6 ene 2025 a las 9:00, Mailflow (<checkin@mailflow.test>) escribió:",
    "Em seg., 6 de jan. de 2025 às 09:00, Mailflow <checkin@mailflow.test> escreveu:",
    "Il giorno lun 6 gen 2025 alle ore 09:00 Mailflow <checkin@mailflow.test> ha scritto:",
    "Op ma 6 jan. 2025 om 09:00 schreef Mailflow <checkin@mailflow.test>:",
    "Op 6 jan. 2025, om 09:00 heeft Mailflow <checkin@mailflow.test> het volgende geschreven:",
    "Den mån 6 jan. 2025 kl 09:00 skrev Mailflow <checkin@mailflow.test>:",
    "Den 6. jan. 2025 kl. 09.00 skrev Mailflow <checkin@mailflow.test>:",
    "man. 6. jan. 2025 kl. 09:00 skrev Mailflow <checkin@mailflow.test>:",
    "Mailflow <checkin@mailflow.test> kirjoitti 6.1.2025 klo 9.00:",
    "W dniu 6.01.2025 o 09:00, Mailflow <checkin@mailflow.test> pisze:",
    "pon., 6 sty 2025 o 09:00 Mailflow <checkin@mailflow.test> napisał(a):",
    "Dne po 6. 1. 2025 9:00 uživatel Mailflow <checkin@mailflow.test> napsal:",
    "пн, 6 янв. 2025 г. в 09:00, Mailflow <checkin@mailflow.test>:",
    "6 января 2025 г., в 9:00, Mailflow <checkin@mailflow.test> написал(а):",
    "在 2025年1月6日 09:00，Mailflow <checkin@mailflow.test> 写道：",
    "2025年1月6日(月) 9:00 Mailflow <checkin@mailflow.test>:",
    "2025년 1월 6일 (월) 오전 9:00, Mailflow <checkin@mailflow.test>님이 작성:",
    "2025-01-06 9:00 GMT+01:00 Mailflow <checkin@mailflow.test>:",
]


@pytest.mark.parametrize("attribution", ATTRIBUTIONS)
def test_attribution_and_quote_removed(attribution: str) -> None:
    body = f"I finished the module.\n\n{attribution}\n> Setback: did you miss anything?\n> old\n"
    assert extract_reply_text(body) == "I finished the module."


OUTLOOK_BLOCKS = [
    "________________________________\nFrom: Mailflow <checkin@mailflow.test>\nSent: Monday, "
    "January 6, 2025 9:00 AM\nTo: Ana\nSubject: check-in",
    "From: Mailflow <checkin@mailflow.test>\nSent: Monday, January 6, 2025 9:00 AM\n"
    "To: Ana\nSubject: check-in",
    "*From:* Mailflow <checkin@mailflow.test>\n*Sent:* Monday\n*To:* Ana\n*Subject:* check-in",
    "Von: Mailflow <checkin@mailflow.test>\nGesendet: Montag, 6. Januar 2025 09:00\nAn: Ana\n"
    "Betreff: check-in",
    "De : Mailflow <checkin@mailflow.test>\nEnvoyé : lundi 6 janvier 2025 09:00\nÀ : Ana\n"
    "Objet : check-in",
    "De: Mailflow\nEnviado el: lunes, 6 de enero de 2025 9:00\nPara: Ana\nAsunto: check-in",
    "Da: Mailflow\nInviato: lunedì 6 gennaio 2025 09:00\nA: Ana\nOggetto: check-in",
    "Van: Mailflow\nVerzonden: maandag 6 januari 2025 09:00\nAan: Ana\nOnderwerp: check-in",
    "Från: Mailflow\nSkickat: den 6 januari 2025 09:00\nTill: Ana\nÄmne: check-in",
    "Od: Mailflow\nWysłano: poniedziałek, 6 stycznia 2025 09:00\nDo: Ana\nTemat: check-in",
    "Od: Mailflow\nOdesláno: pondělí 6. ledna 2025 9:00\nKomu: Ana\nPředmět: check-in",
    "От: Mailflow\nОтправлено: 6 января 2025 г. 9:00\nКому: Ana\nТема: check-in",
    "发件人: Mailflow\n发送时间: 2025年1月6日 9:00\n收件人: Ana\n主题: check-in",
    "差出人: Mailflow\n送信日時: 2025年1月6日 9:00\n宛先: Ana\n件名: check-in",
    "-----Original Message-----\nFrom: Mailflow\nSubject: check-in",
    "-----Ursprüngliche Nachricht-----\nVon: Mailflow",
    "-------- Message d'origine --------\nDe : Mailflow",
    "-----Mensaje original-----\nDe: Mailflow",
]


@pytest.mark.parametrize("block", OUTLOOK_BLOCKS)
def test_outlook_header_blocks_cut_history(block: str) -> None:
    body = f"Done: ran 3 times\n\n{block}\n\nSetback: did you fall behind?\n"
    assert extract_reply_text(body) == "Done: ran 3 times"


def test_interleaved_answers_are_kept() -> None:
    body = (
        "On Mon, Jan 6, 2025 at 9:00 AM Mailflow <checkin@mailflow.test> wrote:\n"
        "> What did you get done?\n\nTwo chapters.\n\n> Any setback?\n\nI missed Friday.\n\n"
        "> What next?\nChapter 5.\n"
    )
    assert extract_reply_text(body) == "Two chapters.\n\nI missed Friday.\n\nChapter 5."


def test_gt_block_only_history() -> None:
    assert extract_reply_text("All done.\n\n> quoted\n>> nested\n") == "All done."


def test_reply_marker_is_honoured() -> None:
    body = f"Did: everything\n\n{REPLY_MARKER}\nSetback: ...\nDone: ...\n"
    assert extract_reply_text(body) == "Did: everything"
    quoted = f"Did: everything\n\nOn Mon, Mailflow wrote:\n> {REPLY_MARKER}\n> Setback: x\n"
    assert extract_reply_text(quoted) == "Did: everything"
    parsed = parse_fixture("marker_only.eml")
    assert parsed.text == "I fell behind on the reading this week."
    assert parsed.setback is True


def test_forwarded_message_is_not_history() -> None:
    body = "FYI\n\n---------- Forwarded message ----------\nFrom: bob@example.com\nDate: Tue\n"
    body += "Subject: x\nTo: ana@example.com\n\nText"
    assert "Forwarded message" in extract_reply_text(body)


# --- signatures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "footer",
    [
        "Sent from my iPhone",
        "Sent from my Samsung Galaxy smartphone.",
        "Get Outlook for iOS",
        "Get Outlook for Android<https://aka.ms/ghei36>",
        "Sent from Mail for Windows",
        "Von meinem iPhone gesendet",
        "Envoyé de mon iPhone",
        "Enviado desde mi iPhone",
        "Enviado do meu iPhone",
        "Inviato da iPhone",
        "Verzonden met mijn iPhone",
        "Skickat från min iPhone",
        "Sendt fra min iPhone",
        "Wysłane z mojego iPhone'a",
        "Odesláno z iPhonu",
        "Отправлено с iPhone",
        "发自我的iPhone",
        "iPhoneから送信",
    ],
)
def test_phone_footers_removed(footer: str) -> None:
    assert extract_reply_text(f"Done: read 40 pages\n\n{footer}\n") == "Done: read 40 pages"


def test_sentence_starting_sent_from_my_is_kept() -> None:
    body = "Here it is\n\nSent from my desk, which is much easier than my phone."
    assert extract_reply_text(body) == body


def test_dash_dash_space_signature() -> None:
    assert extract_reply_text("Done: x\n\n-- \nAna Member\nTeam Lead\n") == "Done: x"


def test_signoff_block_removed() -> None:
    body = "Done: x\n\nBest regards,\nAna Member\nSenior Engineer | ACME\n+1 555 0100\n"
    assert extract_reply_text(body) == "Done: x"
    assert extract_reply_text("Hej Peter,\n\nSvar.\n\nMed venlig hilsen\nAnders") == (
        "Hej Peter,\n\nSvar."
    )


# --- kinds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "detail"),
    [
        ("auto_submitted.eml", "auto_reply", "auto-submitted: auto-replied"),
        ("x_autoreply.eml", "auto_reply", "x-autoreply"),
        ("precedence_bulk.eml", "auto_reply", "precedence: bulk"),
        ("apple_vacation.eml", "auto_reply", "x-apple-action: vacation"),
        ("ooo_subject_de.eml", "auto_reply", "ooo subject"),
        ("exchange_auto_reply.eml", "auto_reply", "ooo subject"),
        ("suppress_is_not_auto.eml", "reply", "reply"),
        ("auto_submitted_no.eml", "reply", "reply"),
        ("dsn_failed.eml", "bounce", "dsn"),
        ("dsn_delayed.eml", "auto_reply", "dsn-delayed"),
        ("dsn_delivered.eml", "auto_reply", "dsn-delivered"),
        ("postfix_plain_bounce.eml", "bounce", "plain-text bounce (postfix)"),
        ("qmail_bounce.eml", "bounce", "plain-text bounce (qmail)"),
        ("exim_bounce.eml", "bounce", "plain-text bounce (exim)"),
        ("gmail_dsn_failure_plain.eml", "bounce", "plain-text bounce (gmail)"),
        ("null_sender.eml", "bounce", "null sender"),
        ("read_receipt.eml", "auto_reply", "read-receipt"),
        ("arf_abuse.eml", "auto_reply", "abuse-report"),
    ],
)
def test_kinds(name: str, kind: str, detail: str) -> None:
    parsed = parse_fixture(name)
    assert (parsed.kind, parsed.detail) == (kind, detail)
    assert (parsed.setback is None) == (kind != "reply")


@pytest.mark.parametrize(
    ("name", "recipients"),
    [
        ("dsn_failed.eml", ("bob@example.net",)),
        ("postfix_plain_bounce.eml", ("carol@example.org",)),
        ("qmail_bounce.eml", ("dave@example.org",)),
        ("exim_bounce.eml", ("erin@example.com",)),
        ("gmail_dsn_failure_plain.eml", ("frank@example.com",)),
    ],
)
def test_bounced_recipients(name: str, recipients: tuple[str, ...]) -> None:
    assert parse_fixture(name).bounced_recipients == recipients


def test_headers_extracted() -> None:
    parsed = parse_fixture("gmail_plain.eml")
    assert parsed.message_id == "<abc1@mail.example.com>"
    assert parsed.in_reply_to == "<checkin-1@mailflow.test>"
    assert parsed.references == ("<root@mailflow.test>", "<checkin-1@mailflow.test>")
    assert parsed.from_address == "ana@example.com"
    assert parsed.subject == "Re: Your weekly check-in"


# --- MIME and charsets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "german_qp_latin1.eml",
            "Erledigt: drei Kapitel gelesen\nRückschläge: keine\nNächste Woche: Übungen",
        ),
        ("french_base64.eml", "J'ai pris du retard cette semaine, désolée."),
        (
            "flowed_delsp.eml",
            "This line is soft wrapped and continues here.\nSecond paragraph is flowed too.",
        ),
        ("crlf_8bit_no_charset.eml", "Café done, naïve plan."),
        ("wrong_charset_utf8_as_ascii.eml", "Did: 5 km run — great\nNext: 10 km"),
        ("unknown_charset.eml", "plain text ä here"),
        ("koi8r_russian.eml", "Сделано: прочитал книгу"),
        ("japanese_iso2022.eml", "完了: 本を読みました"),
        ("multipart_alt_prefers_plain.eml", "Plain part wins."),
        ("attached_message.eml", "See attached, I was blocked by the flu."),
        ("zimbra_html.eml", "Progress: all exercises"),
        ("gmail_html_only.eml", "All on track, nothing slipped."),
        ("thunderbird_html.eml", "I skipped two sessions."),
        ("apple_mail_html.eml", "Did: two workouts\nSetbacks: none"),
    ],
)
def test_bodies(name: str, text: str) -> None:
    assert parse_fixture(name).text == text


def test_koi8_subject_decoded() -> None:
    assert parse_fixture("koi8r_russian.eml").subject == "Ответ"


def test_html_only_outlook() -> None:
    parsed = parse_fixture("outlook_html.eml")
    assert "café" in parsed.text
    for junk in ("<", "track.example.com", "alert", "color:red", "quoted question", "http"):
        assert junk not in parsed.text
    assert parsed.sections["done"] == "wrote the café chapter"
    assert parsed.sections["setback"].startswith("missed Tuesday's session")
    assert parsed.setback is True


def test_html_to_text_drops_markup_and_quotes() -> None:
    html = (
        '<style>.x{}</style><p>Hello <b>there</b><br>line 2</p><img src="http://t/x.gif">'
        '<ul><li>one</li><li>two</li></ul><div class="gmail_quote">old</div>'
        '<blockquote type="cite">cited</blockquote><div id="divRplyFwdMsg">From: x</div><p>h</p>'
    )
    assert html_to_text(html) == "Hello there\nline 2\n\n- one\n- two"


# --- setbacks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Done: read\nSetbacks: none\nNext: more", False),
        ("Done: read\nSetback: n/a", False),
        ("Setbacks: -", False),
        ("Setbacks: nothing", False),
        ("Setbacks: No.", False),
        ("Setback: missed two sessions because of travel", True),
        ("- Blockers: waiting for access to the lab", True),
        ("**Problems:** the data set was wrong", True),
        ("Rückschläge: keine", False),
        ("Rückschläge: Prüfung verschoben", True),
        ("Problèmes : aucun", False),
        ("I fell behind this week.", True),
        ("I missed Tuesday's session.", True),
        ("Didn't get to the exercises.", True),
        ("The deadline slipped by a week.", True),
        ("Fell off the horse on Wednesday, back on it now.", True),
        ("No setbacks this week!", False),
        ("I didn't miss a single day.", False),
        ("Nothing slipped.", False),
        ("All done, great week.", False),
        ("No setbacks, but I missed the Friday call.", True),
        ("Ich habe das Training verpasst.", True),
    ],
)
def test_detect_setback(text: str, expected: bool) -> None:
    assert detect_setback(text, find_sections(text)) is expected


def test_quoted_setback_never_counts() -> None:
    parsed = parse_fixture("gmail_plain.eml")
    assert parsed.kind == "reply"
    assert parsed.setback is False
    assert parsed.sections == {
        "done": "finished chapter 3 of the course",
        "setback": "none",
        "next": "start chapter 4",
    }


def test_sections_with_bullets_and_label_lines() -> None:
    text = "* Done:\n- ran 5k\n- stretched\n\n* Setbacks:\n- none\n\nPlan: 10k"
    assert find_sections(text) == {
        "done": "- ran 5k\n- stretched",
        "setback": "- none",
        "next": "10k",
    }
    assert detect_setback(text, find_sections(text)) is False


def test_sections_absent_are_empty_strings() -> None:
    assert find_sections("just text") == {"done": "", "setback": "", "next": ""}


# --- JSON contract and hostile input -------------------------------------------------------------


def test_to_json_dict_exact_contract() -> None:
    out = parse_fixture("gmail_plain.eml").to_json_dict()
    assert list(out) == ["kind", "text", "setback", "sections"]
    assert json.loads(json.dumps(out)) == out
    bounce = parse_fixture("dsn_failed.eml").to_json_dict()
    assert bounce["setback"] is None and bounce["kind"] == "bounce"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff" * 1000,
        b"Subject: x\n\n" + b"a" * 3_000_000,
        b"Content-Type: multipart/mixed; boundary=x\n\n"
        + b"--x\nContent-Type: multipart/mixed; boundary=x\n\n" * 2000,
        b"From: <<<@@@>>>\nContent-Type: text/html\n\n" + b"<div>" * 50_000 + b"hi",
        b"Subject: x\n\n" + (b">" * 100_000 + b"\n") * 5 + b"On " * 100_000 + b"wrote:\n",
        b"Subject: x\n\nFrom: a\n" + b"Sent: b\n" * 50_000,
    ],
)
@pytest.mark.timeout(60)  # a hang guard, not a speed assertion (speed is measured in bench/)
def test_hostile_input_is_bounded_and_never_raises(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.kind in ("reply", "auto_reply", "bounce")
    json.dumps(parsed.to_json_dict())


def test_malformed_mime_still_answers() -> None:
    parsed = parse_fixture("malformed_mime.eml")
    assert parsed.kind == "reply"
    assert parsed.from_address == "ana@example.com"
