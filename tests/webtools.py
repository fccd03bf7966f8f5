"""Helpers for the admin-site tests: a real site on a free loopback port, a plain HTTP client
with a cookie jar, and Debian's Chromium driven by Playwright.

`AdminSite(tmp_path, capsys)` writes a config under tmp_path (data in tmp_path/data, no relay:
mail lands in data/outbox/*.eml, the real outbox), builds the real app (`app.build`) and
starts the site exactly as `serve` does (`App.start_site`), with the test's clock: `site.now`
is what every page and the CLI (`site.cli(...)`) see, and a test moves it. The sign-in link is read
from the mail in the outbox folder, as a person would read it from her inbox.

Every wait is bounded; nothing is mocked.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import free_port

from mailflow.app import App, build
from mailflow.cli import main
from mailflow.config import load
from mailflow.web import WebServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN = "admin@example.com"
DOMAIN = "hot.example.com"
# A Monday, 09:00 UTC (2026-W49). Far from "today" in CI's shifted run on purpose: every
# clock here is the test's.
MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
SECRET_REPORT = "Zanzibar-7 told nobody about the dentist"  # must never appear on a page
# Skipped only where Chromium is missing outside CI (a developer's machine without it); in CI,
# where .ci/run installs it, a missing browser fails the tests instead of skipping them.
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)",
)
_LINK = re.compile(r"https?://\S+/signin/[A-Za-z0-9_-]+")


class AdminSite:
    """Config, data, the app and the running admin site of one test (or of a script)."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        now: datetime = MONDAY - timedelta(days=7),
        admins: tuple[str, ...] = (ADMIN,),
        extra: str = "",
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.now = now
        admin_list = ", ".join(f'"{a}"' for a in admins)
        self.config_path = tmp_path / "mailflow.toml"
        self.config_path.write_text(
            f'[service]\ndata_dir = "data"\ndomain = "{DOMAIN}"\nadmin_address = "{ADMIN}"\n'
            f"[web]\nport = {self.port}\nadmins = [{admin_list}]\n"
            "[schedule]\ndigest_delay_minutes = 0\n" + extra,
            encoding="utf-8",
        )
        self.environ = {"MAILFLOW_SECRET": "web-test-secret-0123456789abcdef"}
        self.config = load(self.config_path, self.environ)
        self.data = tmp_path / "data"
        self.app: App = build(self.config)
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: WebServer = self.app.start_site(self.clock)

    # -- time and the command line -----------------------------------------------------------

    def clock(self) -> datetime:
        return self.now

    def run(self, *args: str) -> tuple[int, str, str]:
        """`mailflow --config ... ARGS` in-process, as of `self.now`: (exit code, out, err)."""
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(
                ["--config", str(self.config_path), *args], clock=self.clock, environ=self.environ
            )
        return code, out.getvalue(), err.getvalue()

    def cli(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0 and "error:" not in err, (args, code, out, err)
        return out

    def cli_error(self, *args: str) -> str:
        code, out, err = self.run(*args)
        lines = err.strip().splitlines()
        assert code == 1 and lines and lines[-1].startswith("error:"), (out, err)
        assert "Traceback" not in err
        return err

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json"))

    def stop(self) -> None:
        self.server.stop()

    # -- mail ------------------------------------------------------------------------------------

    def mails(self, to: str | None = None, kind: str | None = None) -> list[EmailMessage]:
        """Messages in the outbox folder (what "sent" means with no relay), oldest first."""
        found = []
        for path in sorted((self.data / "outbox").glob("*.eml"), key=lambda p: p.stat().st_mtime):
            if kind is not None and not path.name.startswith(kind):
                continue
            msg = message_from_bytes(path.read_bytes(), policy=policy.default)
            assert isinstance(msg, EmailMessage)
            if to is None or msg["To"].addresses[0].addr_spec == to:
                found.append(msg)
        return found

    def signin_link(self, email: str = ADMIN, count: int = 1, timeout: float = 10.0) -> str:
        """The link in the newest sign-in mail to `email`, once `count` of them arrived.

        The site delivers after it has answered the page, so the mail may take a moment.
        """
        deadline = time.monotonic() + timeout
        while len(mails := self.mails(to=email, kind="signin")) < count:
            assert time.monotonic() < deadline, f"no sign-in mail to {email} in the outbox"
            time.sleep(0.05)
        match = _LINK.search(text_of(mails[-1]))
        assert match, text_of(mails[-1])
        return match.group(0)

    # -- a small world ---------------------------------------------------------------------------

    def world(self, *, start: str = "2026-11-30") -> str:
        """Ada learns SQL from Grace (accepted); returns the partnership id."""
        self.cli("people", "add", "ada@example.com", "--name", "Ada Lovelace",
                 "--department", "Engineering", "--timezone", "UTC")  # fmt: skip
        self.cli("people", "add", "grace@example.com", "--name", "Grace Hopper",
                 "--department", "Sales", "--timezone", "UTC")  # fmt: skip
        return self.cli(
            "partnerships", "add", "--member", "ada@example.com",
            "--partner", "grace@example.com", "--skill", "sql",
            "--goal", "2027-02-26 Write the quarterly report queries myself",
            "--goal", "2027-01-15 Finish the SQL course", "--why", "w", "--saddle", "s",
            "--start", start, "--accepted",
        ).strip().splitlines()[-1]  # fmt: skip

    def checkin_reply_to(self, member: str = "ada@example.com") -> str:
        checkins = self.mails(to=member, kind="checkin")
        assert checkins, "no check-in sent yet"
        return str(checkins[-1]["Reply-To"])

    def spool_reply(self, sender: str, to: str, body: str, mid: str) -> None:
        """A reply as the listener would take it (the same `Spool.put`), then one ingest."""
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = to
        msg["Subject"] = "Re: your check-in"
        msg["Message-ID"] = mid
        msg["Date"] = "Mon, 30 Nov 2026 10:00:00 +0000"
        msg.set_content(body)
        self.app.spool.put(
            msg.as_bytes(),
            mail_from=sender,
            rcpt_tos=[to],
            peer="127.0.0.1",
            received_at=self.now,
        )
        self.app.ingest(self.now)


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


@contextmanager
def admin_site(tmp_path: Path, **kwargs: Any) -> Iterator[AdminSite]:
    site = AdminSite(tmp_path, **kwargs)
    try:
        yield site
    finally:
        site.stop()


# -- a plain HTTP client ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    set_cookies: list[str]
    body: str

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def csrf(self) -> str:
        match = re.search(r'name="csrf" value="([0-9a-f]+)"', self.body)
        assert match, self.body[:2000]
        return match.group(1)


class Client:
    """HTTP/1.1 to the site with a cookie jar; never follows redirects (tests look at them)."""

    def __init__(self, site: AdminSite, forwarded_proto: str | None = None) -> None:
        self.site = site
        self.cookies: dict[str, str] = {}
        self.forwarded_proto = forwarded_proto

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.site.port, timeout=20)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.forwarded_proto:
            headers["X-Forwarded-Proto"] = self.forwarded_proto
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read().decode("utf-8", "replace")
            set_cookies = resp.headers.get_all("set-cookie") or []
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        for cookie in set_cookies:
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0].strip('"')
            if "max-age=0" in cookie.lower() or "expires=thu, 01 jan 1970" in cookie.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return Reply(resp.status, hdrs, set_cookies, data)

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str]) -> Reply:
        return self.request("POST", path, form)

    def sign_in(self, email: str = ADMIN, by_mail: bool = True) -> Reply:
        """Ask for a link on the sign-in page, read the mail, open it, press Sign in.

        by_mail=False: the link `mailflow web link` prints instead (no sign-in request, so a
        site shared by several tests stays under the attempt limit).
        """
        if by_mail:
            count = len(self.site.mails(to=email, kind="signin")) + 1
            page = self.get("/signin")
            asked = self.post("/signin", {"email": email, "csrf": page.csrf()})
            assert asked.status == 200, asked
            link = self.site.signin_link(email, count)
        else:
            link = self.site.cli("web", "link", email).strip()
        path = link.split(str(self.site.port), 1)[1]
        landing = self.get(path)
        assert landing.status == 200, landing.body
        done = self.post(path, {"csrf": landing.csrf()})
        assert done.status == 303 and done.location == "/", done
        return done


# -- the browser ----------------------------------------------------------------------------------


def launch_browser(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def browser_sign_in(page: Any, site: AdminSite, email: str = ADMIN, by_mail: bool = True) -> None:
    """Sign in as a person does: the sign-in page, the mail, the link, the button.

    by_mail=False: open the link `mailflow web link` prints, as an operator on the server does.
    """
    if not by_mail:
        page.goto(site.cli("web", "link", email).strip())
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Dashboard").wait_for(timeout=10_000)
        return
    count = len(site.mails(to=email, kind="signin")) + 1
    page.goto(f"{site.url}/signin")
    page.get_by_label("Your admin address").fill(email)
    page.get_by_role("button", name="Mail me a sign-in link").click()
    page.get_by_text("a sign-in link is on its way").wait_for(timeout=10_000)
    page.goto(site.signin_link(email, count))
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Dashboard").wait_for(timeout=10_000)
