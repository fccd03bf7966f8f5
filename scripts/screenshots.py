"""Regenerate docs/screenshots/*.png: every page of the admin site, on a demo program.

    .venv/bin/python scripts/screenshots.py

Builds the demo program of the accessibility tests (tests/webdemo.py: six weeks of real ticks
and replies in simulated time) in a scratch directory, starts the site as `serve` does, signs
in with a `mailflow web link` link, and photographs each page in Debian's Chromium at 1280 px
and a few at 375 px (a phone). Needs /usr/bin/chromium (`apt-get install chromium`).

The program runs with `self_service = "approval"`, and one member asks for a partner by email
(`partner for sql`, then `ask 1` with the agreement block in reply to the suggestions), so
the partnership page of that ask shows its Approve button (issue 15).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from playwright.sync_api import sync_playwright  # noqa: E402
from webdemo import build  # noqa: E402
from webtools import (  # noqa: E402
    ADMIN,
    MONDAY,  # noqa: E402
    AdminSite,
    launch_browser,
)

OUT = ROOT / "docs" / "screenshots"


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="mailflow-shots-"))
    site = AdminSite(scratch, extra='[program]\nself_service = "approval"\n')
    try:
        ids = build(site)
        ids["asked"] = ask_by_email(site)
        from mailflow.webadmin import WebAdmin

        adapter = WebAdmin(site.app)
        source = adapter.template_source("checkin")
        edited = dict(source)
        edited["txt"] = source["txt"].replace("{{ member.name }}", "{{ member.name }}", 1)
        edited["subject"] = "Week {{ period_label }}: your {{ partnership.skill }} check-in\n"
        adapter.template_save("checkin", edited, site.now, ADMIN)
        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = launch_browser(pw)
            wide = browser.new_context(viewport={"width": 1280, "height": 900})
            page = wide.new_page()
            shot(page, site.url + "/signin", "signin")
            page.goto(site.cli("web", "link", ADMIN).strip())
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Dashboard").wait_for()
            page.get_by_text("The numbers, week by week").click()
            shot(page, None, "dashboard")
            shot(page, site.url + "/partnerships", "partnerships")
            shot(page, site.url + f"/partnerships/{ids['sql']}", "partnership")
            shot(page, site.url + f"/partnerships/{ids['sql']}/pause", "confirm-pause")
            shot(page, site.url + f"/partnerships/{ids['asked']}", "partnership-approval")
            shot(page, site.url + "/people", "people")
            shot(page, site.url + "/templates", "templates")
            page.goto(site.url + "/templates/checkin")
            area = page.get_by_label("Text")
            area.fill(area.input_value().replace("{{ member.name }}", "{{ member.nmae }}", 1))
            page.locator("#problems .error").wait_for()
            shot(page, None, "template-editor-error")
            shot(page, site.url + "/templates/checkin", "template-editor")
            shot(page, site.url + "/templates/checkin/versions", "template-versions")
            shot(page, site.url + "/quarantine", "quarantine")
            page.goto(site.url + "/quarantine")
            page.locator("table.rows a").first.click()
            shot(page, None, "quarantined-message")
            shot(page, site.url + "/audit", "audit")
            phone = browser.new_context(
                viewport={"width": 375, "height": 812}, device_scale_factor=2, is_mobile=True
            )
            phone.add_cookies(wide.cookies())
            small = phone.new_page()
            for path, name in (
                ("/", "phone-dashboard"),
                ("/partnerships", "phone-partnerships"),
                (f"/partnerships/{ids['sql']}", "phone-partnership"),
                ("/templates/checkin", "phone-template-editor"),
            ):
                shot(small, site.url + path, name)
            browser.close()
    finally:
        site.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {len(list(OUT.glob('*.png')))} screenshots to {OUT}")
    return 0


def ask_by_email(site: AdminSite) -> str:
    """Tim asks for an SQL partner by email, as a member does: the program's suggestions,
    then `ask 1` with the agreement block in reply. Under approval it waits for the admin."""
    program = "hotteam@" + site.app.config.service.domain
    site.spool_reply("tim@example.com", program, "partner for sql", "<tim-find@example.com>")
    site.app.tick(site.now)
    [suggestions] = [m for m in site.mails(to="tim@example.com") if "sql" in str(m["Subject"])]
    block = (
        "ask 1\n"
        f"Goal: {(MONDAY + timedelta(days=60)).date()} Write the support dashboard queries\n"
        "Why: I want to answer customers with numbers\n"
        "Saddle: Remind me that the first query is the hardest\n"
    )
    site.spool_reply(
        "tim@example.com", str(suggestions["Reply-To"]), block, "<tim-ask@example.com>"
    )
    site.app.tick(site.now)
    waiting = site.status()["awaiting_approval"]
    assert len(waiting) == 1, waiting
    return str(waiting[0])


def shot(page: object, url: str | None, name: str) -> None:
    if url is not None:
        page.goto(url)  # type: ignore[attr-defined]
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
