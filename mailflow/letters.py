"""What each outgoing mail says: the templates the sender uses.

The letter builders of the next steps live here; for now the list of template names, which
`templates preview NAME` accepts and `templates check` renders.
"""

from __future__ import annotations

from mailflow.errors import TemplateError

TEMPLATE_NAMES: tuple[str, ...] = (
    "checkin",
    "reminder",
    "digest",
    "no_report",
    "bounce_notice",
    "intro",
    "checkin_ack",
    "receipt",
    "pause_notice",
    "partner_note",
    "summary",
    "consent_notice",
)
"""The templates the sender uses; ``templates preview NAME`` accepts exactly these."""


def require_template(name: str) -> None:
    """TemplateError naming the valid names unless `name` is one of TEMPLATE_NAMES."""
    if name not in TEMPLATE_NAMES:
        raise TemplateError(f"unknown template {name!r}; valid names: {', '.join(TEMPLATE_NAMES)}")
