"""Reply parser: turns one raw inbound message into what the member newly wrote.

Shared by ``mailflow reply parse`` and the SMTP listener. Given raw bytes it decides the kind
(reply / auto_reply / bounce, see :mod:`mailflow.classify` for how read receipts, abuse reports,
delay and success DSNs are classified), picks the body (text/plain preferred, else HTML via
:mod:`mailflow.htmltext`), removes quoted history, attribution lines and signatures, finds the
Done / Setback / Next sections and decides whether a setback was admitted.

Choices worth knowing:

* Our ``--- reply above this line ---`` marker only says where the quoted check-in begins.
  Everything the sender wrote outside quotes -- above, below or between quoted blocks -- is
  her text; an answer right under a quoted ``Done:`` / ``Setback:`` / ``Next:`` question gets
  that label. An unquoted marker starts an unquoted copy of the check-in and cuts the text,
  unless the marker's block is indented like a quote (s-nail's default prefix is a tab).
* Quoted history is cut at the first unquoted history marker (Outlook header block,
  "-----Original Message-----", an attribution followed by unquoted text); ``>`` lines and
  attributions introducing them are dropped, and text between quote blocks is kept as the
  sender's interleaved answers -- unless the sender top-posted above unquoted history, in which
  case the text between older quotes belongs to the thread, not to this reply.
* A forwarded message is content, not history: after a "Forwarded message" banner, under
  Apple Mail's quoted "Begin forwarded message:", and -- when the subject has a forward prefix
  (FW:, WG:, TR:, RV:, ...) -- below Outlook's rule + header block.
* Signatures: ``-- `` / ``--`` / ``\\--`` (not on the first line; also right under a quote), an
  underscore rule, a dash rule over a short block, phone/app footers (links inside them
  ignored) and what follows them, a formal closing over a name ("Best regards,\nAna"), a
  closing over a name + title/contact block, "-Name" as the last line, a trailing name +
  contact-details paragraph, and a lone name block under the quote of a top-posted reply.
  "Thanks,\nAna" and a bare "Thanks!" are kept: they read as part of the message.
* Typographic punctuation is folded to ASCII (:func:`fold_typography`) for every phrase
  looked for; the text keeps what the sender typed.
* Charsets: a single-byte label over valid UTF-8 is a lie (UTF-8 wins); bytes no label
  explains go to charset-normalizer's best guess instead of becoming U+FFFD.

Everything here is pure: no I/O, no clock, no module-level mutable state, and no input makes it
raise. Regular expressions are linear (no nested quantifiers) and all work is bounded by caps
on the input size, because every byte of inbound mail is attacker-controlled.
"""

from __future__ import annotations

import codecs
import email
import re
from dataclasses import dataclass, field
from email import policy as email_policy
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses

from mailflow.classify import Headers, classify, first_headers
from mailflow.htmltext import HR_LINE, html_to_text
from mailflow.tokens import REPLY_MARKER

__all__ = [
    "REPLY_MARKER",
    "ParsedMessage",
    "detect_setback",
    "extract_reply_text",
    "find_sections",
    "fold_typography",
    "free_text",
    "html_to_text",
    "label_of_line",
    "parse_message",
    "says_no_setback",
]

# Raw messages beyond this are truncated before MIME parsing; the listener rejects far larger
# mail anyway, and a reply's new text is at the top.
MAX_RAW_BYTES = 8 << 20
# Body text examined for quotes/signatures/sections.
MAX_BODY_CHARS = 1 << 20
# Lines examined by the line-oriented passes (each line is itself capped).
MAX_LINES = 20_000
MAX_LINE_CHARS = 4_000

SECTION_KEYS = ("done", "setback", "next")

# Typographic punctuation that clients and autocorrect put where people type ASCII. Folded
# (one character for one, so positions still match the original) before any phrase is
# looked for: labels, setback phrases, negations, no-values, footers, the reply marker.
_FOLD_TABLE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u02bc": "'",
        "\uff07": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\uff02": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
        "\ufe63": "-",
        "\uff0d": "-",
        "\u2026": ".",
        "\u00a0": " ",
        "\u2002": " ",
        "\u2003": " ",
        "\u2007": " ",
        "\u2008": " ",
        "\u2009": " ",
        "\u200a": " ",
        "\u202f": " ",
        "\u205f": " ",
        "\u3000": " ",
    }
)


def fold_typography(text: str) -> str:
    """``text`` with curly quotes, dashes, ellipses and odd spaces as their ASCII forms.

    Same length as ``text`` (an ellipsis becomes one "."), so a match in the folded text is at
    the same position in the original. Used for matching only; the member's text is kept as
    she wrote it.
    """
    # Every character the table folds is non-ASCII, and most lines are plain ASCII.
    return text if text.isascii() else text.translate(_FOLD_TABLE)


@dataclass(frozen=True)
class ParsedMessage:
    """The parser's answer for one message. ``to_json_dict`` is the CLI contract (design 5)."""

    kind: str
    text: str
    setback: bool | None
    sections: dict[str, str]
    detail: str
    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    from_address: str | None = None
    subject: str = ""
    bounced_recipients: tuple[str, ...] = field(default_factory=tuple)
    body: str = ""  # the whole text as decoded, before quotes and signature were cut

    def to_json_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "text": self.text,
            "setback": self.setback,
            "sections": {k: self.sections.get(k, "") for k in SECTION_KEYS},
        }


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

_CHARSET_ALIASES = {
    "utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "x-unknown": "",
    "unknown-8bit": "",
    "unknown": "",
    "x-user-defined": "cp1252",
    "ansi_x3.4-1968": "ascii",
    "us-ascii": "ascii",
    "iso-8859-8-i": "iso-8859-8",
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "big5": "big5hkscs",
    "windows-874": "cp874",
    "shift-jis": "cp932",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "euc-jp": "euc_jis_2004",
    "latin-1": "latin-1",
    "iso-8859-1": "cp1252",  # mislabelled Windows text is far more common than C1 controls
    "ascii": "ascii",
}


# Labels of single-byte charsets: any byte string "decodes" under them, so a body that is valid
# UTF-8 with non-ASCII sequences in such a part is UTF-8 mislabelled (Outlook, web forms and
# gateways do this), not Latin text that happens to form UTF-8 sequences.
_SINGLE_BYTE_RE = re.compile(
    r"^(cp125\d|windows-125\d|iso-?8859-?\d{1,2}|iso_8859-\d{1,2}|latin-?\d|l\d|koi8-\w|mac\w*"
    r"|x-mac-\w+|cp437|cp850|cp852|cp866|ibm\d+|tis-620|cp874|ascii)$"
)
_LATIN1_LABELS = frozenset({"iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "l1", "iso-ir-100"})
# What the detector may answer: the charsets mail is actually written in. Unrestricted, it
# picks exotic code pages (mac_latin2, cp1006) for short Western text.
_DETECT_CANDIDATES = (
    "utf_8",
    "cp1252",
    "iso8859_15",
    "cp1250",
    "iso8859_2",
    "cp1251",
    "koi8_r",
    "cp1253",
    "iso8859_7",
    "cp1254",
    "cp1255",
    "cp1256",
    "cp1257",
    "cp932",
    "euc_jp",
    "gb18030",
    "big5",
    "cp949",
)
_SURROGATE_RUN_RE = re.compile("[\udc80-\udcff]+")


# Characters outside ASCII that a case-insensitive pattern matches to an ASCII letter
# (Python's re folds dotless i, long s, the Kelvin sign and dotted capital I that way).
_ASCII_CASE_TWINS = str.maketrans({"\u0131": "i", "\u017f": "s", "\u212a": "k", "\u0130": "i"})


def _ascii_words(words: tuple[str, ...]) -> tuple[str, ...]:
    """The lower-case ASCII forms of ``words`` that ASCII text can match case-insensitively."""
    forms = (w.lower().translate(_ASCII_CASE_TWINS) for w in words)
    return tuple(dict.fromkeys(w for w in forms if w.isascii()))


def _ascii_lacks(text: str, words: tuple[str, ...]) -> bool:
    """True if ``text`` is ASCII and holds none of ``words`` (from :func:`_ascii_words`) in any
    case, so a case-insensitive pattern that needs one of them cannot match it.

    A cheap test before a pattern with many alternatives, which costs ~0.1 us per character
    of every line it is tried on; text beyond ASCII is always left to the pattern.
    """
    if not text.isascii():
        return False
    low = text.lower()
    for word in words:  # noqa: SIM110 -- a generator in all() costs more than the test
        if word in low:
            return False
    return True


def _codec_name(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return ""


def _detect(data: bytes, declared: str) -> str | None:
    """charset-normalizer's best guess among mail charsets, ties going to the declared one."""
    try:
        from charset_normalizer import from_bytes

        results = from_bytes(data, cp_isolation=list(_DETECT_CANDIDATES))
        best = results.best()
        if best is None:
            return None
        tied = [m for m in results if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
        chosen = best.encoding
        for prefer in (_codec_name(declared) if declared else "", "cp1252"):
            hit = next(
                (
                    m.encoding
                    for m in tied
                    if prefer and prefer in {_codec_name(c) for c in m.could_be_from_charset}
                ),
                None,
            )
            if hit:
                chosen = prefer
                break
        return data.decode(chosen, "replace")
    except Exception:
        return None


def _mixed_utf8(data: bytes) -> str | None:
    """UTF-8 with a few stray 8-bit bytes: keep the UTF-8, read the strays as Windows-1252."""
    text = data.decode("utf-8", "surrogateescape")
    runs = _SURROGATE_RUN_RE.findall(text)
    valid = len(text) - len(text.encode("ascii", "ignore")) - sum(map(len, runs))
    if valid <= 0 or len(runs) > valid:
        # Not one real UTF-8 sequence (a single-byte charset), or more junk than UTF-8 (binary,
        # another multi-byte charset): ask the detector.
        return None

    def stray(m: re.Match[str]) -> str:
        raw = m.group(0).encode("utf-8", "surrogateescape")
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    return _SURROGATE_RUN_RE.sub(stray, text)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode a body: the label, unless it lies; never drop what cannot be decoded.

    Valid UTF-8 (with non-ASCII) under a single-byte label is UTF-8. Bytes the label (or its
    absence) can't explain are UTF-8 if they are, UTF-8 with stray bytes if mostly so, else
    charset-normalizer's best guess; replacement characters only as a last resort.
    """
    label = (charset or "").strip().strip('"').lower()
    name = _CHARSET_ALIASES.get(label, label)
    if data.isascii() and (not name or _SINGLE_BYTE_RE.match(name) or name == "utf-8"):
        return data.decode("ascii")
    if name and _SINGLE_BYTE_RE.match(name):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if name:
        try:
            return data.decode(name)
        except (LookupError, UnicodeDecodeError, ValueError):
            pass
        if label in _LATIN1_LABELS:
            return data.decode("latin-1")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    mixed = _mixed_utf8(data)
    if mixed is not None:
        return mixed
    guess = _detect(data, name)
    if guess is not None:
        return guess
    if name:
        try:
            return data.decode(name, "replace")
        except (LookupError, ValueError):
            pass
    return data.decode("cp1252", "replace")


def _decode_header_value(value: object) -> str:
    if value is None:
        return ""
    raw = str(value)
    try:
        # Without "=?" there is no encoded word, and decode_header + make_header give `raw`.
        text = str(make_header(decode_header(raw))) if "=?" in raw else raw
    except Exception:
        text = raw
    if _SURROGATE_RUN_RE.search(text):
        text = _decode_bytes(text.encode("utf-8", "surrogateescape"), None)
    return " ".join(text.split())


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676 format=flowed: join soft-broken lines (trailing space) of equal quote depth."""
    out: list[str] = []
    buf = ""
    buf_depth = -1
    for line in text.split("\n"):
        if line == "-- ":
            if buf_depth >= 0:
                out.append(buf)
            out.append(line)
            buf, buf_depth = "", -1
            continue
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        if buf_depth >= 0 and depth != buf_depth:
            out.append(buf)
            buf, buf_depth = "", -1
        if buf_depth < 0:
            buf = (">" * depth + (" " if depth else "")) + content
            buf_depth = depth
        else:
            buf += content
        if content.endswith(" ") and content.strip():
            if delsp:
                buf = buf[:-1]
            continue
        out.append(buf)
        buf, buf_depth = "", -1
    if buf_depth >= 0:
        out.append(buf)
    return "\n".join(out)


def _part_body(part: Message) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    text = _decode_bytes(data[: MAX_BODY_CHARS * 4], part.get_content_charset())
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    ctype_header = part.get("content-type")
    # get_param parses the whole header again; without the word there is no such parameter.
    maybe_flowed = not isinstance(ctype_header, str) or "format" in ctype_header.lower()
    if maybe_flowed and part.get_content_type() == "text/plain":
        fmt = str(part.get_param("format") or "").lower()
        if fmt == "flowed":
            delsp = str(part.get_param("delsp") or "").lower() == "yes"
            text = _unflow(text, delsp)
    return text[:MAX_BODY_CHARS]


def _is_attachment(part: Message) -> bool:
    disp = str(part.get("Content-Disposition") or "").lower()
    return disp.startswith("attachment")


def _body_parts(msg: Message) -> tuple[Message | None, Message | None]:
    """First inline text/plain and text/html parts, not descending into attached messages."""
    plain: Message | None = None
    html: Message | None = None
    stack = [msg]
    seen = 0
    while stack and seen < 200:
        part = stack.pop(0)
        seen += 1
        ctype = part.get_content_type()
        if part.is_multipart():
            if ctype.startswith("message/"):
                continue
            payload = part.get_payload()
            if isinstance(payload, list):
                stack[0:0] = [p for p in payload if isinstance(p, Message)]
            continue
        if _is_attachment(part) and part is not msg:
            continue
        if ctype == "text/plain" and plain is None:
            plain = part
        elif ctype == "text/html" and html is None:
            html = part
    return plain, html


def _body_text(msg: Message, forward: bool = False) -> str:
    plain, html = _body_parts(msg)
    if plain is not None:
        text = _part_body(plain)
        if text.strip() or html is None:
            return text
    if html is not None:
        # A forward's Outlook header block (divRplyFwdMsg) introduces the forwarded report: it
        # is kept as text, and the text passes treat it as a forward.
        return html_to_text(_part_body(html), quotes_as_text=True, keep_history=forward)
    if not msg.is_multipart() and msg.get_content_maintype() in ("text", ""):
        return _part_body(msg)
    return ""


# ---------------------------------------------------------------------------------------------
# Quoted history
# ---------------------------------------------------------------------------------------------

# Words that introduce an attribution line ("On <date>, <who> wrote:") in many languages.
_ATTR_START_RE = re.compile(
    r"^\W{0,6}(on|am|le|el|em|il|op|den|d\.|w dniu|dnia|dne|в|在|于|on\s+\w+day)\b",
    re.IGNORECASE,
)
# Verbs that end an attribution line, by language.
_ATTR_VERBS = (
    "wrote", "writes", "sent", "said", "schrieb", "schreibt", "geschrieben", "a écrit",
    "a ecrit", "écrit", "escribió", "escribio", "escreveu", "ha scritto", "scrisse", "schreef",
    "heeft geschreven", "skrev", "skriver", "kirjoitti", "pisze", "napisał", "napisał(a)",
    "napisała", "napisal", "napsal", "napsala", "napsal(a)", "написал", "написала",
    "написал(а)", "пишет", "написав", "написала(а)", "yazdı", "írta", "scrie", "a scris",
    "έγραψε", "kirjutas", "rašė", "rakstīja", "napisao", "написа", "viết", "menulis",
    "wrote on", "写道", "寫道", "写了", "のメッセージ", "書きました", "書き込みました",
    "님이 작성", "작성", "wrote the following", "пише", "geschreven", "het volgende geschreven",
)  # fmt: skip
# The verb that ends an attribution, optionally followed by a colon.
_ATTR_END_RE = re.compile(
    "("
    + "|".join(r"\s+".join(re.escape(w) for w in verb.split()) for verb in _ATTR_VERBS)
    + r")\s*[:：]?\s*(-{2,}\s*)?$",
    re.IGNORECASE,
)
# Last words of those verbs: a cheap test that must pass before the pattern is tried (it has
# ~60 alternatives at every position of the line, ~0.5 us per character).
_ATTR_VERB_LAST_WORDS = tuple({verb.split()[-1].lower() for verb in _ATTR_VERBS})


def _ends_with_attr_verb(text: str) -> bool:
    """True if ``text`` ends with an attribution verb ("wrote:", "a écrit :", "写道：", ...)."""
    if not text.rstrip(" \t:：-").lower().endswith(_ATTR_VERB_LAST_WORDS):
        return False
    return bool(_ATTR_END_RE.search(text[-120:]))


# Verb followed by the author and address: "Den 24. nov. 2025 skrev Peter <p@example.com>:".
_ATTR_VERB_ADDR_RE = re.compile(
    r"\b(wrote|schrieb|skrev|schreef|escribió|escreveu|a écrit|ha scritto|napisał\(a\)|napisał"
    r"|napisała|napsal\(a\)|napsal|написал\(а\)|написал|написала|kirjoitti|írta|yazdı|от)\s"
    r".{0,300}[@>\d].{0,100}[:：]\s*$",
    re.IGNORECASE,
)
_VERB_ANY = (
    "wrote", "schrieb", "skrev", "schreef", "escribió", "escreveu", "écrit", "scritto", "napisał",
    "napsal", "написал", "kirjoitti", "írta", "yazdı", "pisze", "escribió", "escreveu",
    "ha scritto", "geschreven", "от",
)  # fmt: skip
_VERB_ANY_RE = re.compile(r"\b(" + "|".join(_VERB_ANY) + r")\b", re.IGNORECASE)
_VERB_ANY_ASCII = _ascii_words(_VERB_ANY)


def _has_verb(text: str) -> bool:
    """``_VERB_ANY_RE.search(text)``, ruling most lines out without the pattern."""
    return not _ascii_lacks(text, _VERB_ANY_ASCII) and bool(_VERB_ANY_RE.search(text))


def _has_email(text: str) -> bool:
    return "@" in text and bool(_EMAIL_RE.search(text))


# "2014-10-17 11:28 GMT+03:00 Bob <bob@example.com>:" and similar date-first forms.
_DATE_ATTR_RE = re.compile(
    r"^\s*\d{1,4}[-./]\d{1,2}[-./]\d{1,4}\b[^\n]{0,200}[@<][^\n]{0,200}>?\s*[:：]?\s*$"
)
_GMAIL_DATE_RE = re.compile(
    r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2},? \d{1,2}:\d\d( GMT[+-]\d{1,2}:?\d\d)? \S"
)
_EMAIL_RE = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}\.[\w.-]{1,200}")
_CJK_DATE_ATTR_RE = re.compile(
    r"^\W{0,3}(在\s?)?\d{4}\s?年\s?\d{1,2}\s?月\s?\d{1,2}\s?日.{0,200}[:：]$"
)
_DATE_START_RE = re.compile(r"^\W{0,6}\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}")
_HAS_DATE_OR_ADDR_RE = re.compile(
    r"\d{1,4}[-./:]\d{1,2}|@|\b(19|20)\d\d\b|\d{1,2}:\d\d|"
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|mon|tue|wed|thu|fri|sat|sun)",
    re.IGNORECASE,
)

# Header-block field names (Outlook, Gmail forward, Apple, ...), by language.
_FROM_FIELDS = (
    "from|von|de|da|van|från|fra|frá|od|от|від|发件人|發件人|寄件者|差出人|送信者|보낸 사람"
    "|보낸사람"
    "|lähettäjä|kimden|feladó|expéditeur|remitente|mittente|afzender|avsändare|avsender|nadawca"
    "|odesílatel|отправитель|gönderen|de la|từ|emisor"
)
_OTHER_FIELDS = (
    "sent|date|to|cc|bcc|subject|reply-to|gesendet|datum|an|betreff|envoyé|envoye|date|à|a|objet"
    "|enviado|fecha|para|asunto|assunto|data|inviato|oggetto|verzonden|aan|onderwerp|verstuurd"
    "|skickat|till|ämne|sendt|til|emne|dato|wysłano|wysłane|do|temat|odesláno|komu|předmět"
    "|kopie|отправлено|дата|кому|тема|копия|发送时间|发送日期|日期|收件人|抄送|主题|主旨|傳送時間"
    "|收件者|副本|送信日時|日付|宛先|件名|cc|보낸 날짜|받는 사람|제목|lähetetty|vastaanottaja|aihe"
    "|gönderildi|tarih|kime|konu|elküldve|címzett|tárgy|ngày|đến|chủ đề|tiêu đề|gửi|enviada|cco"
)
_FIELD_RE = re.compile(
    r"^\s*[*_]{0,2}\s*(" + _FROM_FIELDS + "|" + _OTHER_FIELDS + r")\s*[*_]{0,2}\s*[:：]",
    re.IGNORECASE,
)
_FROM_FIELD_RE = re.compile(
    r"^\s*[*_]{0,2}\s*(" + _FROM_FIELDS + r")\s*[*_]{0,2}\s*[:：]\s*\S", re.IGNORECASE
)
_ORIGINAL_MESSAGE_RE = re.compile(
    r"^\s*[-=_*]{2,}\s*(original message|original|ursprüngliche nachricht|originalnachricht"
    r"|message d'origine|message original|mensaje original|mensagem original|messaggio originale"
    r"|oorspronkelijk bericht|origineel bericht|originalmeddelande|ursprungligt meddelande"
    r"|oprindelig meddelelse|original meddelelse|opprinnelig melding|opprinnelig melding"
    r"|wiadomość oryginalna|oryginalna wiadomość|původní zpráva|исходное сообщение"
    r"|оригинальное сообщение|alkuperäinen viesti|orijinal mesaj|eredeti üzenet|原始邮件|原始郵件"
    r"|元のメッセージ|원본 메시지|reply message|antwort|antwort nachricht|original nachricht|svar)"
    r"\s*[-=_*]{2,}\s*$",
    re.IGNORECASE,
)
_FORWARD_RE = re.compile(
    r"^\s*[-=_*]{2,}\s*(forwarded message|weitergeleitete nachricht|message transféré"
    r"|mensaje reenviado|mensagem encaminhada|messaggio inoltrato|doorgestuurd bericht"
    r"|vidarebefordrat meddelande|videresendt meddelelse|wiadomość przekazana"
    r"|пересылаемое сообщение|转发的邮件)\s*[-=_*]{2,}\s*$"
    # Apple Mail's banner over a quoted forward, in its languages
    r"|^\s*(begin forwarded message|anfang der weitergeleiteten nachricht"
    r"|début du message réexpédié|inicio del mensaje reenviado"
    r"|início da mensagem reencaminhada|inizio messaggio inoltrato"
    r"|begin doorgestuurd bericht|vidarebefordrat mejl|videresendt besked|videresendt melding"
    r"|välitetty viesti alkaa|początek przekazywanej wiadomości|转发的邮件|転送されたメッセージ"
    r"|전달된 메시지)\s*[:：]\s*$",
    re.IGNORECASE,
)
_RULE_RE = re.compile(r"^\s*(_{8,}|-{8,}|={8,})\s*$")
_QUOTE_RE = re.compile(r"^[ \t]{0,8}(>|&gt;|\|\s)")


def _is_quote_line(line: str) -> bool:
    # _QUOTE_RE by its first character: most lines are decided without the pattern.
    if not line:
        return False
    first = line[0]
    if first == ">":
        return True
    if first not in " \t&|":
        return False
    return bool(_QUOTE_RE.match(line))


def _attribution_span(lines: list[str], i: int) -> int:
    """Number of lines forming an attribution starting at ``i`` (wrapped ones too), or 0."""
    first = lines[i].strip()
    if not first or len(first) > 400 or _is_quote_line(lines[i]):
        return 0
    joined = first
    consumed = 1
    blanks = 0
    intro = bool(_ATTR_START_RE.match(first) or _DATE_START_RE.match(first))
    # Only a line that itself looks like the start of an attribution may be joined with the
    # lines below it; otherwise a sentence of the reply would be swallowed with it.
    can_wrap = intro or first.endswith("<") or (_has_verb(first) or _has_email(first))
    # The three date-first patterns need a digit (or 在) before any letter; every `joined`
    # starts with `first`, so a line starting with a letter rules them all out.
    dated = not first[0].isalpha() or first[0] == "在"
    for step in range(6 if can_wrap else 1):
        if step:
            j = i + consumed
            while j < len(lines) and not lines[j].strip() and blanks < 2 and intro:
                blanks += 1
                j += 1
            if j >= len(lines):
                break
            nxt = lines[j].strip()
            if not nxt or len(joined) + len(nxt) > 600:
                break
            # A wrapped address can push ">:" or "> wrote:" onto a line of its own.
            if _is_quote_line(lines[j]) and not (len(nxt) <= 40 and nxt.endswith((":", "："))):
                break
            # a quoted-printable soft break left in a text body ("w=" / "rote:")
            joined = joined[:-1] + nxt if joined.endswith("=") else joined + " " + nxt
            consumed = j - i + 1
        if (
            dated
            and _DATE_ATTR_RE.match(joined)
            and (joined.endswith((":", "：")) or _next_is_quote(lines, i + consumed))
        ):
            return consumed
        if (dated and _CJK_DATE_ATTR_RE.match(joined)) or (
            joined.endswith(">:") and "@" in joined and _next_is_quote(lines, i + consumed)
        ):
            return consumed
        if (
            step == 0
            and dated
            and _GMAIL_DATE_RE.match(joined)
            and len(joined) < 200
            and joined.count("<") == joined.count(">")
        ):
            return consumed
        verb_then_name = (
            intro
            and joined.endswith((":", "："))
            and _has_verb(joined)
            and bool(_HAS_DATE_OR_ADDR_RE.search(joined))
        )
        # Both patterns are anchored at the end: the first can only match in the last few
        # dozen characters, the second only on a line ending with a colon.
        if not (
            verb_then_name
            or _ends_with_attr_verb(joined)
            or (joined.endswith((":", "：")) and _ATTR_VERB_ADDR_RE.search(joined))
        ):
            continue
        starts = bool(_ATTR_START_RE.match(joined))
        if starts and (step == 0 or _HAS_DATE_OR_ADDR_RE.search(joined)):
            return consumed
        if _HAS_DATE_OR_ADDR_RE.search(joined) and len(joined) < 400:
            # Without an introducing word, joining is only allowed from a line that itself
            # looks like the start of an attribution (a name, date or address, no sentence).
            return consumed
        # "Bob wrote:" alone counts only when quoted text follows.
        if step == 0 and len(joined) < 120 and _next_is_quote(lines, i + 1):
            return consumed
    return 0


def _next_is_quote(lines: list[str], j: int) -> bool:
    while j < len(lines) and not lines[j].strip():
        j += 1
    return j < len(lines) and _is_quote_line(lines[j])


def _header_block_at(lines: list[str], i: int) -> bool:
    """True if a From:-style header block (From + at least one more field) starts at ``i``."""
    first = lines[i]
    if (":" not in first and "：" not in first) or not _FIELD_RE.match(first):
        return False
    fields = 0
    has_from = False
    j = i
    blanks = 0
    while j < len(lines) and j < i + 12:
        line = lines[j]
        if not line.strip():
            blanks += 1
            if blanks > 1 or fields >= 2:
                break
            j += 1
            continue
        if _FIELD_RE.match(line):
            fields += 1
            if _FROM_FIELD_RE.match(line):
                has_from = True
        elif not _ANY_FIELD_RE.match(line) and not line.startswith((" ", "\t")) and fields < 2:
            # Clients add fields we do not know ("Risposta:"); anything else ends the block.
            return False
        j += 1
    if has_from:
        return fields >= 2
    # Some clients omit From: and start with Date:/Sent: then To:/Subject:.
    return fields >= 2 and bool(_DATE_FIELD_RE.match(lines[i]))


_DATE_FIELD_RE = re.compile(
    r"^\s*[*_]{0,2}\s*(date|sent|datum|gesendet|envoyé|enviado|fecha|data|inviato|verzonden"
    r"|skickat|sendt|wysłano|odesláno|отправлено|дата|发送时间|日期|送信日時|日付)\s*[*_]{0,2}\s*[:：]",
    re.IGNORECASE,
)
_ANY_FIELD_RE = re.compile(r"^\s*[*_]{0,2}[^\W\d][\w -]{0,24}[*_]{0,2}\s*[:：]")


def _cut_index(lines: list[str]) -> int:
    """Index of the first line of unquoted (non-``>``) history, or len(lines)."""
    skip_until = -1
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or i < skip_until:
            continue
        if _is_quote_line(line):
            continue
        if stripped.endswith(_FORWARD_ENDS) and _FORWARD_RE.match(stripped):
            # A forwarded message is the member's content, not history: skip its header block.
            skip_until = _block_end(lines, i + 1)
            continue
        # Both patterns start with a rule character.
        ruled = stripped[0] in "-=_*"
        if ruled and _ORIGINAL_MESSAGE_RE.match(stripped):
            return i
        if ruled and _RULE_RE.match(stripped):
            k = i + 1
            while k < len(lines) and not lines[k].strip():
                k += 1
            if k < len(lines) and (_header_block_at(lines, k) or _FIELD_RE.match(lines[k])):
                return i
            # an HTML <hr> followed by something header-ish is history too
            if stripped == HR_LINE and k < len(lines) and _FROM_FIELD_RE.match(lines[k]):
                return i
            continue
        if _header_block_at(lines, i):
            return i
    return len(lines)


def _block_end(lines: list[str], start: int) -> int:
    """Index just past a header block starting at (or after blanks from) ``start``."""
    j = start
    while j < len(lines) and not lines[j].strip():
        j += 1
    while j < len(lines) and lines[j].strip() and j < start + 30:
        j += 1
    return j


def _prev_nonblank(lines: list[str], i: int) -> str:
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return lines[j].strip() if j >= 0 else ""


def _quote_content(line: str) -> str:
    """A quoted line without its quote prefix(es)."""
    rest = line.lstrip(">")
    if len(rest) != len(line):
        # Only ">"s in front: done unless another prefix (" > ", "&gt;", "|") follows.
        after = rest.lstrip(" \t")
        if not after or after[0] not in ">&|":
            return rest.strip()
    m = _QUOTE_PREFIX_RE.match(line)
    return (line[m.end() :] if m else line).strip()


_QUOTE_PREFIX_RE = re.compile(r"^(?:[ \t]{0,8}(?:>|&gt;|\|(?=\s|$)))+")
# Signature delimiters as clients and people write them (see _strip_signature).
_SIG_DELIMS = frozenset({"--", "-- ", "\u2014", "__", "\\--", "\\-\\-", "\\-- "})


# Lines that start like a command in a reply (mailflow.commands: pause, resume, goal N done,
# stop, confirm stop, skill: X); an inline answer's label is never put in front of one.
_COMMAND_LIKE_RE = re.compile(r"^[-•*>\s]*(pause|unpause|resume|goal|stop|confirm|skill)\b", re.I)


_LABEL_MAX_CHARS = 40


def _label_key(text: str) -> tuple[str, str] | None | bool:
    """(key, label) for a ``Done:``-style label line; False for another ``Word:`` line; None."""
    colon = text.find(":")
    wide = text.find("：")
    if colon < 0 and wide < 0:
        return None
    colon = wide if colon < 0 else colon if wide < 0 else min(colon, wide)
    # _LABEL_LINE_RE matches up to the first colon (nothing before it can be one), where at
    # most a bullet or number, three marks, a label and three marks stand: 40 non-space
    # characters. Folding keeps every character's space-ness.
    if colon > _LABEL_MAX_CHARS and len("".join(text[:colon].split())) > _LABEL_MAX_CHARS:
        return None
    m = _LABEL_LINE_RE.match(fold_typography(text[:MAX_LINE_CHARS]))
    if not m:
        return None
    label = " ".join(m.group(1).lower().split()).strip("*_ ")
    key = _LABEL_TO_KEY.get(label)
    if key is None and label.endswith("(s)"):
        key = _LABEL_TO_KEY.get(label[:-3])
    if key is None:
        return False
    return key, m.group(1).strip().strip("*_").strip()


def _block_question(
    lines: list[str], block: list[int], question: tuple[str, str] | None, tail: int
) -> tuple[tuple[str, str] | None, int]:
    """The quoted question (and the question lines since its label) after a quote block.

    Read line by line, a ``Done:``-style label line starts a question, another ``Word:`` line
    ends it, and so does a third line of other text after the label. So only the block's last
    lines decide: walking back from its end, the first label line decides if at most two
    other lines follow it, and three other lines end any question. (The tail count only
    matters while there is a question.) ``block``: the indexes of the block's quoted lines.
    """
    others = 0
    for k in reversed(block):
        content = _quote_content(lines[k])
        if not content:
            continue
        found = _label_key(content)
        if found:
            return found, others  # type: ignore[return-value]
        if found is False:
            return None, tail
        others += 1
        if others > 2:
            return None, tail
    # No label line in the block: the question before it goes on, if it is still short.
    tail += others
    return (question if tail <= 2 else None), tail


def _strip_quotes(lines: list[str], history_cut: bool) -> list[str]:
    """Drop attribution lines and ``>`` blocks; keep what the sender wrote around them.

    Text above, below and between quote blocks is the sender's. An answer written right under
    a quoted ``Done:`` / ``Setback:`` / ``Next:`` question gets that label (the question is the
    label; its quoted text is not kept), so the sections find it.

    An attribution followed by unquoted text (no ``>`` at all after it) introduces a full
    unquoted copy of the earlier mail, so everything from it on is dropped. When such unquoted
    history exists and the sender wrote above the first quote (top-posting), the text between
    quote blocks belongs to the older messages of the thread, so it is dropped too.
    """
    out: list[str] = []
    first_quote_at: int | None = None
    i = 0
    n = len(lines)
    skip_blanks = False
    # The label of the quoted question the next unquoted block answers, and how many quoted
    # lines of question text followed it (a wrapped question is still that question).
    question: tuple[str, str] | None = None
    question_tail = 0
    pending: tuple[str, str] | None = None
    after_quote = False  # only blank lines since the last quote line or attribution
    last_quote_at: int | None = None  # len(out) when the last quote block ended
    quoted = [_is_quote_line(x) for x in lines]
    while i < n:
        line = lines[i]
        if skip_blanks and not line.strip():
            i += 1
            continue
        skip_blanks = False
        prev_quote = i > 0 and quoted[i - 1]
        if quoted[i]:
            if first_quote_at is None:
                first_quote_at = len(out)
            after_quote = True
            last_quote_at = len(out)
            # The whole quote block (blank lines inside it skipped) in one go.
            block = [i]
            i += 1
            while i < n and (quoted[i] or not lines[i].strip()):
                if quoted[i]:
                    block.append(i)
                i += 1
            question, question_tail = _block_question(lines, block, question, question_tail)
            pending = question
            continue
        stripped = line.strip()
        if after_quote and stripped in _SIG_DELIMS:
            # A signature right under the quote (mutt, Thunderbird replying below): drop it
            # here, or a reply that is only quote + signature would keep the signature.
            j = i + 1
            while j < n and not _is_quote_line(lines[j]):
                j += 1
            if _tail_is_short(lines, i + 1, j, 8, 80):
                i = j
                continue
        if prev_quote and not _PROSE_RE.search(line) and stripped not in _SIG_DELIMS:
            # A wrapped link or fragment that lost its ">" belongs to the quote above it.
            i += 1
            continue
        shared = _shared_line_attribution(line)
        if shared is not None and _next_is_quote(lines, i + 1):
            # "reply On Wed, Apr 4, 2012, Bob wrote:" -- the reply and the attribution share
            # a line; keep the reply part.
            out.append(shared)
            first_quote_at = len(out)
            i += 1
            skip_blanks = True
            continue
        span = _attribution_span(lines, i)
        if span:
            if not any(quoted[i + span : i + span + 400]):
                history_cut = True
                break
            if first_quote_at is None:
                first_quote_at = len(out)
            i += span
            skip_blanks = True
            question = pending = None
            after_quote = True
            continue
        if pending is not None and _COMMAND_LIKE_RE.match(fold_typography(stripped)):
            # A command ("pause 2 weeks") must stay on a line of its own; the label goes to
            # the answer's next line.
            out.append(line)
            i += 1
            continue
        if pending is not None and stripped not in _SIG_DELIMS and not _label_key(stripped):
            line = f"{pending[1]}: {stripped}"
        pending = None
        question = None
        after_quote = False
        out.append(line)
        i += 1
    if first_quote_at is not None:
        top = out[:first_quote_at]
        if history_cut and sum(1 for x in top if x.strip()) >= 1:
            return top
        # Top-posted, with only a name (and a title or phone) under the quote: signature.
        if (
            last_quote_at is not None
            and any(x.strip() for x in top)
            and _is_name_block(out[last_quote_at:])
        ):
            out = out[:last_quote_at]
        # Interleaved fragments must contain words; stray characters are wrapped quote debris.
        tail = out[first_quote_at:]
        if not any(_WORDISH_RE.search(x) for x in tail):
            return top
        return top + _drop_debris(tail)
    return out


_NAME_LINE_RE = re.compile(r"^[^\W\d_][\w'.-]{0,30}(?: [^\W\d_][\w'.-]{0,30}){0,3}$")


def _is_name_block(lines: list[str]) -> bool:
    """One short block: a capitalised name, then at most three title / contact lines."""
    block = [x.strip() for x in lines if x.strip()]
    if not block or len(block) > 4:
        return False
    first_at = next(k for k, x in enumerate(lines) if x.strip())
    if any(not x.strip() for x in lines[first_at : first_at + len(block)]):
        return False  # more than one paragraph
    name = block[0]
    if not _NAME_LINE_RE.match(name) or not all(w[0].isupper() for w in name.split()):
        return False
    return all(len(x) <= 60 and not x.endswith((".", "!", "?", ":")) for x in block[1:])


# A plain word standing alone (not part of a URL or token) marks a line as written text.
_PROSE_RE = re.compile(
    r"(^|\s)[^\W\d_]{2,}[.,!?:;]?(\s|$)|[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]"
)


def _shared_line_attribution(line: str) -> str | None:
    """Text before an attribution that starts mid-line, or None."""
    idx = line.rfind("On ")
    if idx <= 0 or len(line) > 600 or not line[:idx].strip():
        return None
    tail = line[idx:]
    if not (_ends_with_attr_verb(tail) and _HAS_DATE_OR_ADDR_RE.search(tail)):
        return None
    head = line[:idx].rstrip().rstrip("-").rstrip()
    return head if head.strip() else None


_WORDISH_RE = re.compile(r"[^\W\d_]{3}|[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]")


def _drop_debris(lines: list[str]) -> list[str]:
    """Drop blocks of unquoted lines that carry no word (e.g. ``om>`` from a broken quote)."""
    out: list[str] = []
    block: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line)
            continue
        debris = all(len(x.strip()) <= 4 and x.strip() not in ("--", "—") for x in block)
        if block and not (debris and not any(_WORDISH_RE.search(x) for x in block)):
            out.extend(block)
        block = []
        out.append(line)
    return out[:-1]


# ---------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------

_SIG_DELIM_RE = re.compile(r"^(--|-- |—|__|--\s*)$")
_MOBILE_RE = re.compile(
    r"^\s*(sent from my [\w.'()&-]{1,25}( [\w.'()&-]{1,25}){0,4}"
    r"|sent (from|via|with|using) (the )?(yahoo|aol|outlook|mail for windows|samsung|gmail|proton"
    r"|blackberry|fastmail|zoho|icloud|my mobile|mobile|iphone|ipad|android|superhuman|spark"
    r"|airmail|newton|polymail|hey|mailbird|bluemail|edison|nine|aquamail|k-9|fairemail"
    r"|windows mail|mail for ios|mail for android)[\w .'-]{0,40}"
    r"|get outlook for [\w .]{2,30}|get \w+ for (ios|android)"
    r"|sent from \w+ for (iphone|ipad|android|ios)"
    r"|enviado desde mi .{2,60}|envoyé de mon .{2,60}|von meinem .{2,60}gesendet"
    r"|sent wirelessly from my [\w .,-]{2,80}|sent (from|on|via) (a |my )?blackberry[\w .,-]{0,60}"
    r"|envoyé (de|depuis|avec) (mon |ma )?[\w .'-]{2,40}|envoyé sans fil par mon [\w .,'-]{2,80}"
    r"|von meinem [\w .'-]{2,60} gesendet|gesendet (mit|von|vom|über) [\w .'-]{2,40}"
    r"|enviado desde mi [\w .'-]{2,40}"
    r"|enviado (do|pelo|de|a partir do) (meu |minha )?[\w .'-]{2,40}"
    r"|inviato da[l]? (mio |iphone|ipad|android|outlook|yahoo)[\w .'-]{0,40}"
    r"|verzonden (met|vanaf|van) (mijn )?[\w .'-]{2,40}|verstuurd vanaf (mijn )?[\w .'-]{2,40}"
    r"|skickat från (min )?[\w .'-]{2,40}|sendt fra (min )?[\w .'-]{2,40}"
    r"|wysłane z (mojego |mojej )?[\w .'-]{2,40}|odesláno z [\w .'-]{2,40}"
    r"|отправлено с [\w .'-]{2,40}|отправлено из [\w .'-]{2,40}|lähetetty [\w .'-]{2,40}"
    r"|发自我的[\w ]{1,20}|从我的[\w ]{1,20}发送|從我的 ?[\w ]{1,20}傳送|[\w ]{1,20}から送信"
    r"|[\w ]{1,20}에서 보냄)"
    r"\s*[.!]?\s*(<https?://[^\s<>]{1,200}>)?\s*$",
    re.IGNORECASE,
)
# A link inside a footer line: "Sent from Mail<https://go.microsoft.com/...> for Windows".
_FOOTER_LINK_RE = re.compile(
    r"\s*(?:<(?:https?://|mailto:|www\.)[^<>\s]{1,400}>|\[(?:https?://|mailto:)[^\]\s]{1,400}\]"
    r"|\((?:https?://|mailto:)[^)\s]{1,400}\))"
)
# Translations of "Sent from Mail for Windows" and "Get Outlook for Android/iOS": a verb of
# sending or getting, a mail app, a platform. Only ever looked for as a whole, short line at
# the end of the text.
_APP_FOOTER_RE = re.compile(
    r"^(?:"
    # "Gesendet von Mail für Windows", "Envoyé à partir de Courrier pour Windows", ...
    r"(?:gesendet|envoy[ée]|enviado|inviato|verzonden|verstuurd|skickat|skickades|sendt|wysłane"
    r"|odesláno|отправлено|lähetetty|trimis|küldve|αποστολή|sent)\b.{0,40}"
    r"\b(?:mail|e-?mail|courrier|correo|posta|e-post|poczta|pošty|почты|почта|sähköposti\w*"
    r"|outlook)\b.{0,30}\b(?:windows|android|ios|iphone|ipad|mac)\b.{0,12}"
    # "Outlook für Android herunterladen", "Télécharger Outlook pour Android", ...
    r"|(?:get|download|holen sie sich|laden sie|herunterladen|télécharger|téléchargez|obtenir"
    r"|obtenez|obtener|obtén|descargar|descarga|ottieni|scarica|obter|obtenha|baixe|baixar|hent"
    r"|få|skaffa|hämta|hanki|lataa|pobierz|uzyskaj|získat|získejte|stáhněte|stáhnout|получить"
    r"|получите|загрузите|скачайте|скачать|отримати|завантажте|λήψη|obțineți|descărcați"
    r"|szerezze|töltse|download)\b.{0,25}\boutlook\b.{0,30}\b(?:android|ios|iphone|ipad)\b.{0,20}"
    r"|outlook\b.{0,30}\b(?:android|ios|iphone|ipad)\b.{0,30}"
    r"(?:herunterladen|downloaden|edinin|indirin|letöltése|rendszerre|-sovellus\w*)"
    r"|.{0,30}\b(?:android|ios|iphone|ipad)\s?(?:版|용)\s?outlook.{0,12}"
    # "Von Outlook für Android gesendet": the verb last
    r"|(?:von|vanaf|från|fra|z)\b.{0,40}\b(?:outlook|mail|e-?mail|posta|e-post|poczta)\b.{0,30}"
    r"\b(?:windows|android|ios|iphone|ipad)\b.{0,12}\b(?:gesendet|verzonden|skickat|sendt"
    r"|wysłane|wysłano)"
    r"|.{0,20}(?:获取|取得|下载|下載|獲取).{0,20}outlook.{0,10}"
    r"|.{0,20}\bwindows\b.{0,20}"
    r"(?:のメールから送信|版邮件发送|版郵件傳送|용 메일에서 보냄|için posta.{0,12})"
    r")[.!]?$",
    re.IGNORECASE,
)


# Every alternative of _MOBILE_RE that ASCII text can match starts with one of these.
_MOBILE_WORDS = _ascii_words(
    (
        "sent",
        "sendt",
        "get",
        "enviado",
        "von meinem",
        "gesendet",
        "inviato",
        "verzonden",
        "verstuurd",
    )
)
# Every alternative of _APP_FOOTER_RE names one of these (or is written in another script).
_APP_FOOTER_WORDS = _ascii_words(("windows", "android", "ios", "iphone", "ipad", "mac", "outlook"))


def _is_app_footer(line: str) -> bool:
    """A phone or mail-app footer line ("Sent from my iPhone", "Get Outlook for Android")."""
    if len(line) > 300:
        return False
    plain = fold_typography(line)
    if "<" in plain or "[" in plain or "(" in plain:  # every link form is bracketed
        plain = _FOOTER_LINK_RE.sub("", plain)
    plain = " ".join(plain.replace("<>", " ").split())
    if len(plain) > 120:
        return False
    if not _ascii_lacks(plain, _MOBILE_WORDS) and _MOBILE_RE.match(plain):
        return True
    return not _ascii_lacks(plain, _APP_FOOTER_WORDS) and bool(_APP_FOOTER_RE.match(plain))


_SIGNOFF_RE = re.compile(
    r"^\s*(thanks|thank you|many thanks|thanks again|thx|cheers|regards|best regards|kind regards"
    r"|warm regards|best wishes|best|all the best|sincerely|yours|yours truly|cordially|take care"
    r"|mit freundlichen grüßen|mit freundlichen gruessen|viele grüße|liebe grüße|grüße|gruß|lg|mfg"
    r"|cordialement|bien à vous|amitiés|bises|saludos|un saludo|atentamente|abrazos|atenciosamente"
    r"|abraços|cumprimentos|cordiali saluti|saluti|distinti saluti|met vriendelijke groet(en)?"
    r"|groeten|groetjes|mvg|med vänliga hälsningar|vänliga hälsningar|hälsningar|mvh"
    r"|med venlig hilsen|venlig hilsen|hilsen|med vennlig hilsen|vennlig hilsen|pozdrawiam"
    r"|z poważaniem|z powazaniem|pozdrowienia|s pozdravem|se srdečným pozdravem|с уважением"
    r"|с наилучшими пожеланиями|спасибо|ystävällisin terveisin|terveisin|saygılarımla"
    r"|üdvözlettel|此致|谢谢|よろしくお願いします"
    r"|감사합니다|kh|kr|vh|mvh|/\w{1,20})\s*[,!]?\s*$",
    re.IGNORECASE,
)
_UNDERSCORE_RULE_RE = re.compile(r"^_{4,}$")
_DASH_RULE_RE = re.compile(r"^-{2,40}$")
_DASH_NAME_RE = re.compile(r"^(-|--\s?|\\--\s?|—\s?|–\s?|~|/{1,2})\w[\w .'-]{0,40}$")
_DASH_NAME_FIRST = "-\\—–~/"  # the characters _DASH_NAME_RE can start with


def _strip_signature(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        stripped = line.strip()
        # "-- " delimiter (RFC 3676); a bare "--" counts too, but only on its own line, and so
        # does a Markdown-escaped "\\--" (Nylas and other Markdown editors).
        # A delimiter on the very first line means the whole text is signature.
        if stripped in _SIG_DELIMS and _has_content_before(lines, i):
            lines = lines[:i]
            break
        # "-- Ana Member" (the name on the delimiter line) over a few short lines.
        if (
            stripped.startswith(("--", "\\--"))
            and _DASH_NAME_RE.match(stripped)
            and _has_content_before(lines, i)
            and _tail_is_short(lines, i + 1, len(lines), 6, 80)
        ):
            lines = lines[:i]
            break
        # A dash rule followed by a few short lines (name, title, phone) is a signature too.
        if (
            stripped.startswith("-")
            and _DASH_RULE_RE.match(stripped)
            and _has_content_before(lines, i)
            and _tail_is_short(lines, i + 1, len(lines), 12, 80)
        ):
            lines = lines[:i]
            break
        # An underscore rule after some text starts a signature or mailing-list footer.
        if (
            i
            and stripped.startswith("_")
            and _UNDERSCORE_RULE_RE.match(stripped)
            and _has_content_before(lines, i)
        ):
            lines = lines[:i]
            break
    # Mobile/app footers and sign-off blocks in the last paragraph(s).
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    changed = True
    while changed and end:
        changed = False
        tail_start = max(0, end - 8)
        # A phone/app footer ends the text: whatever follows is more footer (disclaimers,
        # a second app line), as long as it is short.
        for j in range(max(0, end - 40), end):
            stripped = lines[j].strip()
            if (
                stripped
                and _is_app_footer(stripped)
                and _tail_is_short(lines, j + 1, end, 30, 100)
                and _has_content_before(lines, j)
            ):
                end = j
                changed = True
                break
        if changed:
            while end and not lines[end - 1].strip():
                end -= 1
            continue
        for j in range(end - 1, tail_start - 1, -1):
            stripped = lines[j].strip()
            if not stripped:
                continue
            # A closing alone ("Thanks!") is kept as text, and so is "Thanks,\nAlex", which
            # reads as part of the message; a formal closing with a name, or any closing over
            # a name + title/contact block, is a signature.
            signoff = (
                _is_signoff(stripped)
                and j < _last_nonblank(lines, end)
                and _tail_is_short(lines, j + 1, end, 5)
                and not (_THANKS_RE.match(stripped) and _count_nonblank(lines, j + 1, end) == 1)
            )
            # "-Abhishek", "—Ryan", "/John" as the very last line.
            dash_name = (
                stripped[0] in _DASH_NAME_FIRST
                and bool(_DASH_NAME_RE.match(stripped))
                and j == _last_nonblank(lines, end)
            )
            if (signoff or dash_name) and j > 0 and _has_content_before(lines, j):
                end = j
                changed = True
                break
        while end and not lines[end - 1].strip():
            end -= 1
    return _strip_contact_block(lines[:end])


_CONTACT_RE = re.compile(
    r"[\w.+-]{1,64}@[\w-]{1,63}\.\w|\bwww\.|https?://|(\+|\(|\b)\d[\d ()./-]{6,20}\d\b"
    r"|^\s*(tel|phone|mobile|mob|cell|fax|skype|t|m|f|p)\b\.?\s*[:.]",
    re.IGNORECASE,
)


def _strip_contact_block(lines: list[str]) -> list[str]:
    """Drop a last paragraph that is a name + contact details (two or more of them)."""
    end = _last_nonblank(lines, len(lines)) + 1
    start = end
    while start > 0 and lines[start - 1].strip():
        start -= 1
    block = [x.strip() for x in lines[start:end]]
    if start == 0 or not 2 <= len(block) <= 7 or any(len(x) > 60 for x in block):
        return lines
    if sum(1 for x in block if _CONTACT_RE.search(x)) >= 2 and not _CONTACT_RE.search(block[0]):
        return lines[:start]
    return lines


def _is_signoff(line: str) -> bool:
    # Bilingual closings are common: "Viele Grüße / Best regards".
    return all(_is_signoff_part(part) for part in line.split(" / ", 2))


# Non-space characters a closing can have: its longest word or phrase (25 characters, spaces
# included; "mit freundlichen gruessen") and a "," or "!". A longer line is no closing.
_SIGNOFF_MAX_CHARS = 26


def _is_signoff_part(part: str) -> bool:
    if len(part) > _SIGNOFF_MAX_CHARS and len("".join(part.split())) > _SIGNOFF_MAX_CHARS:
        return False
    return bool(_SIGNOFF_RE.match(part))


_THANKS_RE = re.compile(
    r"^\s*(thanks|thank you|many thanks|thanks again|thx|cheers|danke|merci|gracias|grazie"
    r"|obrigad[oa]|bedankt|tack|takk|tak|dzięki|díky|спасибо)\b",
    re.IGNORECASE,
)


def _count_nonblank(lines: list[str], start: int, end: int) -> int:
    return sum(1 for x in lines[start:end] if x.strip())


def _last_nonblank(lines: list[str], end: int) -> int:
    j = end - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return j


def _has_content_before(lines: list[str], j: int) -> bool:
    return any(x.strip() for x in lines[:j])


def _tail_is_short(
    lines: list[str], start: int, end: int, max_lines: int, max_len: int = 60
) -> bool:
    """Lines after a sign-off look like a name/title block: few, short, no sentence."""
    tail = [x.strip() for x in lines[start:end] if x.strip()]
    if len(tail) > max_lines:
        return False
    return all(len(x) <= max_len and not x.endswith(("?",)) for x in tail)


# ---------------------------------------------------------------------------------------------
# Public text API
# ---------------------------------------------------------------------------------------------

# Matched on folded text, so an autocorrected "— reply above this line —" counts too.
_MARKER_RE = re.compile(r"-{1,}\s*reply above this line\s*-{1,}", re.IGNORECASE)
_BLANK_RUN_RE = re.compile(r"\n{3,}")


def _normalise(body: str) -> list[str]:
    body = body[:MAX_BODY_CHARS].replace("\r\n", "\n").replace("\r", "\n")
    body = body.lstrip("\ufeff")
    lines = body.split("\n")[:MAX_LINES]
    # Gmail's invisible tracking mark or zero-width characters alone make an empty line.
    return [
        line if line.strip(_INVISIBLE) else ""
        for line in (x[:MAX_LINE_CHARS].rstrip() for x in lines)
    ]


_INVISIBLE = "\u1427\u200b\u200c\u200d\ufeff \t\u00a0"


_BANNER_RE = re.compile(
    r"^\s*\[?(caution|warning|external|attention|notice)\b[^\n]{0,40}(originated|outside|external"
    r"|sender)",
    re.IGNORECASE,
)


def _drop_banner(lines: list[str]) -> list[str]:
    """Remove an "external sender" warning paragraph inserted by the recipient's gateway."""
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i < len(lines) and _BANNER_RE.match(lines[i]):
        j = i
        while j < len(lines) and lines[j].strip():
            j += 1
        return lines[j:]
    return lines


def _skip_header_block(lines: list[str], start: int) -> list[str]:
    j = start
    while j < len(lines) and lines[j].strip() and not _RULE_RE.match(lines[j].strip()):
        j += 1
    return lines[j:]


def _apply_marker(lines: list[str]) -> list[str]:
    """Our ``--- reply above this line ---``: where the quoted check-in begins, nothing more.

    Quoted (``> --- reply above ...``), it changes nothing: the quote passes remove the quoted
    check-in and keep what the member wrote above, below or between its lines. Unquoted, the
    check-in below it is an unquoted copy (Outlook, Yahoo, Lotus): cut there -- unless the
    client quotes by indenting (s-nail's default prefix is a tab), i.e. the marker and the lines
    after it share an indent; then that indented block is the quote and is marked as one.
    """
    if "reply above" not in "\n".join(lines).lower():  # one test for the whole text
        return lines
    for i, line in enumerate(lines):
        if "reply above" not in line.lower() or not _MARKER_RE.search(fold_typography(line)):
            continue
        if _is_quote_line(line):
            return lines
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        following = [x for x in lines[i + 1 : i + 12] if x.strip()][:3]
        if not indent or not following or not all(x.startswith(indent) for x in following):
            return lines[:i]
        out = lines[:i]
        j = i
        while j < len(lines) and (not lines[j].strip() or lines[j].startswith(indent)):
            out.append("> " + lines[j][len(indent) :] if lines[j].strip() else "")
            j += 1
        return out + lines[j:]
    return lines


def extract_reply_text(body: str, *, forward: bool = False) -> str:
    """The new text of a plain-text body: quoted history, attribution and signature removed.

    ``forward``: the message is a forward (its subject says so), so the first block of history
    is the forwarded message -- content, like the note above it -- not quoted history.
    """
    try:
        return _extract(_normalise(body), forward)
    except Exception:
        return body[:MAX_BODY_CHARS].strip()


def _extract(lines: list[str], forward: bool) -> str:
    lines = _apply_marker(lines)
    lines = _drop_banner(lines)
    lines = _unquote_forwards(lines)
    first = next((k for k, x in enumerate(lines) if x.strip()), None)
    if first is not None and _FORWARD_RE.match(lines[first].strip()):
        # Only a forwarded message and no note: its body is the content.
        lines = lines[_block_end(lines, first + 1) :]
    cut = _cut_index(lines)
    if not any(x.strip() for x in lines[:cut]) and cut < len(lines):
        # The text opens with a header block: it is this message's own header pasted in
        # (or a bare forward), so the content is what follows it.
        lines = _skip_header_block(lines, cut)
        cut = _cut_index(lines)
    forwarded = ""
    if forward and cut < len(lines):
        # Outlook forwards with a rule + header block and no "Forwarded message" banner.
        forwarded = _extract(_skip_forward_header(lines, _header_start(lines, cut)), False)
        lines = lines[:cut]
    history_cut = cut < len(lines)
    lines = _strip_quotes(lines[:cut], history_cut)
    # Trailing attribution for a cut history, e.g. "On Mon, Bob wrote:" left on its own.
    while lines and (not lines[-1].strip() or _attribution_span(lines, len(lines) - 1)):
        lines.pop()
    if len(lines) >= 2 and _attribution_span(lines, len(lines) - 2) == 2:
        lines = lines[:-2]
    lines = _strip_signature(lines)
    text = "\n".join(lines).strip("\n")
    if forwarded:
        text = f"{text}\n\n{forwarded}" if text.strip() else forwarded
    text = _BLANK_RUN_RE.sub("\n\n", text)
    return text.strip()


_FORWARD_ENDS = (":", "：", "-", "=", "_", "*")  # last characters of the lines _FORWARD_RE matches
_ONE_QUOTE_LEVEL_RE = re.compile(r"^[ \t]{0,8}(?:>|&gt;) ?")


def _unquote_forwards(lines: list[str]) -> list[str]:
    """A forward that quotes the forwarded message (Apple Mail: "Begin forwarded message:"
    over ``>`` lines) is content: the quote block right under the banner loses one level."""
    for i, line in enumerate(lines[:MAX_LINES]):
        if not line.endswith(_FORWARD_ENDS) or not _FORWARD_RE.match(line.strip()):
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or not _is_quote_line(lines[j]):
            continue
        out = lines[:j]
        while j < len(lines) and (not lines[j].strip() or _is_quote_line(lines[j])):
            out.append(_ONE_QUOTE_LEVEL_RE.sub("", lines[j], count=1))
            j += 1
        return out + lines[j:]
    return lines


def _skip_forward_header(lines: list[str], start: int) -> list[str]:
    """The lines after a forwarded message's header block (its field lines, wrapped ones too).

    Stops at a blank line or at the first line that is not a header field: HTML forwards
    often leave no blank line between the block and the forwarded text.
    """
    j = start
    while j < len(lines) and j < start + 30 and lines[j].strip():
        if not (_FIELD_RE.match(lines[j]) or (j > start and lines[j][:1] in " \t")):
            break
        j += 1
    return lines[j:]


def _header_start(lines: list[str], cut: int) -> int:
    """First line of the header block at a history cut (past a rule or "Original Message")."""
    j = cut
    stripped = lines[j].strip()
    if _RULE_RE.match(stripped) or _ORIGINAL_MESSAGE_RE.match(stripped):
        j += 1
    while j < len(lines) and not lines[j].strip():
        j += 1
    return j


_LABELS: dict[str, tuple[str, ...]] = {
    "done": (
        "done",
        "did",
        "progress",
        "accomplished",
        "completed",
        "achievements",
        "wins",
        "what i did",
        "this week",
        "done this week",
        "did this week",
        "this week's progress",
        "progress this week",
        "what i've done",
        "erledigt",
        "gemacht",
        "fortschritt",
        "fortschritte",
        "fait",
        "réalisé",
        "progrès",
        "hecho",
        "logros",
        "progreso",
        "feito",
        "progresso",
        "fatto",
        "progressi",
        "gedaan",
        "voortgang",
        "klart",
        "gjort",
        "framsteg",
        "udført",
        "zrobione",
        "postęp",
        "postępy",
        "hotovo",
        "pokrok",
        "сделано",
        "прогресс",
        "完成",
        "进展",
        "完了",
        "進捗",
        "완료",
        "진행",
    ),
    "setback": (
        "setback",
        "setbacks",
        "blocker",
        "blockers",
        "blocked",
        "problem",
        "problems",
        "issue",
        "issues",
        "obstacle",
        "obstacles",
        "challenges",
        "setback this week",
        "setbacks this week",
        "what went wrong",
        "rückschlag",
        "rückschläge",
        "probleme",
        "hindernisse",
        "revers",
        "problème",
        "problèmes",
        "contratiempo",
        "contratiempos",
        "problemas",
        "obstáculos",
        "bloqueios",
        "contratempos",
        "ostacoli",
        "problemi",
        "tegenslag",
        "tegenslagen",
        "problemen",
        "motgång",
        "motgångar",
        "problem",
        "tilbageslag",
        "niepowodzenia",
        "niepowodzenie",
        "problemy",
        "neúspěch",
        "problémy",
        "неудачи",
        "проблемы",
        "трудности",
        "挫折",
        "问题",
        "障碍",
        "問題",
        "障害",
        "문제",
        "차질",
    ),
    "next": (
        "next",
        "next week",
        "next steps",
        "plan",
        "plans",
        "plan for next week",
        "plans for next week",
        "for next week",
        "next up",
        "up next",
        "coming week",
        "what's next",
        "todo",
        "to do",
        "nächste woche",
        "nächste schritte",
        "als nächstes",
        "plan",
        "prochaine semaine",
        "prochaines étapes",
        "la suite",
        "siguiente",
        "próxima semana",
        "próximos pasos",
        "próximos passos",
        "prossimi passi",
        "prossima settimana",
        "volgende week",
        "volgende",
        "nästa vecka",
        "nästa",
        "næste uge",
        "neste uke",
        "następnie",
        "następny tydzień",
        "plán",
        "další",
        "дальше",
        "план",
        "планы",
        "下一步",
        "计划",
        "次",
        "予定",
        "다음",
        "계획",
    ),
}
_LABEL_TO_KEY = {label: key for key, labels in _LABELS.items() for label in labels}
_LABEL_LINE_RE = re.compile(
    r"^\s*(?:[-*•·+>]\s*|\d{1,2}[.)]\s*)?[*_#]{0,3}\s*([^\W\d_][^:：\n]{0,30}?)\s*[*_]{0,3}\s*[:：]"
    r"\s*[*_]{0,3}\s*(.*)$"
)


def find_sections(text: str) -> dict[str, str]:
    """Content under Done/Setback/Next-style labels (``Label: text`` or a label line + lines).

    Lines before the first label are free text: they stay in the reply's text only (see
    :func:`free_text`); lines after a label belong to it until the next label.
    """
    sections = dict.fromkeys(SECTION_KEYS, "")
    current: str | None = None
    collected: dict[str, list[str]] = {k: [] for k in SECTION_KEYS}
    for line in text[:MAX_BODY_CHARS].split("\n")[:MAX_LINES]:
        line = line[:MAX_LINE_CHARS]
        key, rest = _section_label(line)
        if key is not None:
            current = key
            if rest:
                collected[key].append(rest)
            continue
        if current is not None:
            collected[current].append(line)
    for key in SECTION_KEYS:
        sections[key] = "\n".join(collected[key]).strip()
    return sections


def _section_label(line: str) -> tuple[str | None, str]:
    """(section key, text after the label) for a label line, else (None, "")."""
    if ":" not in line and "：" not in line:
        return None, ""
    # Folded, so "Setback\u00a0:" and "What I’ve done:" match; same length, same positions.
    m = _LABEL_LINE_RE.match(fold_typography(line))
    if not m:
        return None, ""
    label = " ".join(m.group(1).lower().split()).strip("*_ ")
    key = _LABEL_TO_KEY.get(label)
    if key is None and label.endswith("(s)"):
        key = _LABEL_TO_KEY.get(label[:-3])
    if key is None:
        return None, ""
    return key, line[m.start(2) : m.end(2)].strip().strip("*_").strip()


def label_of_line(line: str) -> str | None:
    """The section key ("done", "setback", "next") a line's label opens, else None."""
    return _section_label(line[:MAX_LINE_CHARS])[0]


def free_text(text: str) -> str:
    """The part of a reply's text under no label: what comes before the first section label.

    ``text`` always holds everything the member wrote; ``find_sections`` only the labelled
    parts. A reader that shows the sections must show this too, or a reply like "Rough week,
    the flu got me.\nNext week: catch up" loses its first line.
    """
    lines = text[:MAX_BODY_CHARS].split("\n")[:MAX_LINES]
    for i, line in enumerate(lines):
        if _section_label(line[:MAX_LINE_CHARS])[0] is not None:
            return "\n".join(lines[:i]).strip()
    return text.strip()


_NO_SETBACK_VALUES = frozenset(
    {
        "none",
        "no",
        "n/a",
        "na",
        "nothing",
        "-",
        "--",
        "—",
        "nope",
        "nil",
        "zero",
        "0",
        "no.",
        "none so far",
        "none this week",
        "no setbacks",
        "no setback",
        "nothing to report",
        "not really",
        "nothing really",
        "all good",
        "none!",
        "keine",
        "nein",
        "nichts",
        "aucun",
        "aucune",
        "rien",
        "non",
        "ninguno",
        "ninguna",
        "nada",
        "nenhum",
        "nenhuma",
        "nessuno",
        "niente",
        "geen",
        "nee",
        "niets",
        "inga",
        "ingen",
        "nej",
        "inget",
        "brak",
        "nie",
        "nic",
        "žádné",
        "ne",
        "нет",
        "ничего",
        "なし",
        "無し",
        "无",
        "没有",
        "없음",
        "없습니다",
    }
)

# Phrases admitting a setback. Some embed their own negation ("didn't get to"); the rest are
# cancelled by a negator shortly before them ("didn't miss", "nothing slipped", "no setbacks").
_EMBEDDED_NEG_RE = re.compile(
    r"\b(did ?n[o']?t|did not|could ?n[o']?t|could not|was ?n[o']?t able|wasn't able|were not able"
    r"|was not able|unable|failed) (to )?(get (to|around)|manage|finish|make it|complete|do|keep"
    r"|stick|hit|meet|go|work|find time)\b|\bno progress\b|\bnot (much|enough) progress\b"
    r"|\bhaven'?t (started|done|managed)\b|\bhave not (started|done|managed)\b"
    r"|\bnicht geschafft\b|\bpas réussi\b|\bno (pude|logré)\b|\bnon sono riuscit[oa]\b"
    r"|\bniet gelukt\b|\bnie udało\b|\bне (успел|успела|смог|смогла)\b",
    re.IGNORECASE,
)
_ADMIT_RE = re.compile(
    r"\b(fell|fallen|falling|fall|got|get|am|was|i'm|running|ran) behind\b|\bbehind schedule\b"
    r"|\bmiss(ed|ing)?\b|\bslip(ped|ping|s)?\b|\bfell off\b|\bfallen off\b|\bsetbacks?\b"
    r"|\bskipp(ed|ing)\b|\bskip\b|\bgave up\b|\bgiven up\b|\bstuck\b|\bblocked\b|\bblocker\b"
    r"|\bprocrastinat\w*|\bfailed\b|\bfailure\b|\bdropped the ball\b|\blost (track|momentum)\b"
    r"|\bfell short\b|\bbroke (my|the) streak\b|\boff track\b|\brelapse\w*"
    r"|\bverpasst\b|\brückschlag\w*|\braté\b|\bmanqué\b|\bretard\b|\bperdí\b|\batrasad[oa]\b"
    r"|\bretraso\b|\bin ritardo\b|\bachterstand\b|\bgemist\b|\bmissade\b|\bspóźni\w*"
    r"|\bopuściłe\w*|\bпропустил\w*|\bотстал\w*",
    re.IGNORECASE,
)
_NEGATOR_RE = re.compile(
    r"\b(no|not|never|nothing|none|without|zero|nor|nobody|neither|hardly)\b|n't\b|n['’]t\b"
    r"|\bdid ?nt\b|\bdont\b|\bkeine?\b|\bnicht\b|\bpas\b|\bsin\b|\bsem\b|\bgeen\b|\binga?\b|\bне\b",
    re.IGNORECASE,
)
_CLAUSE_SPLIT_RE = re.compile(
    r"[.;!?\n]+|,\s*|\s+but\s+|\s+however\s+|\s+although\s+", re.IGNORECASE
)


def _clause_admits(clause: str) -> bool:
    if _EMBEDDED_NEG_RE.search(clause):
        return True
    for m in _ADMIT_RE.finditer(clause):
        before = clause[max(0, m.start() - 40) : m.start()]
        words = before.split()[-4:]
        after = clause[m.end() : m.end() + 24].lower().split()[:2]
        if _NEGATOR_RE.search(" ".join(words)):
            continue
        if after and after[0] in ("nothing", "none", "nada", "nichts", "rien"):
            continue
        return True
    return False


def says_no_setback(value: str) -> bool:
    """Whether a Setback section's text says "none" (in any of its forms) and nothing after
    it admits one: a reader may show it as "no setback"."""
    try:
        return _is_no_value(value[:MAX_BODY_CHARS])
    except Exception:  # noqa: BLE001 - a reader's question must not break the mail
        return False


def _is_no_value(value: str) -> bool:
    """A Setback section that says "none" -- and nothing after it that admits one."""
    cleaned = fold_typography(value).strip().lower()
    cleaned = re.sub(r"^[-*•·+\s]{1,10}", "", cleaned)
    cleaned = cleaned.rstrip(".!").strip().strip("\"'").strip()
    if cleaned in _NO_SETBACK_VALUES or not cleaned:
        return True
    first, _, rest = cleaned.partition("\n")
    if first.strip().rstrip(".!,") in _NO_SETBACK_VALUES:
        # "none" on the first line; later lines (a paragraph the section swallowed) count only
        # if they admit a setback.
        return not (rest.strip() and _clause_admits_any(rest))
    if _NO_START_RE.match(cleaned):
        # "None so far, but I missed Friday": the first clause is the "none".
        clauses = [c for c in _CLAUSE_SPLIT_RE.split(cleaned) if c.strip()]
        return not any(_clause_admits(c) for c in clauses[1:])
    return False


_NO_START_RE = re.compile(r"^(none|no|nothing|nope|n/a|keine|aucun|nada|geen|inga|brak|нет)\b")


def _clause_admits_any(text: str) -> bool:
    return any(_clause_admits(c) for c in _CLAUSE_SPLIT_RE.split(text) if c.strip())


def detect_setback(text: str, sections: dict[str, str]) -> bool:
    """Setback per design 5: an explicit Setback section with content, else admitting free text."""
    try:
        value = sections.get("setback", "")
        if value.strip():
            return not _is_no_value(value)
        folded = fold_typography(text[:MAX_BODY_CHARS])
        # An explicit "Setbacks: none" label with an empty remainder also reads as no setback.
        if re.search(r"(?im)^\s*[-*•]?\s*(setbacks?|blockers?|problems?)\s*[:：]\s*$", folded):
            return False
        return _clause_admits_any(folded)
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# Whole messages
# ---------------------------------------------------------------------------------------------

# Forward prefixes of the common clients, by language (after any "Re:"-style prefixes):
# FW/Fwd (en), WG (de), TR (fr), RV (es), ENC (pt), I (it), Doorst (nl), VB (sv), VS (da/no),
# VL (fi), PD (pl), PŘ (cs), TOV (hu), İLT (tr), ΠΡΘ (el), Пересл (ru), 转发/轉寄 (zh),
# 転送 (ja), 전달 (ko), הועבר (he), "إعادة توجيه" (ar).
_FORWARD_SUBJECT_RE = re.compile(
    r"^\W{0,3}(?:(?:re|aw|sv|antw|r|rif|odp|vs|ynt|απ|ответ|答复|回复|返信|회신)\s{0,3}[:：]\s*)*"
    r"(?:fwd?|wg|tr|rv|enc|i|doorst|vb|vs|vl|pd|př|tov|i̇lt|ilt|πρθ|пересл|fw|转发|轉寄|転送|전달"
    r"|הועבר|إعادة توجيه|\[fwd)\s{0,3}[:：]",
    re.IGNORECASE,
)
_MSGID_RE = re.compile(r"<[^<>\s]{1,500}>")


def _msgid(value: str) -> str | None:
    value = "".join(value.split())
    if not value:
        return None
    m = _MSGID_RE.search(value)
    return m.group(0) if m else value[:500]


# "Ana Member <ana@example.com>" or "ana@example.com" with nothing the address parser could
# read differently (atoms only, single dots and spaces): its address without the parser.
_PLAIN_FROM_RE = re.compile(
    r"(?:[A-Za-z0-9]+(?: [A-Za-z0-9]+)* ?<([A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    r"|([A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*))"
)


def _from_address(value: str) -> str | None:
    plain = _PLAIN_FROM_RE.fullmatch(value)
    if plain:
        local, _, domain = (plain.group(1) or plain.group(2)).rpartition("@")
        return f"{local}@{domain.lower()}"
    try:
        pairs = getaddresses([value])
    except Exception:
        return None
    for _, addr in pairs:
        addr = addr.strip()
        if "@" in addr:
            local, _, domain = addr.rpartition("@")
            if local and domain and " " not in addr:
                return f"{local}@{domain.lower()}"
    return None


def _safe_header(msg: Message, name: str, heads: Headers) -> str:
    """Header ``name`` decoded (``heads`` from :func:`first_headers`), or ""."""
    try:
        found = heads.get(name.lower())
        if found is None:
            return ""
        key, raw = found
        if isinstance(raw, str) and _SURROGATE_RUN_RE.search(raw):
            # Raw 8-bit bytes in a header (compat32 would turn them into U+FFFD): decoded like
            # a body without a label, then any encoded words in it as usual.
            return _decode_header_value(_decode_bytes(raw.encode("utf-8", "surrogateescape"), None))
        value = msg.policy.header_fetch_parse(key, raw)  # = msg.get(name)
    except Exception:
        return ""
    return _decode_header_value(value) if value is not None else ""


def _fallback(raw: bytes, reason: str) -> ParsedMessage:
    text = extract_reply_text(_decode_bytes(raw[:MAX_BODY_CHARS], None))
    sections = find_sections(text)
    return ParsedMessage(
        kind="reply",
        text=text,
        setback=detect_setback(text, sections),
        sections=sections,
        detail=f"reply (unparsed: {reason})",
    )


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw RFC 5322 bytes. Never raises; malformed input still yields a sane answer."""
    try:
        if not isinstance(raw, bytes | bytearray | memoryview):
            raw = str(raw).encode("utf-8", "replace")
        raw = bytes(raw[:MAX_RAW_BYTES])
        msg = email.message_from_bytes(raw, policy=email_policy.compat32)
        heads = first_headers(msg)
        subject = _safe_header(msg, "Subject", heads)
        from_raw = _safe_header(msg, "From", heads)
        from_addr = _from_address(from_raw)
        message_id = _msgid(_safe_header(msg, "Message-ID", heads))
        in_reply_to = _msgid(_safe_header(msg, "In-Reply-To", heads))
        references = tuple(_MSGID_RE.findall(_safe_header(msg, "References", heads)))[:100]
        forward = bool(_FORWARD_SUBJECT_RE.match(subject))
        try:
            body = _body_text(msg, forward)
        except Exception:
            body = ""
        try:
            kind, detail, bounced = classify(msg, subject, from_addr, body, heads)
        except Exception:
            kind, detail, bounced = "reply", "reply", ()
        text = extract_reply_text(body, forward=forward)
        sections = find_sections(text)
        setback = detect_setback(text, sections) if kind == "reply" else None
        return ParsedMessage(
            kind=kind,
            text=text,
            setback=setback,
            sections=sections,
            detail=detail,
            message_id=message_id,
            in_reply_to=in_reply_to,
            references=references,
            from_address=from_addr,
            subject=subject,
            bounced_recipients=bounced,
            body=body,
        )
    except Exception as exc:  # last line of defence: the listener must always get an answer
        try:
            return _fallback(bytes(raw[:MAX_BODY_CHARS]), type(exc).__name__)
        except Exception:
            return ParsedMessage(
                kind="reply",
                text="",
                setback=False,
                sections=dict.fromkeys(SECTION_KEYS, ""),
                detail="reply (unparsed)",
            )
