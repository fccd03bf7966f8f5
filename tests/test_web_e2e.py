"""The admin site as an admin uses it: Debian's Chromium (headless) against a real site.

Each test starts the site on a free loopback port over real TinyDB files under tmp_path and the
real outbox (the sign-in link is read from the mail there), signs in by that link, and clicks
through: the dashboard against `status --json`, a template edited into an error and back,
saved, rolled back and used by the next check-in of a running `serve`, a partnership paused,
a quarantined reply released. Every wait is bounded (Playwright's 15 s default, or less).
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from playwright.sync_api import expect
from webtools import ADMIN, MONDAY, AdminSite, admin_site, browser_sign_in, needs_chromium, text_of

from mailflow.app import serve
from mailflow.compose import SHIPPED_DIR

# Generous: these drive a real browser on a machine shared with other work; and one worker
# runs them, apart from test_crash's 25 restarts of serve ("heavy": `--dist loadgroup`).
pytestmark = [needs_chromium, pytest.mark.timeout(300), pytest.mark.xdist_group("heavy")]


def dashboard_numbers(page: Any) -> dict[str, int]:
    return {
        cell.get_attribute("data-status"): int(cell.inner_text())
        for cell in page.locator("[data-status]").all()
    }


def assert_dashboard_equals_status(page: Any, site: AdminSite) -> dict[str, int]:
    page.goto(site.url + "/")
    shown = dashboard_numbers(page)
    status = site.status()
    expected = {
        "active": status["partnerships"] - status["paused"],
        "paused": status["paused"],
        **{k: status[k] for k in ("sent", "replied", "setbacks", "waiting", "missing")},
        **{k: len(status[k]) for k in ("consent_pending", "consent_declined", "consent_overdue")},
        "bouncing": len(status["bouncing"]),
        **{k: status[k] for k in ("quarantined", "spooled", "outgoing_queued", "outgoing_failed")},
    }
    assert {k: shown[k] for k in expected} == expected
    return shown


def test_sign_in_by_link_and_the_dashboard_equals_status(page: Any, tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        site.world()
        site.now = MONDAY + timedelta(hours=1)
        site.app.tick(site.now)  # the week's check-in goes out
        page.goto(site.url + "/partnerships")
        expect(page).to_have_url(re.compile(r"/signin\?next=%2Fpartnerships$"))
        browser_sign_in(page, site)
        expect(page.get_by_role("status")).to_contain_text("Signed in as admin@example.com")
        shown = assert_dashboard_equals_status(page, site)
        assert shown["sent"] == 1 and shown["waiting"] == 1 and shown["active"] == 1
        svg = page.locator("figure.chart svg")
        expect(svg).to_have_attribute("role", "img")
        assert svg.locator("circle.reply").count() == 1  # one week with check-ins so far
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(r"/signin$"))
        page.goto(site.url + "/")
        expect(page).to_have_url(re.compile(r"/signin\?next=%2F$"))


def test_a_template_edited_into_an_error_fixed_previewed_saved_and_rolled_back(
    page: Any, tmp_path: Path
) -> None:
    with admin_site(tmp_path) as site:
        browser_sign_in(page, site)
        page.get_by_role("link", name="Templates").click()
        page.get_by_role("link", name="checkin", exact=True).click()
        text = page.get_by_label("Text")
        html = page.get_by_label("HTML")
        shipped = text.input_value()
        assert shipped == (SHIPPED_DIR / "checkin.txt.j2").read_text()
        assert shipped.splitlines()[2] == "Hi {{ member.name }},"

        # Into an error: the problem shows with its file and line, as `templates check` has it.
        text.fill(shipped.replace("Hi {{ member.name }},", "Hi {{ member.nmae }},"))
        problem = page.locator("#problems code.problem")
        expect(problem).to_have_count(1)
        target = site.data / "templates" / "checkin.txt.j2"
        expect(problem).to_have_text(f"{target}:3: 'dict object' has no attribute 'nmae'")
        page.get_by_role("button", name="Go to Text, line 3").click()
        assert page.evaluate("document.activeElement.id") == "part-txt"
        # Saving is refused while it fails; nothing is written.
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".notice")).to_contain_text("Not saved")
        assert not target.exists()
        # The same file on disk is what `mailflow templates check` reports, word for word.
        target.write_text(shipped.replace("Hi {{ member.name }},", "Hi {{ member.nmae }},"))
        err = site.cli_error("templates", "check")
        assert problem.inner_text() in err.splitlines()
        target.unlink()

        # Fixed: the problem goes away and both previews follow the typing.
        page.get_by_label("Text").fill(shipped.replace("Hi {{", "Hello there, {{"))
        expect(page.locator("#problems .ok")).to_be_visible()
        expect(page.locator("pre.mailtext").first).to_contain_text("Hello there, Zoë Adler,")
        html.fill(html.input_value().replace(">Hi {{", ">Hello there, {{"))
        frame = page.frame_locator("iframe.mailhtml").first
        expect(frame.get_by_text("Hello there, Zoë Adler,")).to_be_visible()

        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status").first).to_contain_text("Saved checkin.")
        assert "Hello there, {{ member.name }}," in target.read_text()
        assert site.cli("templates", "check").strip() == "templates ok"

        # Versions: what was there before, then this save, with its diff.
        page.get_by_role("link", name="versions").click()
        expect(page.get_by_role("heading", name="Version 2")).to_be_visible()
        expect(page.locator("#v2")).to_contain_text("saved")
        expect(page.locator("#v2")).to_contain_text(ADMIN)
        expect(page.locator("#v2 .diff .add").first).to_contain_text("+Hello there, {{")
        expect(page.locator("#v1")).to_contain_text("as shipped")

        page.get_by_role("link", name="Roll back to version 1").click()
        page.get_by_role("button", name="Yes, roll back").click()
        expect(page.get_by_role("status").first).to_contain_text("back at version 1")
        assert target.read_text() == shipped
        expect(page.get_by_role("heading", name="Version 3")).to_be_visible()
        page.get_by_role("link", name="Audit log", exact=True).click()
        expect(page.locator("table.rows")).to_contain_text("template rolled back to version 1")
        expect(page.locator("table.rows")).to_contain_text("template saved")


def test_send_me_a_test_mails_the_preview_to_the_signed_in_admin(page: Any, tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        browser_sign_in(page, site)
        page.goto(site.url + "/templates/digest")
        text = page.get_by_label("Text")
        text.fill("Marker for the test mail.\n" + text.input_value())
        expect(page.locator("pre.mailtext").first).to_contain_text("Marker for the test mail.")
        page.get_by_label("Sample").select_option("setback")
        page.get_by_role("button", name="Send me a test").click()
        expect(page.locator(".notice")).to_contain_text("on its way to admin@example.com")
        deadline = time.monotonic() + 10
        while not site.mails(to=ADMIN, kind="template_test"):
            assert time.monotonic() < deadline, "no test mail"
            time.sleep(0.05)
        mail = site.mails(to=ADMIN, kind="template_test")[-1]
        assert str(mail["Subject"]).startswith("[test] ")
        assert "Marker for the test mail." in text_of(mail)
        assert not (site.data / "templates" / "digest.txt.j2").exists()  # a test saves nothing


def test_the_next_check_in_of_a_running_serve_uses_the_saved_version(
    page: Any, tmp_path: Path
) -> None:
    with admin_site(
        tmp_path,
        now=MONDAY - timedelta(hours=2),
        extra=f"tick_seconds = 1\n[listener]\nport = {free_port()}\n",
    ) as site:
        site.world(start=MONDAY.date().isoformat())
        stop = threading.Event()
        serving = threading.Thread(
            target=serve, args=(site.app, site.clock, stop), kwargs={"site": False}
        )
        serving.start()
        try:
            browser_sign_in(page, site)
            page.goto(site.url + "/templates/checkin")
            text = page.get_by_label("Text")
            text.fill(text.input_value().replace("Hi {{", "Good morning from the admin site, {{"))
            expect(page.locator("pre.mailtext").first).to_contain_text("Good morning from")
            page.get_by_role("button", name="Save").click()
            expect(page.get_by_role("status").first).to_contain_text("Saved checkin.")
            assert site.mails(to="ada@example.com", kind="checkin") == []
            site.now = MONDAY + timedelta(minutes=1)  # the check-in comes due
            deadline = time.monotonic() + 20
            while not site.mails(to="ada@example.com", kind="checkin"):
                assert time.monotonic() < deadline, "serve sent no check-in"
                time.sleep(0.1)
        finally:
            stop.set()
            serving.join(timeout=15)
        [checkin] = site.mails(to="ada@example.com", kind="checkin")
        assert "Good morning from the admin site, Ada Lovelace," in text_of(checkin)


def test_pause_a_partnership(page: Any, tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        pid = site.world()
        site.cli("people", "add", "alan@example.com", "--name", "Alan Turing",
                 "--department", "Research")  # fmt: skip
        browser_sign_in(page, site)
        page.get_by_role("link", name="Partnerships").click()
        page.get_by_label("Search").fill("lovelace")
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("#count")).to_have_text("1 partnership.")
        page.get_by_role("link", name=f"Partnership {pid}").click()
        expect(page.locator("#status")).to_contain_text("active")
        page.get_by_role("link", name="Pause…").click()
        page.get_by_label("Until").fill("2026-12-20")
        page.get_by_role("button", name="Yes, pause").click()
        expect(page.get_by_role("status").first).to_contain_text(
            f"Partnership {pid} paused until 2026-12-20"
        )
        expect(page.locator("#status")).to_contain_text("paused until 2026-12-20")
        shown = json.loads(site.cli("partnerships", "show", pid, "--json"))
        assert (shown["status"], shown["paused_until"]) == ("paused", "2026-12-20")
        page.get_by_role("link", name="Audit log", exact=True).click()
        row = page.locator("table.rows tbody tr").first
        expect(row).to_contain_text("partnership paused")
        expect(row).to_contain_text(ADMIN)
        expect(row).to_contain_text("until 2026-12-20")
        # And back: resume, also confirmed.
        page.goto(f"{site.url}/partnerships/{pid}")
        page.get_by_role("link", name="Resume…").click()
        page.get_by_role("button", name="Yes, resume").click()
        expect(page.locator("#status")).to_contain_text("active")


def test_release_a_quarantined_reply_and_the_dashboard_count_drops(
    page: Any, tmp_path: Path
) -> None:
    with admin_site(tmp_path) as site:
        pid = site.world()
        site.now = MONDAY + timedelta(hours=1)
        site.app.tick(site.now)
        to = site.checkin_reply_to()
        site.now += timedelta(hours=2)
        site.spool_reply(
            "ada.private@example.net", to, "Done: module 5 on the train.\nNext: module 6.",
            "<private-1@example.net>",
        )  # fmt: skip
        assert site.status()["quarantined"] == 1
        browser_sign_in(page, site)
        before = assert_dashboard_equals_status(page, site)
        assert before["quarantined"] == 1 and before["replied"] == 0
        page.locator("[data-status=quarantined] a").click()
        expect(page.get_by_role("heading", name="Quarantine")).to_be_visible()
        expect(page.locator("table.rows")).to_contain_text("sender mismatch")
        expect(page.locator("table.rows")).to_contain_text("ada.private@example.net")
        page.locator("table.rows a").first.click()
        expect(page.locator("#parsed-text")).to_have_text(
            "Done: module 5 on the train.\nNext: module 6."
        )
        page.get_by_role("link", name="Release…").click()
        expect(page.get_by_role("main")).to_contain_text("what it asks (commands, a yes or no)")
        assert site.mails(to="grace@example.com", kind="digest") == []
        page.get_by_role("button", name="Yes, release").click()
        expect(page.get_by_role("status").first).to_contain_text(
            f"partnership {pid}: released report for 2026-W49 counts"
        )
        after = assert_dashboard_equals_status(page, site)
        assert after["quarantined"] == 0 and after["replied"] == 1
        report = json.loads(site.cli("partnerships", "show", pid, "--json"))["reports"]
        assert [r["text"] for r in report] == ["Done: module 5 on the train.\nNext: module 6."]
        # As `quarantine release` does: the partner gets the week's digest now, with the
        # released report in it, and the member hears that her reply counts after all.
        [digest] = site.mails(to="grace@example.com", kind="digest")
        assert "the program admin has released it today" in text_of(digest)
        assert "module 5 on the train." in text_of(digest)
        assert site.mails(to="ada@example.com", kind="released")
        page.get_by_role("link", name="Audit log", exact=True).click()
        expect(page.locator("table.rows tbody tr").first).to_contain_text("quarantine released")
