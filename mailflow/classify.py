"""Kind of an inbound message: a human reply, an automatic reply, or a bounce.

Pure helpers used by :mod:`mailflow.parse`. Classification choices (the ``kind`` / ``detail``
pairs returned by :func:`classify`):

* ``bounce`` -- a permanent or final delivery failure: a ``multipart/report;
  report-type=delivery-status`` whose Action is ``failed`` (or has no Action at all), a
  ``message/delivery-status`` part anywhere, a null-sender message that is not an auto-reply,
  or the plain-text failure notices of common MTAs (Postfix, Exim, qmail, Sendmail, Exchange,
  Gmail, Lotus/Domino, ...). Detail: ``"dsn"``, ``"null sender"`` or
  ``"plain-text bounce (<mta>)"``. Only bounces mark a recipient as bouncing.
* ``auto_reply`` -- everything automatic that is *not* a final failure. Besides RFC 3834
  auto-replies (detail e.g. ``"auto-submitted: auto-replied"``, ``"x-autoreply"``,
  ``"precedence: bulk"``, ``"x-apple-action: vacation"``, ``"ooo subject"`` -- an
  out-of-office phrase at the *start* of the subject only) this kind also
  holds, because none of them may count as a report nor mark an address as bouncing:

  - delay notifications (DSN Action ``delayed``, or "delivery delayed" notices):
    detail ``"dsn-delayed"``; the message may still be delivered;
  - successful-delivery DSNs (Action ``delivered``/``relayed``/``expanded``):
    detail ``"dsn-delivered"``;
  - read receipts (``report-type=disposition-notification``, MDN): ``"read-receipt"``;
  - abuse / feedback reports (ARF, ``report-type=feedback-report``): ``"abuse-report"``.

* ``reply`` -- anything else.

``X-Auto-Response-Suppress`` is deliberately ignored: Outlook puts it on ordinary mail sent by
humans, so it says nothing about whether the message itself is automatic.
"""

from __future__ import annotations

import re
from email.message import Message

# Bounce and auto-reply detection look only at a bounded prefix of the body.
_SCAN_CHARS = 64 * 1024

_DAEMON_LOCALPARTS = (
    "mailer-daemon",
    "mailer_daemon",
    "mailerdaemon",
    "postmaster",
    "post_master",
    "mail-daemon",
    "maildaemon",
    "mail.daemon",
    "mdaemon",
    "bounce",
    "bounces",
    "mail delivery",
    "mail delivery subsystem",
    "mail delivery system",
)

_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered mail|returned mail|return(ed)? to sender|delivery status notification"
    r" \((failure|delay)\)|delivery (status )?notification|delivery fail|failed delivery"
    r"|mail delivery failed|delivery failure|non[- ]?delivery|nondeliver|failure notice"
    r"|could not send message|message not delivered|mail system error|delivery problem"
    r"|unable to deliver|not delivered|delivery report|warning: could not send"
    r"|rejected:|mail could not be delivered|message delivery has failed|bounced mail"
    r"|undeliverable|permanent (delivery )?error|error sending message|mailbox unavailable"
    r"|user unknown|delivery has failed|returned message|delivery notification"
    r"|nicht zustellbar|unzustellbar|non remis|no se puede entregar|não entregue"
    r"|non recapitabile|onbestelbaar|kan inte levereras|kunne ikke leveres"
    r"|не доставлено|未送达|配信不能|전송 실패|sistem pesan|mail error|problem delivering"
    r"|mail failure|delivery status notification|メールエラー|error notification",
    re.IGNORECASE,
)

# Phrases the MTAs put in the human-readable part of a failure notice, with a name for detail.
_BOUNCE_BODY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "postfix",
        re.compile(r"this is the mail system at host|i'm sorry to have to inform you", re.I),
    ),
    (
        "qmail",
        re.compile(r"i'm afraid i wasn't able to deliver|this is the qmail-send program", re.I),
    ),
    (
        "exim",
        re.compile(
            r"this message was created automatically by mail delivery software"
            r"|could not be delivered to one or more of its|a message that you sent could not be",
            re.I,
        ),
    ),
    (
        "sendmail",
        re.compile(r"the original message was received at|----- transcript of session", re.I),
    ),
    (
        "gmail",
        re.compile(
            r"delivery to the following recipients? failed|address not found|message blocked"
            r"|your message wasn't delivered",
            re.I,
        ),
    ),
    (
        "exchange",
        re.compile(
            r"delivery has failed to these recipients|your message did not reach some or all"
            r"|could not be delivered to (one or more|the following)|#5\.\d\.\d",
            re.I,
        ),
    ),
    (
        "generic",
        re.compile(
            r"permanent (fatal )?errors?|user unknown|unknown user|no such user|mailbox (is )?"
            r"(full|unavailable|not found|disabled)|recipient address rejected|delivery failed"
            r"|undeliver|could not be delivered|was not delivered|unable to deliver"
            r"|returned to sender"
            r"|host unknown|relay access denied|message (was )?rejected|550[ -]5\.\d\.\d"
            r"|5\d\d[ -]\d\.\d\.\d|delivery to the following|failed to deliver|not be delivered",
            re.I,
        ),
    ),
)

_DELAY_RE = re.compile(
    r"delivery (status notification \(delay\)|delayed)|delayed mail|warning: message .* delayed"
    r"|will (continue to )?(retry|try)|has not yet been delivered|still trying",
    re.I,
)
_GAVE_UP_RE = re.compile(
    r"gave up|giving up|expired|permanent(ly)?|fatal|could not be delivered|undeliverable"
    r"|has been returned|were not delivered|was not delivered|retry time not reached",
    re.I,
)
_SUCCESS_SUBJECT_RE = re.compile(
    r"delivery status notification \(success\)|successful mail delivery|delivered:|"
    r"relayed|delivery report.*success|successfully delivered",
    re.I,
)

# Out-of-office subjects, only ever as the *start* of the subject: a real reply's subject can
# hold the same words later on ("Re: Your absence management check-in", "vacation rental
# pricing"). Phrases that only an auto-reply starts with count as a prefix on their own;
# words that also start ordinary subjects (away, vacation, holiday, absence, auto) count only
# followed by ":" or as a bracketed tag ("[Auto-Reply]", "Away: ...", "AUTO: Ana is out").
_OOO_PHRASES = (
    r"out of (?:the )?office|out-of-office|automatic (?:reply|response)"
    r"|automated (?:reply|response)|autoreply|autoresponse|autoresponder"
    r"|auto[- ]?(?:reply|replied|response|responder|respond)"
    r"|vacation (?:reply|response|notice|message)|holiday (?:reply|notice)"
    r"|away from (?:the )?office"
    # German, French, Spanish, Portuguese, Italian, Dutch
    r"|automatische antwort|abwesenheitsnotiz|abwesenheitsmeldung|auto-?antwort|nicht im büro"
    r"|r[ée]ponse automatique|absent\(e\) du bureau|h[ôo]rs du bureau"
    r"|respuesta autom[áa]tica|fuera de (?:la )?oficina|resposta autom[áa]tica"
    r"|fora do escrit[óo]rio|risposta automatica|fuori (?:sede|ufficio)"
    r"|automatisch antwoord|niet aanwezig|afwezigheidsbericht"
    # Nordic: Danish, Norwegian, Swedish, Finnish, Icelandic
    r"|automatisk svar|automatiskt svar|autosvar|fraværsmelding|frånvaromeddelande"
    r"|automaattinen vastaus|sjálfvirkt svar"
    # Polish, Czech, Slovak, Romanian, Hungarian, Greek, Turkish, Slovenian, Croatian
    r"|automatyczna odpowied[źz]|odpowied[źz] automatyczna|poza biurem"
    r"|automatick[áa] odpov[ěe][ďd]|automatick[áa] odpove[ďd]|mimo kancel[áa][řr]"
    r"|r[ăa]spuns automat|automatikus v[áa]lasz|αυτόματη απάντηση|εκτός γραφείου"
    r"|otomatik yan[ıi]t|otomatik cevap|ofis d[ıi][şs][ıi]nda|samodejni odgovor|automatski odgovor"
    # Cyrillic, Hebrew, Arabic, Vietnamese, Indonesian
    r"|автоматический ответ|автоответ|автоматична відповідь|автоматичен отговор"
    r"|аутоматски одговор|תשובה אוטומטית|מענה אוטומטי|رد تلقائي|الرد التلقائي|رد آلي"
    r"|trả lời tự động|balasan otomatis"
    # Chinese, Japanese, Korean
    r"|自动回复|自動回覆|自动答复|自動回復|自動応答|自動返信|不在通知"
    r"|자동 ?회신|자동 ?응답|부재 ?중"
)
_OOO_WORDS = (
    r"auto|away|ooo|oof|vacation|holiday|holidays|absence|absent|abwesend|urlaub|ferie"
    r"|fravær|frånvaro|poissa|afwezig|ausente|ausência|assente|congés|vacances|nieobecno[śs][ćc]"
    r"|urlop|dovolená|отпуск|отсутствую|休暇|不在|부재"
)
_OOO_SUBJECT_RE = re.compile(
    # A gateway's tag may come first: "[EXTERNAL] Automatic reply: ...".
    r"^\s*(?:\[[^\]\n]{1,24}\]\s*|\*{1,2}[^*\n]{1,24}\*{1,2}\s*)?[\s\[(*]{0,3}(?:"
    r"(?:" + _OOO_PHRASES + r")(?![^\W_])"
    r"|(?:" + _OOO_WORDS + r")\s{0,2}(?:[:：\])]|$)"
    r")",
    re.IGNORECASE,
)
_OOO_BODY_RE = re.compile(
    r"\b(i am|i'm|i will be) (currently )?(out of (the )?office|on (vacation|holiday|leave)"
    r"|away from (the |my )?(office|desk))|this is an (automatic|automated) (reply|response)"
    r"|auto-?generated (reply|response)",
    re.I,
)

_SES_RE = re.compile(
    r'^\s*\{\s*"(?:notificationType|eventType)"\s*:\s*"(Bounce|Complaint|Delivery)"'
)
_SES_RCPT_RE = re.compile(r'"emailAddress"\s*:\s*"([^"@\s]{1,64}@[^"\s]{1,255})"')
_ADDR_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}"
)


Headers = dict[str, tuple[str, object]]


def first_headers(msg: Message) -> Headers:
    """Each header's first occurrence (name as written, raw value) by lower-case name: what
    ``msg.get`` finds, read in one pass over the header instead of one pass per name."""
    first: Headers = {}
    for k, v in msg.raw_items():
        first.setdefault(k.lower(), (k, v))
    return first


def _header(msg: Message, name: str, heads: Headers) -> str:
    """``msg.get(name)`` as a stripped string ("" when absent), looked up in ``heads``."""
    try:
        found = heads.get(name.lower())
        value = None if found is None else msg.policy.header_fetch_parse(*found)
    except Exception:
        return ""
    if value is None:
        return ""
    try:
        return str(value).strip()
    except Exception:
        return ""


def _iter_parts(msg: Message, limit: int = 200) -> list[Message]:
    """Flattened MIME tree, bounded so a hostile nesting cannot cost much."""
    out: list[Message] = []
    stack = [msg]
    while stack and len(out) < limit:
        part = stack.pop(0)
        out.append(part)
        try:
            payload = part.get_payload()
        except Exception:
            continue
        if isinstance(payload, list):
            stack.extend(p for p in payload if isinstance(p, Message))
    return out


def _part_text(part: Message) -> str:
    """Text of a part; for message/* containers the serialised sub-headers (DSN fields)."""
    try:
        payload = part.get_payload()
        if isinstance(payload, list):
            chunks = []
            for sub in payload:
                if isinstance(sub, Message):
                    chunks.append("\n".join(f"{k}: {v}" for k, v in sub.items()))
                    inner = sub.get_payload()
                    if isinstance(inner, str):
                        chunks.append(inner)
            return "\n\n".join(chunks)[:_SCAN_CHARS]
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            return data[:_SCAN_CHARS].decode("utf-8", "replace")
        return str(payload)[:_SCAN_CHARS]
    except Exception:
        return ""


def _dsn_fields(msg: Message) -> tuple[list[str], list[str]]:
    """Action values and failed-recipient addresses from every delivery-status part."""
    actions: list[str] = []
    recipients: list[str] = []
    for part in _iter_parts(msg):
        ctype = part.get_content_type()
        if ctype not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        text = _part_text(part)
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key = key.strip().lower()
            if key == "action":
                actions.append(value.strip().lower())
            elif key in ("final-recipient", "original-recipient"):
                _, _, addr = value.partition(";")
                found = _ADDR_RE.search(addr or value)
                if found:
                    recipients.append(found.group(0))
    return actions, recipients


_FAILISH_SUBJECT_RE = re.compile(r"undeliver|returned|failure|fail", re.I)


def _plain_recipients(text: str, exclude: set[str]) -> list[str]:
    """Failed addresses named in a plain-text bounce (Postfix ``<a@b>:``, qmail, Exim forms)."""
    found: list[str] = []
    lines = text.splitlines()[:400]
    for line in lines:
        stripped = line.strip()
        # Postfix / qmail: "<user@example.com>: host ... said: 550 ..."
        if stripped.startswith("<") and ">:" in stripped[:200]:
            m = _ADDR_RE.search(stripped[:200])
            if m:
                found.append(m.group(0))
                continue
        low = stripped.lower()
        if low.startswith(("final-recipient:", "original-recipient:", "x-failed-recipients:")):
            m = _ADDR_RE.search(stripped)
            if m:
                found.append(m.group(0))
    if not found:
        # Exim / Gmail / Exchange: the address on its own (indented) line near the failure text.
        for line in lines[:120]:
            stripped = line.strip().strip("<>").strip()
            m = _ADDR_RE.fullmatch(stripped.split(" ")[0]) if stripped else None
            if m:
                found.append(m.group(0))
    out: list[str] = []
    for addr in found:
        addr = addr.lower()
        local = addr.split("@", 1)[0]
        if addr in exclude or local in ("mailer-daemon", "postmaster") or addr in out:
            continue
        out.append(addr)
    return out[:50]


def _is_daemon(from_header: str, from_addr: str | None) -> bool:
    low = from_header.lower()
    local = (from_addr or "").split("@", 1)[0].lower()
    if local in _DAEMON_LOCALPARTS or local.startswith(("mailer-daemon", "postmaster")):
        return True
    return "mailer-daemon" in low or "mail delivery" in low or "postmaster" in low


def classify(
    msg: Message,
    subject: str,
    from_addr: str | None,
    body_text: str,
    heads: Headers | None = None,
) -> tuple[str, str, tuple[str, ...]]:
    """Return ``(kind, detail, bounced_recipients)`` for a parsed message (see module doc).

    ``heads``: :func:`first_headers` of ``msg`` when the caller has it already."""
    if heads is None:
        heads = first_headers(msg)
    ctype = msg.get_content_type()
    report_type = (
        str(msg.get_param("report-type") or "").lower() if ctype == "multipart/report" else ""
    )
    parts = _iter_parts(msg)
    part_types = {p.get_content_type() for p in parts}
    body = body_text[:_SCAN_CHARS]
    from_header = _header(msg, "From", heads)
    exclude = {from_addr.lower()} if from_addr else set()

    if (
        report_type == "disposition-notification"
        or "message/disposition-notification" in part_types
    ):
        return "auto_reply", "read-receipt", ()
    if report_type == "feedback-report" or "message/feedback-report" in part_types:
        return "auto_reply", "abuse-report", ()
    if _header(msg, "X-Arf-Feedback-Type", heads) or _header(msg, "Feedback-Type", heads):
        return "auto_reply", "abuse-report", ()
    if re.match(r"\s*(complaint about message from|abuse report|spam report)", subject, re.I):
        return "auto_reply", "abuse-report", ()

    # Amazon SES notifications delivered by SNS carry a JSON document as the body.
    ses = _SES_RE.search(body[:2000])
    if ses:
        kind_name = ses.group(1).lower()
        if kind_name == "bounce":
            rcpts = tuple(
                dict.fromkeys(a.lower() for a in _SES_RCPT_RE.findall(body[:_SCAN_CHARS]))
            )
            return "bounce", "amazon ses notification", rcpts
        if kind_name == "complaint":
            return "auto_reply", "abuse-report", ()
        return "auto_reply", "dsn-delivered", ()

    has_dsn = bool(part_types & {"message/delivery-status", "message/global-delivery-status"})
    if has_dsn or report_type == "delivery-status":
        actions, recipients = _dsn_fields(msg)
        rcpts = tuple(dict.fromkeys(a.lower() for a in recipients))
        if not rcpts:
            rcpts = tuple(_plain_recipients(body, exclude))
        if any(a.startswith("failed") for a in actions):
            return "bounce", "dsn", rcpts
        if actions and all(a.startswith("delayed") for a in actions):
            return "auto_reply", "dsn-delayed", ()
        if actions and all(a.startswith(("delivered", "relayed", "expanded")) for a in actions):
            return "auto_reply", "dsn-delivered", ()
        if _DELAY_RE.search(subject) and not actions:
            return "auto_reply", "dsn-delayed", ()
        return "bounce", "dsn", rcpts

    auto_submitted = _header(msg, "Auto-Submitted", heads).lower()
    return_path = _header(msg, "Return-Path", heads)
    null_sender = return_path.replace(" ", "") in ("<>", "") and bool(return_path)
    daemon = _is_daemon(from_header, from_addr)
    x_failed = _header(msg, "X-Failed-Recipients", heads)

    bounce_subject = bool(_BOUNCE_SUBJECT_RE.search(subject))
    mta = ""
    # The body patterns only matter for mail from a mailer daemon or with a bounce subject;
    # skipping them for everything else saves about a millisecond per ordinary reply.
    if daemon or bounce_subject or _FAILISH_SUBJECT_RE.search(subject):
        for name, pattern in _BOUNCE_BODY_PATTERNS:
            if pattern.search(body):
                mta = name
                break
    has_rfc822 = "message/rfc822" in part_types or "text/rfc822-headers" in part_types

    if (
        x_failed
        or (daemon and (bounce_subject or mta or has_rfc822))
        or (bounce_subject and mta and mta != "generic")
        or (bounce_subject and (null_sender or has_rfc822 or auto_submitted))
    ):
        # A delay warning says so in its subject; the body alone is not trusted because final
        # failures quote the retry history too.
        if _DELAY_RE.search(subject) and not _GAVE_UP_RE.search(body[:8000]):
            return "auto_reply", "dsn-delayed", ()
        if _SUCCESS_SUBJECT_RE.search(subject) and not mta:
            return "auto_reply", "dsn-delivered", ()
        rcpts = tuple(_plain_recipients(body, exclude))
        if x_failed:
            rcpts = tuple(
                dict.fromkeys([a.lower() for a in _ADDR_RE.findall(x_failed)] + list(rcpts))
            )
        return "bounce", f"plain-text bounce ({mta or 'unknown'})", rcpts

    if auto_submitted and not auto_submitted.startswith("no"):
        return "auto_reply", f"auto-submitted: {auto_submitted.split(';')[0].strip()}", ()
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Reply"):
        if _header(msg, name, heads):
            return "auto_reply", name.lower(), ()
    if _header(msg, "X-Apple-Action", heads).lower() == "vacation":
        return "auto_reply", "x-apple-action: vacation", ()
    precedence = _header(msg, "Precedence", heads).lower()
    if precedence in ("auto_reply", "bulk", "junk", "list"):
        return "auto_reply", f"precedence: {precedence}", ()
    if _OOO_SUBJECT_RE.match(subject):
        return "auto_reply", "ooo subject", ()
    if null_sender:
        if _OOO_BODY_RE.search(body[:4000]):
            return "auto_reply", "null sender, ooo text", ()
        return "bounce", "null sender", tuple(_plain_recipients(body, exclude))
    if daemon:
        return (
            "bounce",
            f"plain-text bounce ({mta or 'mailer-daemon'})",
            tuple(_plain_recipients(body, exclude)),
        )
    if mta and mta != "generic" and _FAILISH_SUBJECT_RE.search(subject):
        return "bounce", f"plain-text bounce ({mta})", tuple(_plain_recipients(body, exclude))
    return "reply", "reply", ()
