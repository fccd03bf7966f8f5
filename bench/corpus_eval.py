"""Shared scoring of reply parsers against ../shared/corpus/MANIFEST.json.

Used by tests/test_corpus.py (our parser) and bench/peers.py (our parser beside the public
peers, which run in a throwaway venv). Stdlib only, plus BeautifulSoup when an expectation is
given as HTML, so the same file runs in either interpreter.

How each manifest entry is scored (one pass/fail per entry, grouped by corpus set):

* ``expected_visible_text`` / ``expected_reply_text``: the produced new text must equal it
  after ``strip()`` and trailing whitespace removed from each line; when ``comparison`` says
  whitespace is removed, all whitespace is removed from both sides first.
* HTML expectations without a text form (``expected_html``, ``expected_html_whitespace_removed``):
  the visible text of that HTML, compared with all whitespace removed.
* ``expected_before`` (trimmer's ``extract_embedded_email``): the text before the embedded mail
  is the new text, compared like an exact text expectation.
* mail-parser-reply entries without ``expected_reply_text``: the transcribed assertions on
  ``replies[0].body`` (strings that must / must not be in it) when there are any, otherwise the
  library's own ``reference_output_reply_text`` compared with all whitespace collapsed.
* github / zapier entries with only fragment-level assertions: ``reference_output_visible_text``
  (the upstream implementation's own output) with whitespace collapsed.
  Entries scored against a ``reference_output_*`` are reported in a separate ``<set> [ref]``
  row: they measure agreement with that library's behaviour (bugs included), not a test.
* the ``completes within 5 s`` assertion: parsing the file must finish in time.
* talon's "passed whole as text" case: the assertions (non-empty, no ``From``).
* ``expected_classification`` (sisimai, flanker): mapped onto our kinds -- ``bounce`` ->
  ``bounce``; ``delay_notification`` -> ``auto_reply``/``dsn-delayed``;
  ``delivery_status_success`` -> ``auto_reply``/``dsn-delivered``; ``feedback_report`` ->
  ``auto_reply``/``abuse-report``; ``read_receipt_mdn`` -> ``auto_reply``/``read-receipt``;
  ``auto_reply`` -> ``auto_reply``; ``not_bounce`` -> anything but ``bounce``. The reply parsers
  among the peers do not classify, so they have no score on those sets.
"""

from __future__ import annotations

import email
import json
import re
from email import policy
from pathlib import Path
from typing import Any

SET_NAMES = {
    "github/email_reply_parser": "github",
    "zapier/email-reply-parser": "zapier",
    "alfonsrv/mail-parser-reply": "mail-parser-reply",
    "discourse/email_reply_trimmer": "email_reply_trimmer",
    "mailgun/talon": "talon",
    "mailgun/flanker": "flanker (kinds)",
    "sisimai/rb-sisimai": "sisimai (kinds)",
}

# What a runner returns for an entry that must finish within 5 s and did not.
TIMEOUT = "<timeout>"

CLASS_MAP = {
    "bounce": ("bounce", None),
    "delay_notification": ("auto_reply", "dsn-delayed"),
    "delivery_status_success": ("auto_reply", "dsn-delivered"),
    "feedback_report": ("auto_reply", "abuse-report"),
    "read_receipt_mdn": ("auto_reply", "read-receipt"),
    "auto_reply": ("auto_reply", None),
}


def corpus_dir_default() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "corpus"


def load_entries(corpus: Path) -> list[dict[str, Any]]:
    return json.loads((corpus / "MANIFEST.json").read_text(encoding="utf-8"))


def uses_reference(entry: dict[str, Any]) -> bool:
    """True when the only usable expectation is the upstream library's own output."""
    if "expected_classification" in entry or "expected_before" in entry:
        return False
    keys = ("expected_visible_text", "expected_reply_text", "expected_html")
    if any(k in entry for k in keys) or "expected_html_whitespace_removed" in entry:
        return False
    if _assertion_checks(entry) or "completes within" in " ".join(entry.get("assertions", [])):
        return False
    if "passed whole" in entry.get("input_kind", ""):
        return False
    return any(k.startswith("reference_output_") for k in entry)


def set_name(entry: dict[str, Any]) -> str:
    """Corpus set of an entry; entries scored against a library's own output get "[ref]"."""
    base = SET_NAMES.get(entry["source_repo"], entry["source_repo"])
    return base + " [ref]" if uses_reference(entry) else base


def first_plain_text(raw: bytes) -> str:
    """Decoded first text/plain part, as talon's own tests feed extract_from_plain."""
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            data = part.get_payload(decode=True) or b""
            charset = part.get_content_charset() or "utf-8"
            try:
                return data.decode(charset, "replace")
            except LookupError:
                return data.decode("utf-8", "replace")
    return ""


def task(entry: dict[str, Any], corpus: Path) -> dict[str, Any]:
    """What to run for an entry: mode + input (text/html/raw bytes as latin-1 string)."""
    path = corpus / entry["file"]
    kind = entry.get("input_kind", "")
    api = entry.get("api", "")
    if "expected_classification" in entry:
        return {"mode": "classify", "raw": path.read_bytes()}
    if "completes within" in " ".join(entry.get("assertions", [])):
        return {"mode": "timing", "text": path.read_text(encoding="utf-8", errors="replace")}
    if kind.startswith("raw RFC 5322") and "passed whole" in kind:
        return {"mode": "text", "text": path.read_text(encoding="utf-8", errors="replace")}
    if kind.startswith("raw RFC 5322"):
        return {"mode": "eml", "raw": path.read_bytes()}
    if kind.startswith("text/html"):
        return {"mode": "html", "html": path.read_text(encoding="utf-8", errors="replace")}
    return {
        "mode": "text",
        "text": path.read_text(encoding="utf-8", errors="replace"),
        "signature_api": "extract_signature" in api,
        "languages": entry.get("languages"),
    }


def _norm_exact(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _norm_nows(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _norm_collapse(text: str) -> str:
    return " ".join(text.split())


def _visible_text(html: str) -> str:
    from bs4 import BeautifulSoup

    return BeautifulSoup(html, "html.parser").get_text()


_IN_BODY_RE = re.compile(r'^"(.*)" in replies\[0\]\.body$')
_NOT_IN_BODY_RE = re.compile(r'^"(.*)" in replies\[0\]\.(signatures|content).*not in body')


def _assertion_checks(entry: dict[str, Any]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    for a in entry.get("assertions", []):
        m = _IN_BODY_RE.match(a)
        if m:
            checks.append((json.loads(f'"{m.group(1)}"'), True))
            continue
        m = _NOT_IN_BODY_RE.match(a)
        if m:
            checks.append((json.loads(f'"{m.group(1)}"'), False))
    return checks


def score(entry: dict[str, Any], output: Any) -> bool | None:
    """True/False for pass/fail; None when the system cannot answer this kind of entry."""
    if output is None:
        return None
    if "expected_classification" in entry:
        if not isinstance(output, dict):
            return None
        want = entry["expected_classification"]
        if want == "not_bounce":
            return output.get("kind") != "bounce"
        kind, detail = CLASS_MAP.get(want, ("?", None))
        return output.get("kind") == kind and (detail is None or output.get("detail") == detail)
    if not isinstance(output, str):
        return None
    assertions = " ".join(entry.get("assertions", []))
    if "completes within" in assertions:
        return output != TIMEOUT
    if "passed whole" in entry.get("input_kind", ""):
        return bool(output.strip()) and "From" not in output
    comparison = (entry.get("comparison") or "").lower()
    if "expected_before" in entry:
        return _norm_exact(output) == _norm_exact(entry["expected_before"])
    for key in ("expected_visible_text", "expected_reply_text"):
        if key in entry:
            if "whitespace removed" in comparison or "all whitespace" in comparison:
                return _norm_nows(output) == _norm_nows(entry[key])
            return _norm_exact(output) == _norm_exact(entry[key])
    if "expected_html" in entry:
        return _norm_nows(output) == _norm_nows(_visible_text(entry["expected_html"]))
    if "expected_html_whitespace_removed" in entry:
        return _norm_nows(output) == _norm_nows(
            _visible_text(entry["expected_html_whitespace_removed"])
        )
    checks = _assertion_checks(entry)
    if checks:
        return all((s in output) == want for s, want in checks)
    for key in ("reference_output_visible_text", "reference_output_reply_text"):
        if key in entry:
            return _norm_collapse(output) == _norm_collapse(entry[key])
    return None


def summarise(results: dict[str, list[bool | None]]) -> dict[str, tuple[int, int]]:
    """Per set: (passed, scored) ignoring None."""
    out: dict[str, tuple[int, int]] = {}
    for name, values in results.items():
        scored = [v for v in values if v is not None]
        out[name] = (sum(1 for v in scored if v), len(scored))
    return out


def run_ours(t: dict[str, Any]) -> Any:
    """Our parser on one task (imported lazily so peers' venvs never need mailflow)."""
    from mailflow.parse import extract_reply_text, html_to_text, parse_message

    mode = t["mode"]
    if mode == "classify":
        parsed = parse_message(t["raw"])
        return {"kind": parsed.kind, "detail": parsed.detail}
    if mode == "eml":
        return parse_message(t["raw"]).text
    if mode == "html":
        return extract_reply_text(html_to_text(t["html"]))
    return extract_reply_text(t["text"])
