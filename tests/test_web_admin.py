"""The admin site's wiring and the actions not clicked through in the browser tests.

`serve` serves the site and stops it on SIGTERM; `[web] enabled = false` turns it off;
`mailflow web` alone says clearly when its port is taken. Over real HTTP: record consent,
resend the introduction, end, drop a quarantined message, and a template edited on disk
between two saves is kept as a version of its own. Every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

from clitools import VENV_BIN
from conftest import die_with_parent, free_port, now_args
from webtools import ADMIN, MONDAY, Client, admin_site, text_of

from mailflow.compose import SHIPPED_DIR

MAILFLOW = str(VENV_BIN / "mailflow")


def _config(tmp_path: Path, web_port: int, *, enabled: bool = True) -> Path:
    path = tmp_path / "mailflow.toml"
    path.write_text(
        f'[service]\ndata_dir = "data"\n[listener]\nport = {free_port()}\n'
        f"[web]\nenabled = {'true' if enabled else 'false'}\nport = {web_port}\n"
        f'admins = ["{ADMIN}"]\n'
    )
    return path


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not _listening(port):
        assert proc.poll() is None, "the process ended early"
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.05)


def test_serve_serves_the_site_and_sigterm_stops_both(tmp_path: Path) -> None:
    web = free_port()
    config = _config(tmp_path, web)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [MAILFLOW, *now_args(), "--config", str(config), "serve"],
        stdout=log,
        stderr=log,
        preexec_fn=die_with_parent,
    )
    try:
        _wait_listening(web, proc)
        link = subprocess.run(
            [MAILFLOW, *now_args(), "--config", str(config), "web", "link", ADMIN],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        assert link.startswith(f"http://127.0.0.1:{web}/signin/")
        import urllib.request

        with urllib.request.urlopen(link, timeout=10) as resp:
            assert resp.status == 200 and b"Sign in as admin@example.com" in resp.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert code == 0, (tmp_path / "serve.log").read_text()
    assert not _listening(web)
    assert "admin site stopped" in (tmp_path / "serve.log").read_text()


def test_serve_without_the_site_when_disabled(tmp_path: Path) -> None:
    web = free_port()
    config = _config(tmp_path, web, enabled=False)
    listen = int(config.read_text().split("port = ")[1].split()[0])
    proc = subprocess.Popen(
        [MAILFLOW, *now_args(), "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    try:
        _wait_listening(listen, proc)
        assert not _listening(web)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_web_alone_says_clearly_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = _config(tmp_path, port)
        result = subprocess.run(
            [MAILFLOW, *now_args(), "--config", str(config), "web"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 1, result
        assert result.stderr.splitlines() == [
            f"error: web: cannot listen on 127.0.0.1:{port}: Address already in use (is "
            "`mailflow serve` or `mailflow web` already running? change [web] port, or set "
            "[web] enabled = false for serve)"
        ], result.stderr
        # serve says so too, and goes on taking mail: the site is for people, mail can't wait.
        listen = int(config.read_text().split("port = ")[1].split()[0])
        log = tmp_path / "serve.log"
        proc = subprocess.Popen(
            [MAILFLOW, *now_args(), "--config", str(config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            preexec_fn=die_with_parent,
        )
        try:
            _wait_listening(listen, proc)
            deadline = time.monotonic() + 20
            while "admin site not started" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    assert "Address already in use" in log.read_text()
    assert "Traceback" not in log.read_text()


def test_web_alone_serves_until_sigterm(tmp_path: Path) -> None:
    web = free_port()
    config = _config(tmp_path, web)
    proc = subprocess.Popen(
        [MAILFLOW, *now_args(), "--config", str(config), "web"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    try:
        _wait_listening(web, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert f"admin site on http://127.0.0.1:{web}" in out.decode()


def test_record_consent_resend_the_introduction_and_end(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        site.cli("people", "add", "ada@example.com", "--name", "Ada", "--department", "Eng")
        site.cli("people", "add", "grace@example.com", "--name", "Grace", "--department", "Ops")
        pid = site.cli(
            "partnerships", "add", "--member", "ada@example.com", "--partner",
            "grace@example.com", "--skill", "sql", "--goal", "2027-03-01 Ship it",
            "--why", "w", "--saddle", "s",
        ).strip().splitlines()[-1]  # fmt: skip
        assert site.status()["consent_pending"] == [int(pid)]
        client = Client(site)
        client.sign_in()

        def act(action: str) -> str:
            confirm = client.get(f"/partnerships/{pid}/{action}")
            assert confirm.status == 200
            done = client.post(f"/partnerships/{pid}/{action}", {"csrf": confirm.csrf()})
            assert done.status == 303, done.body
            return client.get(done.location).body

        assert site.mails(kind="consent_") == []
        page = act("consent-accepted")
        assert "recorded as accepted" in page
        shown = json.loads(site.cli("partnerships", "show", pid, "--json"))
        assert shown["consent"] == "accepted" and shown["consent_at"] == site.now.isoformat()
        assert site.status()["consent_pending"] == []
        # As `partnerships consent` does: both people are told, the partner that the admin
        # recorded her answer, the member when her first check-in comes.
        [to_grace] = site.mails(to="grace@example.com", kind="consent_")
        assert "The program admin recorded your answer. You accepted." in text_of(to_grace)
        [to_ada] = site.mails(to="ada@example.com", kind="consent_")
        assert "Grace accepted. Your first check-in comes" in text_of(to_ada)
        # Twice is refused with a clear message, not a crash.
        again = client.post(
            f"/partnerships/{pid}/consent-accepted",
            {"csrf": client.get(f"/partnerships/{pid}").csrf()},
        )
        assert again.status == 400 and "already accepted" in again.body

        before = len(site.mails(kind="intro"))
        assert before == 2
        assert f"Introduction of partnership {pid} sent again." in act("resend-intro")
        deadline = time.monotonic() + 10
        while len(site.mails(kind="intro")) < before + 2:
            assert time.monotonic() < deadline, "no introductions resent"
            time.sleep(0.05)
        resent = site.mails(kind="intro")[-2:]
        assert {m["To"].addresses[0].addr_spec for m in resent} == {
            "ada@example.com",
            "grace@example.com",
        }
        assert len({str(m["Message-ID"]) for m in site.mails(kind="intro")}) == 4

        assert "ended" in act("end")
        assert json.loads(site.cli("partnerships", "show", pid, "--json"))["status"] == "ended"
        actions = [e["action"] for e in _audit(site.data)]
        assert actions[-3:] == [
            "consent recorded: accepted",
            "introduction resent",
            "partnership ended",
        ]
        assert all(e["who"] == ADMIN for e in _audit(site.data)[-3:])


def _audit(data: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (data / "web" / "audit.jsonl").read_text().splitlines()]


def test_drop_a_quarantined_message(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        site.world()
        site.now = MONDAY + timedelta(hours=1)
        site.app.tick(site.now)
        site.spool_reply("eve@example.org", site.checkin_reply_to(), "hello", "<eve@example.org>")
        [(qid, reason)] = site.app.spool.quarantined()
        assert reason.startswith("sender mismatch")
        client = Client(site)
        client.sign_in()
        confirm = client.get(f"/quarantine/{qid}/drop")
        assert "It is deleted for good." in confirm.body
        done = client.post(f"/quarantine/{qid}/drop", {"csrf": confirm.csrf()})
        assert done.status == 303
        assert site.app.spool.quarantined() == []
        assert site.status()["quarantined"] == 0
        # The sidecar stays as the record of the decision, as after `quarantine drop`.
        sidecar = (site.data / "quarantine" / f"{qid}.reason.txt").read_text()
        assert f"dropped: {site.now.isoformat()} by {ADMIN}" in sidecar
        assert f"{qid} was already dropped" in client.get(f"/quarantine/{qid}").body
        entry = _audit(site.data)[-1]
        assert (entry["action"], entry["target"]) == ("quarantine dropped", qid)
        assert "eve@example.org" in entry["detail"]
        # An id that is not in the quarantine (or tries to leave it) is refused.
        for bad in ("nope", "..%2Fsecret.key"):
            reply = client.get(f"/quarantine/{bad}")
            assert reply.status == 404, reply.body


def test_a_template_edited_on_disk_between_saves_is_a_version_of_its_own(
    tmp_path: Path,
) -> None:
    with admin_site(tmp_path) as site:
        client = Client(site)
        client.sign_in()
        shipped = {p: (SHIPPED_DIR / f"reminder.{p}.j2").read_text() for p in ("subject", "txt")}

        def save(subject: str) -> None:
            page = client.get("/templates/reminder")
            form = {
                "csrf": page.csrf(),
                "op": "save",
                "subject": subject,
                "txt": shipped["txt"],
                "html": (SHIPPED_DIR / "reminder.html.j2").read_text(),
            }
            assert client.post("/templates/reminder", form).status == 303

        save("First: {{ partnership.skill }}\r\n")  # a browser sends CRLF
        target = site.data / "templates" / "reminder.subject.j2"
        assert target.read_text() == "First: {{ partnership.skill }}\n"
        target.write_text("By hand: {{ partnership.skill }}\n")  # an operator's edit
        save("Second: {{ partnership.skill }}\n")
        versions = client.get("/templates/reminder/versions").body
        for text in ("as shipped", "changed outside the admin site", "Version 4"):
            assert text in versions
        assert "+By hand: {{ partnership.skill }}" in versions
        assert not (site.data / "templates" / "reminder.txt.j2").exists()  # only what changed


def test_the_sign_in_link_is_not_held_for_quiet_hours(tmp_path: Path) -> None:
    # 23:00 UTC is in the default quiet hours (21:00-07:00): a check-in would wait for the
    # morning, but the admin who asked for a link is waiting for it now.
    with admin_site(tmp_path, now=MONDAY + timedelta(hours=14)) as site:
        Client(site).sign_in()
        assert site.status()["outgoing_queued"] == 0
        entry = _audit(site.data)[-1]
        assert (entry["action"], entry["who"]) == ("signed in", ADMIN)


def test_approve_a_partnership_asked_for_by_email(tmp_path: Path) -> None:
    """Issue 15: under self_service = "approval" the admin may approve on the site too."""
    from mailflow.models import Goal, Partnership
    from mailflow.store import Store

    with admin_site(tmp_path, extra='[program]\nself_service = "approval"\n') as site:
        site.cli("people", "add", "ada@example.com", "--name", "Ada", "--department", "Eng")
        site.cli("people", "add", "grace@example.com", "--name", "Grace", "--department", "Ops")
        store = Store(site.data)
        with store.core_tx() as core:  # as a self-service ask leaves it: waiting, not introduced
            core.put_partnership(
                Partnership(
                    1, "ada@example.com", "grace@example.com", "sql",
                    (Goal(1, site.now.date() + timedelta(days=60), "Ship it"),), "w", "s",
                    site.now.date(), site.now, consent="pending", approval="waiting",
                )
            )  # fmt: skip
        pid = "1"
        before = len(site.mails(kind="intro"))
        client = Client(site)
        client.sign_in()
        page = client.get(f"/partnerships/{pid}").body
        assert "waits for an admin's approval" in page and f"/partnerships/{pid}/approve" in page
        # Nobody is introduced yet: no resend, no recorded consent to go round the approval.
        assert "/resend-intro" not in page and "/consent-accepted" not in page
        dashboard = client.get("/").body
        assert 'data-status="awaiting_approval">1<' in dashboard
        assert f'Awaiting your approval: <a href="/partnerships/{pid}">' in dashboard
        confirm = client.get(f"/partnerships/{pid}/approve")
        assert confirm.status == 200 and "asked for this partnership by email" in confirm.body
        done = client.post(f"/partnerships/{pid}/approve", {"csrf": confirm.csrf()})
        assert done.status == 303, done.body
        assert "approved: both are introduced" in client.get(done.location).body
        deadline = time.monotonic() + 10
        while len(site.mails(kind="intro")) < before + 2:
            assert time.monotonic() < deadline, "no introductions after the approval"
            time.sleep(0.05)
        assert json.loads(site.cli("partnerships", "show", pid, "--json"))["introduced_at"]
        assert _audit(site.data)[-1]["action"] == "partnership approved"


def test_ids_that_name_nothing_answer_404_with_a_clear_page(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        site.world()
        client = Client(site)
        client.sign_in(by_mail=False)
        csrf = client.get("/partnerships/1").csrf()  # a real one still opens
        for path, says in (
            ("/partnerships/999", "No partnership 999."),
            ("/partnerships/999/pause", "No partnership 999."),
            ("/quarantine/nope", "No quarantined message &#39;nope&#39;"),
            ("/quarantine/nope/drop", "No quarantined message &#39;nope&#39;"),
            ("/people/nobody@example.com", "There is no such page."),
        ):
            reply = client.get(path)
            assert reply.status == 404, (path, reply.status)
            assert "<h1>Not found</h1>" in reply.body and says in reply.body, reply.body
            assert "Back to the dashboard" in reply.body
        for path in ("/partnerships/999/pause", "/quarantine/nope/drop"):
            assert client.post(path, {"csrf": csrf}).status == 404, path
