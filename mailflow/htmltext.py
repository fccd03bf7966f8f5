"""HTML mail body to plain text, with the quoted history containers of common clients removed.

Used by :mod:`mailflow.parse` for HTML-only replies. BeautifulSoup (stdlib ``html.parser``
backend) does the parsing; this module only decides which subtrees are history and how block
elements map to line breaks. Output never contains markup, image or link URLs, nor script/style
text. Pure: no I/O, no global state.
"""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, Comment, Declaration, Doctype, NavigableString, Tag
from bs4.element import CData, ProcessingInstruction

# HTML beyond this is almost certainly not hand-written reply text; capping keeps parsing
# time bounded for hostile input.
MAX_HTML_CHARS = 1 << 20

# A horizontal rule is rendered as an Outlook-style underscore rule so the plain-text splitter
# can recognise "rule + From:/Sent: header block" uniformly for HTML and text mail.
HR_LINE = "_" * 32

_DROP_TAGS = frozenset(
    {
        "script",
        "style",
        "head",
        "title",
        "meta",
        "link",
        "img",
        "svg",
        "object",
        "embed",
        "iframe",
        "noscript",
        "template",
        "video",
        "audio",
        "canvas",
        "map",
        "button",
        "input",
        "select",
        "textarea",
    }
)

_BLOCK_TAGS = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "main",
        "aside",
        "nav",
        "blockquote",
        "pre",
        "ul",
        "ol",
        "li",
        "dl",
        "dt",
        "dd",
        "table",
        "thead",
        "tbody",
        "tfoot",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "address",
        "center",
        "form",
        "fieldset",
        "figure",
        "figcaption",
        "body",
        "html",
    }
)

# Containers whose whole subtree is quoted history.
_QUOTE_CLASSES = frozenset(
    {
        "gmail_quote",
        "gmail_quote_container",
        "yahoo_quoted",
        "ydp_quoted",
        "protonmail_quote",
        "zmail_extra",
        "moz-cite-prefix",
        "moz-forward-container",
        "applemail-quote",
        "outlook_quote",
        "x_gmail_quote",
        "mailru-quote",
        "blockquote-quoted",
    }
)
# Elements (by id) that start the history: they and everything after them in document order
# are the quoted message (Outlook desktop/web/mobile, Zimbra, Outlook for Mac).
_HISTORY_START_IDS = frozenset(
    {
        "divrplyfwdmsg",
        "x_divrplyfwdmsg",
        "appendonsend",
        "x_appendonsend",
        "zwchr",
        "olk_src_body_section",
        "mail-editor-reference-message-container",
        "x_mail-editor-reference-message-container",
        "ms-outlook-mobile-reference-message",
    }
)

_WS_RE = re.compile(r"[ \t\r\n\f\v\u00a0\u200b]+")
_BLANKS_RE = re.compile(r"\n{3,}")


def _classes(tag: Tag) -> list[str]:
    value = tag.get("class")
    if isinstance(value, str):
        return value.lower().split()
    if isinstance(value, list):
        return [str(v).lower() for v in value]
    return []


def _attr(tag: Tag, name: str) -> str:
    value = tag.get(name)
    if isinstance(value, list):
        return " ".join(str(v) for v in value).lower()
    return str(value).lower() if value is not None else ""


def _is_quote_container(tag: Tag) -> bool:
    if tag.name == "blockquote":
        if _attr(tag, "type") == "cite":
            return True
        if "gmail_quote" in _classes(tag) or "yahoo_quoted" in _classes(tag):
            return True
    classes = _classes(tag)
    return any(c in _QUOTE_CLASSES or c.endswith("yahoo_quoted") for c in classes)


def _has_text_before(tag: Tag) -> bool:
    for el in tag.previous_elements:
        if isinstance(el, NavigableString) and not isinstance(el, Comment) and el.strip():
            parent = el.parent
            if parent is None or parent.name not in _DROP_TAGS:
                return True
    return False


def _is_forward(tag: Tag) -> bool:
    """Gmail wraps a forwarded message in gmail_quote too; that is content, not history."""
    text = tag.get_text(" ", strip=True)[:200].lower()
    return "forwarded message" in text[:80]


def _is_history_start(tag: Tag) -> bool:
    if _attr(tag, "id") in _HISTORY_START_IDS:
        return True
    # Outlook desktop puts the quoted header block in a div whose top border is the rule.
    style = _attr(tag, "style").replace(" ", "")
    return (
        tag.name == "div"
        and "border-top:solid" in style
        and ("#e1e1e1" in style or "#b5c4df" in style)
    )


# Set on a quote the member answered below or between (see ``quotes_as_text``).
_QUOTED_ATTR = "data-mailflow-quoted"


def _has_text_after(tag: Tag) -> bool:
    """Visible text follows ``tag`` in document order (outside it).

    Bounded for hostile nesting: past 40 levels up the answer is "no" (the quote is removed,
    as before quotes_as_text existed).
    """
    node: Tag | None = tag
    steps = 0
    levels = 0
    while node is not None and node.name not in ("body", "html", "[document]"):
        levels += 1
        if levels > 40:
            return False
        for sib in node.next_siblings:
            steps += 1
            if steps > 500:
                return True
            if isinstance(sib, Comment):
                continue
            if isinstance(sib, NavigableString):
                if sib.strip():
                    return True
            elif isinstance(sib, Tag) and sib.name not in _DROP_TAGS and sib.get_text().strip():
                return True
        parent = node.parent
        node = parent if isinstance(parent, Tag) else None
    return False


def _remove_history(
    soup: BeautifulSoup, quotes_as_text: bool = False, keep_history: bool = False
) -> None:
    # extract(), not decompose(): extracting a node already detached with its ancestor is
    # harmless, and it avoids probing attributes that bs4 would turn into subtree searches.
    for tag in list(soup.find_all(True)):
        if _is_quote_container(tag) and not _is_forward(tag):
            if quotes_as_text and tag.name == "blockquote" and _has_text_after(tag):
                # The member wrote below or between the quoted lines: keep the quote as "> "
                # lines so the text passes see the questions her answers are under.
                tag[_QUOTED_ATTR] = "1"
            elif quotes_as_text and tag.name != "blockquote" and tag.find("blockquote"):
                continue  # a wrapper (gmail_quote div): its blockquotes decide for themselves
            else:
                tag.extract()
    # An untyped <blockquote> after the reply's own text is a quote too (Outlook, web mail);
    # one holding everything is kept, or nothing would be left.
    for tag in list(soup.find_all("blockquote", limit=50)):
        if not tag.get(_QUOTED_ATTR) and _has_text_before(tag):
            tag.extract()
    if keep_history:
        return
    start = None
    for tag in soup.find_all(True):
        if _is_history_start(tag):
            start = tag
            break
    if start is None:
        return
    # Remove the start element and everything that follows it in document order, climbing up
    # so siblings of ancestors (the quoted body after the header block) go too.
    node: Tag | None = start
    while node is not None and node.name not in ("body", "html", "[document]"):
        for sib in list(node.find_next_siblings()):
            sib.extract()
        parent = node.parent
        if node is start:
            prev = node.find_previous_sibling()
            node.extract()
            # OWA puts an <hr> right before divRplyFwdMsg; it belongs to the history.
            if isinstance(prev, Tag) and prev.name == "hr":
                prev.extract()
        node = parent if isinstance(parent, Tag) else None


_PARAGRAPH_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "pre"})


def _break(out: list[str], count: int) -> None:
    """End the current line; ``count`` 2 leaves a blank line (paragraph), 1 a line break."""
    trailing = 0
    # Only the last few chunks: a long run of whitespace-only chunks (thousands of empty
    # <div> </div>) made this scan, and so the conversion, quadratic.
    for chunk in out[-1:-33:-1]:
        stripped = chunk.rstrip(" ")
        if not stripped:
            continue
        trailing += len(stripped) - len(stripped.rstrip("\n"))
        if stripped.strip("\n"):
            break
        if trailing >= count:
            break
    if not out:
        return
    out.append("\n" * max(0, count - trailing))


def _render(node: Tag, out: list[str], pre: bool) -> None:
    for child in node.children:
        if isinstance(child, Comment | Declaration | Doctype | CData | ProcessingInstruction):
            continue
        if isinstance(child, NavigableString):
            text = str(child)
            if not pre:
                text = _WS_RE.sub(" ", text)
            out.append(text)
            continue
        if not isinstance(child, Tag):
            continue
        name = child.name
        if name in _DROP_TAGS:
            continue
        if name == "br":
            out.append("\n")
            continue
        if name == "hr":
            out.append("\n" + HR_LINE + "\n")
            continue
        if child.get(_QUOTED_ATTR):
            inner: list[str] = []
            _render(child, inner, pre)
            quoted = [line.strip(" \t\u00a0") for line in "".join(inner).strip("\n").split("\n")]
            _break(out, 1)
            out.append("\n".join(f"> {line}" if line else ">" for line in quoted) + "\n")
            continue
        is_block = name in _BLOCK_TAGS
        gap = 2 if name in _PARAGRAPH_TAGS else 1
        if is_block:
            _break(out, gap)
        if name == "li":
            out.append("- ")
        if name in ("td", "th"):
            out.append(" ")
        _render(child, out, pre or name == "pre")
        if is_block:
            _break(out, gap)


def html_to_text(html: str, quotes_as_text: bool = False, keep_history: bool = False) -> str:
    """Visible text of an HTML body with quoted-history containers removed first.

    Block elements become line breaks, ``<br>`` a newline, ``<hr>`` an underscore rule,
    list items a ``- `` bullet. Link targets, image sources, scripts and styles are dropped.

    ``quotes_as_text``: a quote (``blockquote type=cite``, gmail_quote, ...) that the member
    wrote below or between is kept as ``> `` lines instead of removed, so the plain-text
    passes keep her answers with the quoted questions as their labels (the parser's choice;
    the plain helper keeps the old contract). ``keep_history``: the Outlook header block and
    what follows it stay (a forward: the forwarded message is content).
    """
    try:
        soup = BeautifulSoup(html[:MAX_HTML_CHARS], "html.parser")
        _remove_history(soup, quotes_as_text, keep_history)
        out: list[str] = []
        _render(soup, out, False)
        text = "".join(out)
    except Exception:
        # html.parser is lenient, but recursion depth on deeply nested junk can still fail;
        # fall back to stripping anything tag-like rather than giving up on the body.
        text = re.sub(r"<[^<>]{0,2000}>", " ", html[:MAX_HTML_CHARS])
    lines = [line.strip(" \t\u00a0") for line in text.replace("\r", "\n").split("\n")]
    text = "\n".join(lines)
    return _BLANKS_RE.sub("\n\n", text).strip()
