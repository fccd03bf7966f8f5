"""The admin site's security points, over real HTTP to a real site on loopback (issue 14).

No session: a redirect to sign-in. A sign-in link works once and for 15 minutes. A form
without its CSRF token is refused. A non-admin address gets the same page and no mail.
Attempts are rate-limited. Cookies are HttpOnly, SameSite=Strict, and Secure on https.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from webtools import ADMIN, Client, admin_site

PAGES = [
    "/",
    "/partnerships",
    "/partnerships/1",
    "/partnerships/1/pause",
    "/people",
    "/templates",
    "/templates/checkin",
    "/templates/checkin/versions",
    "/quarantine",
    "/audit",
]


def test_every_page_without_a_session_redirects_to_sign_in(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        site.world()
        client = Client(site)
        for path in PAGES:
            reply = client.get(path)
            assert reply.status == 303, path
            assert reply.location.startswith("/signin?next="), (path, reply.location)
        # Changes are refused the same way, before any form is read.
        reply = client.post("/partnerships/1/pause", {"until": ""})
        assert reply.status == 303 and reply.location.startswith("/signin")
        assert json.loads(site.cli("partnerships", "show", "1", "--json"))["status"] == "active"
        # A forged or stale cookie is no session either.
        client.cookies["mailflow_session"] = "1234.forged"
        assert client.get("/").status == 303


def test_sign_in_by_mailed_link_then_sign_out(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        client = Client(site)
        done = client.sign_in()
        cookie = next(c for c in done.set_cookies if c.startswith("mailflow_session="))
        assert "httponly" in cookie.lower()
        assert "samesite=strict" in cookie.lower()
        assert "secure" not in cookie.lower()  # plain http on loopback
        home = client.get("/")
        assert home.status == 200 and "Signed in as admin@example.com" in home.body
        mail = site.mails(to=ADMIN, kind="signin")[-1]
        assert "works once, for 15 minutes" in mail.get_body(("plain",)).get_content()
        out = client.post("/signout", {"csrf": home.csrf()})
        assert out.status == 303 and out.location == "/signin"
        assert client.get("/").status == 303
        entries = [e["action"] for e in map(json.loads, _audit_lines(site.data))]
        assert entries == ["sign-in link mailed", "signed in", "signed out"]


def _audit_lines(data: Path) -> list[str]:
    return (data / "web" / "audit.jsonl").read_text().splitlines()


def test_a_link_works_once(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        link = site.cli("web", "link", ADMIN).strip()
        path = link.split(str(site.port), 1)[1]
        first = Client(site)
        landing = first.get(path)
        assert landing.status == 200 and "Sign in as admin@example.com" in landing.body
        assert first.post(path, {"csrf": landing.csrf()}).status == 303
        assert first.get("/").status == 200
        # The same link again, from another browser: refused, and no session.
        second = Client(site)
        again = second.get(path)
        assert again.status == 410
        assert "already been used" in again.body
        anon = second.get("/signin")
        reuse = second.post(path, {"csrf": anon.csrf()})
        assert reuse.status == 410 and "already been used" in reuse.body
        assert "mailflow_session" not in second.cookies
        assert second.get("/").status == 303


def test_an_expired_link_is_refused(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        link = site.cli("web", "link", ADMIN).strip()
        path = link.split(str(site.port), 1)[1]
        client = Client(site)
        landing = client.get(path)
        assert landing.status == 200
        site.now += timedelta(minutes=15, seconds=1)
        assert client.get(path).status == 410
        late = client.post(path, {"csrf": landing.csrf()})
        assert late.status == 410 and "expired" in late.body
        assert client.get("/").status == 303
        # A made-up token is refused the same way.
        assert Client(site).get("/signin/" + "x" * 43).status == 410


def test_a_form_without_its_csrf_token_is_refused(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        pid = site.world()
        client = Client(site)
        client.sign_in()
        for form in ({}, {"csrf": ""}, {"csrf": "0" * 64}):
            reply = client.post(f"/partnerships/{pid}/pause", {**form, "until": ""})
            assert reply.status == 403, reply.body
            assert "security token" in reply.body
        assert json.loads(site.cli("partnerships", "show", pid, "--json"))["status"] == "active"
        # A token from another session does not fit this one.
        other = Client(site)
        other.sign_in()
        theirs = other.get(f"/partnerships/{pid}/pause").csrf()
        assert client.post(f"/partnerships/{pid}/pause", {"csrf": theirs}).status == 403
        # The sign-in form needs its token too.
        anon = Client(site)
        anon.get("/signin")
        assert anon.post("/signin", {"email": ADMIN}).status == 403
        # And with it, the change goes through.
        ok = client.post(f"/partnerships/{pid}/pause", {
            "csrf": client.get(f"/partnerships/{pid}/pause").csrf(), "until": ""})  # fmt: skip
        assert ok.status == 303
        assert json.loads(site.cli("partnerships", "show", pid, "--json"))["status"] == "paused"


def test_a_non_admin_address_gets_the_same_page_and_no_link(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        client = Client(site)
        page = client.get("/signin")
        reply = client.post("/signin", {"email": "mallory@example.com", "csrf": page.csrf()})
        admin_reply = Client(site)
        admin_page = admin_reply.get("/signin")
        real = admin_reply.post("/signin", {"email": ADMIN, "csrf": admin_page.csrf()})
        assert reply.status == real.status == 200
        assert reply.body.replace("mallory@example.com", ADMIN) == real.body.replace(
            admin_page.csrf(), page.csrf()
        )
        site.signin_link(ADMIN)  # the admin's arrives...
        assert site.mails(to="mallory@example.com") == []  # ...and nothing for mallory
        links = json.loads((site.data / "web" / "auth.json").read_text())["links"]
        assert [v["email"] for v in links.values()] == [ADMIN]
        # `web link` refuses a non-admin when admins are configured.
        err = site.cli_error("web", "link", "mallory@example.com")
        assert "not in web.admins" in err


def test_sign_in_attempts_are_rate_limited(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        client = Client(site)
        csrf = client.get("/signin").csrf()
        statuses = [client.post("/signin", {"email": ADMIN, "csrf": csrf}).status for _ in range(4)]
        assert statuses == [200, 200, 200, 429]  # three per address per 15 minutes
        statuses = [
            client.post("/signin", {"email": f"x{i}@example.com", "csrf": csrf}).status
            for i in range(8)
        ]
        assert statuses[:6] == [200] * 6 and statuses[6:] == [429, 429]  # ten per client
        limited = client.post("/signin", {"email": "y@example.com", "csrf": csrf})
        assert limited.status == 429 and int(limited.headers["retry-after"]) > 0
        site.signin_link(ADMIN, count=3)
        assert len(site.mails(to=ADMIN, kind="signin")) == 3
        site.now += timedelta(minutes=16)  # the window has passed
        assert client.post("/signin", {"email": ADMIN, "csrf": csrf}).status == 200


def test_cookies_are_secure_behind_tls(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        # A TLS proxy on 127.0.0.1 says so with X-Forwarded-Proto (uvicorn trusts loopback).
        client = Client(site, forwarded_proto="https")
        done = client.sign_in()
        cookie = next(c for c in done.set_cookies if c.startswith("mailflow_session="))
        assert "secure" in cookie.lower() and "httponly" in cookie.lower()


def test_security_headers_and_no_open_redirect(tmp_path: Path) -> None:
    with admin_site(tmp_path) as site:
        client = Client(site)
        page = client.get("/signin?next=//evil.example/x")
        assert page.headers["referrer-policy"] == "no-referrer"  # links carry tokens
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-frame-options"] == "DENY"
        client.sign_in()
        assert client.get("/signin?next=https://evil.example/").location == "/"
        assert client.get("/signin?next=/people").location == "/people"


def test_web_link_prints_a_working_link_and_the_defaults_admit_the_shell(tmp_path: Path) -> None:
    """With no admins configured (the embedded default), `web link` is the way in."""
    with admin_site(tmp_path, admins=()) as site:
        link = site.cli("web", "link", "You@Example.com").strip()
        assert link.startswith(f"http://127.0.0.1:{site.port}/signin/")
        client = Client(site)
        path = link.split(str(site.port), 1)[1]
        landing = client.get(path)
        assert "Sign in as you@example.com" in landing.body
        assert client.post(path, {"csrf": landing.csrf()}).status == 303
        assert client.get("/").status == 200
        # Nobody gets a link by mail, though.
        anon = Client(site)
        page = anon.get("/signin")
        assert anon.post("/signin", {"email": "you@example.com", "csrf": page.csrf()}).status == 200
        assert site.mails(kind="signin") == []
        stored = (site.data / "web" / "auth.json").read_text()
        assert link.rsplit("/", 1)[1] not in stored  # only the hash is kept


def test_web_config_is_checked_key_by_key(tmp_path: Path) -> None:
    from mailflow.config import from_mapping
    from mailflow.errors import ConfigError

    cfg = from_mapping({"web": {"admins": ["Admin@Acme.Example"], "port": 9000}})
    assert cfg.web.admins == ("admin@acme.example",) and cfg.web.enabled
    for bad, key in (
        ({"admins": "a@b.example"}, "web.admins: expected a list of strings"),
        ({"admins": ["not an address"]}, "web.admins: not a valid address"),
        ({"port": 0}, "web.port: expected 1-65535"),
        ({"enabled": "yes"}, "web.enabled: expected true or false"),
        ({"host": ""}, "web.host"),
        ({"public_url": "https://x.example/admin"}, "web.public_url"),
        ({"colour": "blue"}, "web.colour: unknown key"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            from_mapping({"web": bad})
