"""Every page of the admin site is usable: axe-core finds nothing serious, a keyboard alone gets
through an action, and a 375 px phone needs no sideways scrolling.

axe-core comes from PyPI inside `axe-playwright-python` (its bundled `axe.min.js`), installed
with the test extra: nothing is downloaded while the tests run. It is injected into each page
of a demo program (tests/webdemo.py: six weeks of real ticks and replies) and run with its
defaults (WCAG 2 A/AA and best practices); a serious or critical violation fails the test.
The mail previews inside sandboxed frames are sample mail, not the site: they are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect
from webdemo import build
from webtools import SECRET_REPORT, AdminSite, Client, browser_sign_in, needs_chromium

# Generous: these drive a real browser on a machine shared with other work; and one worker
# runs them, apart from test_crash's 25 restarts of serve ("heavy": `--dist loadgroup`).
pytestmark = [needs_chromium, pytest.mark.timeout(300), pytest.mark.xdist_group("heavy")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AdminSite, dict[str, str]]]:
    site = AdminSite(tmp_path_factory.mktemp("demo"))
    try:
        ids = build(site)
        yield site, ids
    finally:
        site.stop()


def pages(ids: dict[str, str], qid: str) -> list[str]:
    return [
        "/",
        "/partnerships",
        "/partnerships?status=paused",
        f"/partnerships/{ids['sql']}",
        f"/partnerships/{ids['sql']}/pause",
        f"/partnerships/{ids['budgeting']}/consent-accepted",
        "/people",
        "/templates",
        "/templates/checkin",
        "/templates/digest",
        "/templates/checkin/versions",
        "/quarantine",
        f"/quarantine/{qid}",
        f"/quarantine/{qid}/release",
        "/audit",
        "/static/help.html",
    ]


def first_quarantined(site: AdminSite) -> str:
    return site.app.spool.quarantined()[0][0]


def axe(page: Any) -> list[dict[str, Any]]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(
        page, context={"exclude": [["iframe.mailhtml"]]}, options={"iframes": False}
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_axe_finds_no_serious_or_critical_violation_on_any_page(
    page: Any, demo: tuple[AdminSite, dict[str, str]]
) -> None:
    site, ids = demo
    page.goto(site.url + "/signin")
    assert axe(page) == [], "/signin"
    browser_sign_in(page, site, by_mail=False)
    # One template saved, so the versions page has versions and a diff to look at.
    page.goto(site.url + "/templates/checkin")
    subject = page.get_by_label("Subject")
    subject.fill("Week check-in: {{ partnership.skill }}")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status").first).to_contain_text("Saved")
    found = {}
    for path in pages(ids, first_quarantined(site)):
        page.goto(site.url + path)
        problems = axe(page)
        if problems:
            found[path] = problems
    # The editor with problems showing, after live typing.
    page.goto(site.url + "/templates/checkin")
    page.get_by_label("Text").fill("{{ nope }\n")
    expect(page.locator("#problems .error")).to_be_visible()
    if problems := axe(page):
        found["/templates/checkin (with problems)"] = problems
    assert found == {}, json.dumps(found, indent=1)


def test_pages_read_at_375_px_without_sideways_scrolling(
    browser: Any, demo: tuple[AdminSite, dict[str, str]]
) -> None:
    site, ids = demo
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        browser_sign_in(page, site, by_mail=False)
        for path in pages(ids, first_quarantined(site)):
            page.goto(site.url + path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"{path} is {width} px wide at 375"
            # Body text stays at a readable size (no zoomed-out desktop layout).
            size = page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
            assert size >= 16, path
    finally:
        context.close()


def test_a_keyboard_alone_signs_in_finds_a_partnership_and_pauses_it(
    page: Any, demo: tuple[AdminSite, dict[str, str]]
) -> None:
    site, ids = demo
    count = len(site.mails(kind="signin")) + 1
    page.goto(site.url + "/signin")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    tab_to(page, "", field="email")
    page.keyboard.type("admin@example.com")
    page.keyboard.press("Enter")
    expect(page.get_by_text("a sign-in link is on its way")).to_be_visible()
    page.goto(site.signin_link(count=count))
    focus_on(page, "Sign in")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    # Skip link first, and it moves focus to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.goto(site.url + "/")
    tab_to(page, "Partnerships")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Partnerships")).to_be_visible()
    tab_to(page, f"Partnership {ids['speaking']}")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="public speaking")).to_be_visible()
    tab_to(page, "Pause…")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Pause?")).to_be_visible()
    tab_to(page, "Yes, pause")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("paused")
    # Focus is always visible: the outline is drawn for keyboard focus.
    tab_to(page, "Resume…")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"


def tab_to(page: Any, name: str, limit: int = 80, field: str | None = None) -> None:
    """Press Tab until the focused element's text is `name` (or its id `field`); bounded."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if field is not None:
            if page.evaluate("document.activeElement.id") == field:
                return
            continue
        label = page.evaluate(
            "(document.activeElement.getAttribute('aria-label') || "
            "document.activeElement.textContent || '').trim()"
        )
        if label == name:
            return
    raise AssertionError(f"{name!r} not reached with {limit} Tabs")


def focus_on(page: Any, name: str) -> None:
    page.goto(page.url)
    tab_to(page, name)


def test_no_page_shows_what_a_member_wrote(demo: tuple[AdminSite, dict[str, str]]) -> None:
    """Confidentiality: reports stay between member and partner; only states and counts."""
    site, ids = demo
    shown = json.loads(site.cli("partnerships", "show", ids["sql"], "--json"))
    assert any(SECRET_REPORT in r["text"] for r in shown["reports"])  # it is stored...
    client = Client(site)
    client.sign_in(by_mail=False)
    qid = first_quarantined(site)
    paths = pages(ids, qid) + [f"/partnerships?q={ids['sql']}", "/people?q=ada", "/audit"]
    for path in paths:
        reply = client.get(path)
        assert reply.status == 200, path
        assert SECRET_REPORT not in reply.body, path  # ...and no page shows it
        assert "the joins exercise" not in reply.body, path  # nor an older report
