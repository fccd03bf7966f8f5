"""The admin site: HTTP and HTML over `webadmin.WebAdmin` (Starlette pages, served by uvicorn).

Why Starlette + uvicorn: a small, well-kept ASGI stack with no ORM or settings module of its
own to fit around ours, Jinja2 (already our mail template engine) for the pages, real form
parsing (python-multipart) and a server that runs in a thread of `serve` or alone. Pages work
without JavaScript; `web_static/app.js` adds only the editor's live preview.

`build_app(config, desk, clock)` is the factory: everything the site keeps (sign-in state,
attempt limits, the page environment) hangs off the `Site` it builds; nothing lives at module
level. Every handler takes `now` from the clock it was handed (`--now` moves it as for `serve`).
`WebServer` runs the app on a socket it binds itself, so "port taken" is a clear error before
anything starts, and stops it when `serve` (or `mailflow web`) stops.

Security, in one place (see also `webauth`): every page but sign-in needs a session (else a
303 to /signin); every POST needs the form's CSRF token (403 otherwise); sign-in requests are
rate-limited per client and per address, and a non-admin address gets the same answer as an
admin's but no mail; cookies are HttpOnly, SameSite=Strict and Secure on https; responses carry
a strict Content-Security-Policy, no Referer (sign-in links are in URLs) and no caching.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import uvicorn
from itsdangerous import BadSignature, Signer
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailflow.addresses import canonical
from mailflow.clock import Clock
from mailflow.config import Config
from mailflow.errors import MailflowError, NotFoundError, StartupError
from mailflow.webadmin import (
    PAGE_SIZE,
    PART_LABELS,
    PARTS,
    TEMPLATE_NAMES,
    Parts,
    TryResult,
    WebAdmin,
    WeekPoint,
)
from mailflow.webauth import Auth, LinkRefused, RateLimit, Session, derive_key, new_anonymous_id
from mailflow.wording import count

log = logging.getLogger("mailflow.web")

HERE = Path(__file__).resolve().parent
PAGES = HERE / "web_templates"
STATIC = HERE / "web_static"
SESSION_COOKIE = "mailflow_session"
ANON_COOKIE = "mailflow_anon"
FLASH_COOKIE = "mailflow_flash"
SIGNIN_WINDOW = timedelta(minutes=15)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# 'unsafe-inline' styles only: mail HTML in the preview frames is styled inline (the frames
# are sandboxed without scripts, and the CSP allows no inline script anywhere).
PARTNERSHIP_ACTIONS = {
    "approve": "Approve",
    "pause": "Pause",
    "resume": "Resume",
    "end": "End",
    "resend-intro": "Resend the introduction",
    "consent-accepted": "Record consent: accepted",
    "consent-declined": "Record consent: declined",
}


def site_url(config: Config) -> str:
    """The site's address for links we print or mail."""
    if config.web.public_url:
        return config.web.public_url
    host = config.web.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.web.port}"


class SecurityHeaders:
    """Headers on every response (pure ASGI: cheaper than Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


class SiteBase:
    """What every page handler needs: the desk (`WebAdmin`), the clock, sign-in state, the page
    environment; plus plumbing (pages, redirects, CSRF-checked forms, the session guard)."""

    def __init__(self, config: Config, desk: WebAdmin, clock: Clock) -> None:
        self.config = config
        self.desk = desk
        self.clock = clock
        self.key = derive_key(desk.secret)
        self.auth = Auth(desk.state_dir, self.key)
        self.flash_signer = Signer(self.key, salt="mailflow-flash")
        self.per_client = RateLimit(10, SIGNIN_WINDOW)
        self.per_address = RateLimit(3, SIGNIN_WINDOW)
        self.link_tries = RateLimit(30, SIGNIN_WINDOW)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(PAGES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            template_names=TEMPLATE_NAMES,
            part_labels=PART_LABELS,
            parts=PARTS,
            page_size=PAGE_SIZE,
            actions=PARTNERSHIP_ACTIONS,
        )
        # Rendered list rows of the current snapshot (rows are immutable values within it):
        # escaping 50 rows of fields is most of a list page's time at 10,000 partnerships.
        self._row_html: tuple[Any, dict[int, str]] = (None, {})
        self._row_lock = threading.Lock()
        self.env.filters["pct"] = lambda v: "–" if v is None else f"{round(v * 100)}%"
        self.env.filters["when"] = lambda dt: dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "–"

    # -- plumbing --------------------------------------------------------------------------

    def secure(self, request: Request) -> bool:
        return self.config.web.public_url.startswith("https://") or request.url.scheme == "https"

    def set_cookie(
        self,
        response: Response,
        request: Request,
        name: str,
        value: str,
        max_age: int | None = None,
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )

    def session(self, request: Request) -> Session | None:
        found = self.auth.session(request.cookies.get(SESSION_COOKIE), self.clock())
        admins = self.config.web.admins
        if found is not None and admins and found.email not in admins:
            return None  # taken off [web] admins since: the session ends with the restart
        return found

    def page(
        self,
        request: Request,
        template: str,
        status: int = 200,
        *,
        session: Session | None = None,
        binding: str | None = None,
        **ctx: Any,
    ) -> HTMLResponse:
        binding = binding or (session.binding if session else None)
        flash = None
        raw_flash = request.cookies.get(FLASH_COOKIE)
        if raw_flash and request.method == "GET":
            try:
                flash = self.flash_signer.unsign(raw_flash).decode("utf-8")
            except (BadSignature, UnicodeDecodeError):
                flash = None
        body = self.env.get_template(template).render(
            request=request,
            me=session.email if session else None,
            csrf=self.auth.csrf_token(binding) if binding else "",
            flash=flash,
            path=request.url.path,
            **ctx,
        )
        response = HTMLResponse(body, status_code=status)
        if raw_flash and request.method == "GET":
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response

    def redirect(self, request: Request, to: str, flash: str | None = None) -> Response:
        response = RedirectResponse(to, status_code=303)
        if flash:
            self.set_cookie(
                response,
                request,
                FLASH_COOKIE,
                self.flash_signer.sign(flash.encode("utf-8")).decode("ascii"),
            )
        return response

    def to_signin(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)

    async def form(self, request: Request, binding: str | None) -> dict[str, str] | Response:
        """The POSTed form, or a 403 page when its CSRF token is missing or wrong."""
        try:
            data = await request.form(max_files=0, max_fields=50, max_part_size=512 * 1024)
        except Exception:  # noqa: BLE001 - a malformed body is the client's problem
            return HTMLResponse("bad form", status_code=400)
        form = {k: v for k, v in data.items() if isinstance(v, str)}
        if not self.auth.csrf_ok(binding, form.get("csrf")):
            return self.page(
                request,
                "refused.html",
                403,
                title="Form refused",
                message="This form did not carry a valid security token (it may be old, or "
                "it came from another site). Go back, reload the page and try again.",
            )
        return form

    # -- pages that need a session -------------------------------------------------------------

    def guarded(
        self, handler: Callable[[Request, Session], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """No session: to the sign-in page. A MailflowError: the page says what was wrong."""

        async def endpoint(request: Request) -> Response:
            session = self.session(request)
            if session is None:
                return self.to_signin(request)
            try:
                return await handler(request, session)
            except NotFoundError as exc:  # an id that names nothing: 404, not a bad request
                return self.page(
                    request,
                    "refused.html",
                    404,
                    session=session,
                    title="Not found",
                    message=f"{str(exc)[:1].upper()}{str(exc)[1:]}.",
                )
            except MailflowError as exc:
                return self.page(
                    request,
                    "refused.html",
                    400,
                    session=session,
                    title="That did not work",
                    message=str(exc),
                )

        return endpoint

    async def server_error(self, request: Request, exc: Exception) -> Response:
        log.error("admin site: %s %s failed", request.method, request.url.path, exc_info=exc)
        return HTMLResponse(
            "<!doctype html><title>Error</title><h1>Something went wrong</h1>"
            '<p>The error is in the server\'s log. <a href="/">Back to the dashboard</a></p>',
            status_code=500,
        )

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return self.page(
            request,
            "refused.html",
            404,
            session=self.session(request),
            title="Not found",
            message="There is no such page.",
        )


class SignInPages(SiteBase):
    """Sign-in by one-time link, and sign-out (see `webauth`)."""

    def anon_binding(self, request: Request) -> tuple[str, bool]:
        value = request.cookies.get(ANON_COOKIE)
        if value and 16 <= len(value) <= 64:
            return value, False
        return new_anonymous_id(), True

    async def signin_page(self, request: Request) -> Response:
        if self.session(request) is not None:
            return RedirectResponse(_safe_next(request.query_params.get("next")), 303)
        binding, fresh = self.anon_binding(request)
        self.desk.warm(self.clock())  # someone is coming: get the dashboard ready
        response = self.page(
            request,
            "signin.html",
            binding=binding,
            next=_safe_next(request.query_params.get("next")),
            sent=False,
        )
        if fresh:
            self.set_cookie(response, request, ANON_COOKIE, binding)
        return response

    async def signin_request(self, request: Request) -> Response:
        binding = request.cookies.get(ANON_COOKIE)
        form = await self.form(request, binding)
        if isinstance(form, Response):
            return form
        now = self.clock()
        address = canonical(" ".join(form.get("email", "").split()))[:254]
        client = request.client.host if request.client else "?"
        wait = self.per_client.hit(client, now) or (
            self.per_address.hit(address, now) if address else 0
        )
        if wait:
            await run_in_threadpool(
                self.desk.record,
                now,
                address or "(nobody)",
                "sign-in refused: too many attempts",
                client,
            )
            response = self.page(
                request,
                "refused.html",
                429,
                binding=binding,
                title="Too many attempts",
                message="Too many sign-in attempts. Try again in "
                f"{count(int(wait // 60) + 1, 'minute')}.",
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        task = None
        if address in self.config.web.admins:
            link = await run_in_threadpool(self.issue_link, address, now)
            await run_in_threadpool(self.desk.send_signin_link, address, link, now)
            await run_in_threadpool(
                self.desk.record, now, address, "sign-in link mailed", "", f"from {client}"
            )
            # Delivery after the answer: a slow relay must not hold the page.
            task = BackgroundTask(self.desk.deliver, now)
        else:
            await run_in_threadpool(
                self.desk.record,
                now,
                address or "(nobody)",
                "sign-in refused: not an admin",
                "",
                f"from {client}",
            )
        # The same answer either way: the page must not tell who is an admin.
        response = self.page(
            request, "signin.html", binding=binding, next="/", sent=True, address=address
        )
        response.background = task
        return response

    def issue_link(self, email: str, now: Any) -> str:
        token = self.auth.issue_link(email, now)
        return f"{site_url(self.config)}/signin/{token}"

    async def link_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        now = self.clock()
        client = request.client.host if request.client else "?"
        binding, fresh = self.anon_binding(request)
        if self.link_tries.hit(client, now):
            return self.page(
                request,
                "refused.html",
                429,
                binding=binding,
                title="Too many attempts",
                message="Too many sign-in attempts "
                "from here. Wait a few minutes and ask for a new link.",
            )
        try:
            email = self.auth.peek_link(token, now)
        except LinkRefused as exc:
            return self.page(
                request,
                "refused.html",
                410,
                binding=binding,
                title="Sign-in link refused",
                message=f"{str(exc).capitalize()}.",
                signin_again=True,
            )
        self.desk.warm(now)  # she is about to sign in: get the dashboard ready
        response = self.page(request, "link.html", binding=binding, email=email, token=token)
        if fresh:
            self.set_cookie(response, request, ANON_COOKIE, binding)
        return response

    async def link_redeem(self, request: Request) -> Response:
        token = request.path_params["token"]
        form = await self.form(request, request.cookies.get(ANON_COOKIE))
        if isinstance(form, Response):
            return form
        now = self.clock()
        client = request.client.host if request.client else "?"
        if self.link_tries.hit(client, now):
            return self.page(
                request,
                "refused.html",
                429,
                title="Too many attempts",
                message="Too many sign-in attempts from here. Wait a few minutes.",
            )
        try:
            email = await run_in_threadpool(self.auth.redeem_link, token, now)
        except LinkRefused as exc:
            return self.page(
                request,
                "refused.html",
                410,
                title="Sign-in link refused",
                message=f"{str(exc).capitalize()}.",
                signin_again=True,
            )
        cookie = await run_in_threadpool(self.auth.open_session, email, now)
        await run_in_threadpool(self.desk.record, now, email, "signed in", "", f"from {client}")
        response = self.redirect(request, "/", f"Signed in as {email}.")
        self.set_cookie(response, request, SESSION_COOKIE, cookie)
        response.delete_cookie(ANON_COOKIE, path="/")
        return response

    async def signout(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_signin(request)
        form = await self.form(request, session.binding)
        if isinstance(form, Response):
            return form
        now = self.clock()
        await run_in_threadpool(self.auth.close_session, request.cookies.get(SESSION_COOKIE), now)
        await run_in_threadpool(self.desk.record, now, session.email, "signed out")
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


class ProgramPages(SiteBase):
    """The dashboard, partnerships, people, quarantine and the audit log."""

    async def dashboard(self, request: Request, session: Session) -> Response:
        now = self.clock()
        snap = await run_in_threadpool(self.desk.snapshot, now)
        return self.page(
            request,
            "dashboard.html",
            session=session,
            s=snap.status,
            snap=snap,
            chart=chart(list(snap.weeks)),
            now=now,
        )

    async def partnerships(self, request: Request, session: Session) -> Response:
        qp = request.query_params
        filters = {k: qp.get(k, "").strip() for k in ("q", "status", "consent", "state")}
        page = _page_number(qp.get("page"))

        def gather() -> tuple[list[str], int]:
            now = self.clock()
            rows, total = self.desk.partnerships_page(now, page=page, **filters)
            snap = self.desk.snapshot(now)
            with self._row_lock:
                if self._row_html[0] is not snap:
                    self._row_html = (snap, {})
                cache = self._row_html[1]
            macro = self.env.get_template("_rows.html").module.partnership_row  # type: ignore[attr-defined]
            html = []
            for r in rows:
                cached = cache.get(r.id)
                if cached is None:
                    cached = cache[r.id] = macro(r)  # Markup: joined unescaped
                html.append(cached)
            return html, total

        rows_html, total = await run_in_threadpool(gather)
        return self.page(
            request,
            "partnerships.html",
            session=session,
            rows_html=rows_html,
            total=total,
            page=page,
            f=filters,
            pages=_pages(request, page, total),
        )

    async def partnership(self, request: Request, session: Session) -> Response:
        pid = _pid(request)
        view = await run_in_threadpool(self.desk.partnership_view, pid, self.clock())
        return self.page(request, "partnership.html", session=session, **view)

    async def partnership_confirm(self, request: Request, session: Session) -> Response:
        pid, action = _pid(request), request.path_params["action"]
        if action not in PARTNERSHIP_ACTIONS:
            return self.page(
                request,
                "refused.html",
                404,
                session=session,
                title="Not found",
                message="No such action.",
            )
        view = await run_in_threadpool(self.desk.partnership_view, pid, self.clock())
        return self.page(
            request,
            "confirm_partnership.html",
            session=session,
            action=action,
            label=PARTNERSHIP_ACTIONS[action],
            **view,
        )

    async def partnership_act(self, request: Request, session: Session) -> Response:
        pid, action = _pid(request), request.path_params["action"]
        form = await self.form(request, session.binding)
        if isinstance(form, Response):
            return form
        now, who, a = self.clock(), session.email, self.desk
        calls: dict[str, Callable[[], str]] = {
            "pause": lambda: a.pause(pid, form.get("until", ""), now, who),
            "resume": lambda: a.resume(pid, now, who),
            "approve": lambda: a.approve(pid, now, who),
            "end": lambda: a.end(pid, now, who),
            "resend-intro": lambda: a.resend_intro(pid, now, who),
            "consent-accepted": lambda: a.record_consent(pid, True, now, who),
            "consent-declined": lambda: a.record_consent(pid, False, now, who),
        }
        if action not in calls:
            return self.page(
                request,
                "refused.html",
                404,
                session=session,
                title="Not found",
                message="No such action.",
            )
        # (resend-intro and consent deliver their mail themselves, as on the command line)
        message = await run_in_threadpool(calls[action])
        return self.redirect(request, f"/partnerships/{pid}", message)

    async def people(self, request: Request, session: Session) -> Response:
        qp = request.query_params
        q, bouncing = qp.get("q", "").strip(), qp.get("bouncing") == "1"
        page = _page_number(qp.get("page"))
        rows, total = await run_in_threadpool(
            lambda: self.desk.people_page(self.clock(), q=q, bouncing=bouncing, page=page)
        )
        return self.page(
            request,
            "people.html",
            session=session,
            rows=rows,
            total=total,
            page=page,
            q=q,
            bouncing=bouncing,
            pages=_pages(request, page, total),
        )

    async def quarantine(self, request: Request, session: Session) -> Response:
        items = await run_in_threadpool(self.desk.quarantine_list)
        return self.page(request, "quarantine.html", session=session, items=items)

    async def quarantine_show(self, request: Request, session: Session) -> Response:
        detail = await run_in_threadpool(self.desk.quarantine_show, request.path_params["qid"])
        return self.page(request, "quarantined.html", session=session, d=detail)

    async def quarantine_confirm(self, request: Request, session: Session) -> Response:
        qid, action = request.path_params["qid"], request.path_params["action"]
        detail = await run_in_threadpool(self.desk.quarantine_show, qid)
        return self.page(
            request, "confirm_quarantine.html", session=session, d=detail, action=action
        )

    async def quarantine_act(self, request: Request, session: Session) -> Response:
        qid, action = request.path_params["qid"], request.path_params["action"]
        form = await self.form(request, session.binding)
        if isinstance(form, Response):
            return form
        now = self.clock()
        if action == "release":
            lines = await run_in_threadpool(self.desk.quarantine_release, qid, now, session.email)
            message = " ".join(lines)
        else:
            message = await run_in_threadpool(self.desk.quarantine_drop, qid, now, session.email)
        return self.redirect(request, "/quarantine", message)  # a release delivered its mail

    async def audit(self, request: Request, session: Session) -> Response:
        page = _page_number(request.query_params.get("page"))
        entries, total = await run_in_threadpool(
            self.desk.audit.entries, (page - 1) * PAGE_SIZE, PAGE_SIZE
        )
        return self.page(
            request,
            "audit.html",
            session=session,
            entries=entries,
            total=total,
            page=page,
            pages=_pages(request, page, total),
        )


class TemplatePages(SiteBase):
    """The template list, the editor with its live preview, versions and rollback."""

    async def templates(self, request: Request, session: Session) -> Response:
        def gather() -> tuple[list[str], list[dict[str, Any]]]:
            problems = self.desk.templates_check()
            items = []
            for name in TEMPLATE_NAMES:
                versions = self.desk.template_versions(name)
                items.append(
                    {
                        "name": name,
                        "own": self.desk.own_parts(name),
                        "latest": versions[0] if versions else None,
                        "count": len(versions),
                        "problems": [x for x in problems if f"/{name}." in x],
                    }
                )
            return problems, items

        problems, items = await run_in_threadpool(gather)
        return self.page(
            request,
            "templates.html",
            session=session,
            items=items,
            problems=problems,
            folder=self.desk.templates_dir,
        )

    async def template_editor(self, request: Request, session: Session) -> Response:
        name = _template_name(request)
        source = await run_in_threadpool(self.desk.template_source, name)
        result = await run_in_threadpool(self.desk.template_try, name, source)
        return self.editor(request, session, name, source, result)

    def editor(
        self,
        request: Request,
        session: Session,
        name: str,
        source: dict[str, str],
        result: TryResult,
        status: int = 200,
        note: str = "",
    ) -> Response:
        files = self.desk.template_files(name)
        return self.page(
            request,
            "editor.html",
            status,
            session=session,
            name=name,
            source=source,
            result=result,
            files=files,
            note=note,
            target=self.desk.templates_dir,
        )

    async def template_preview(self, request: Request, session: Session) -> Response:
        name = _template_name(request)
        form = await self.form(request, session.binding)
        if isinstance(form, Response):
            return JSONResponse({"error": "refused: reload the page"}, status_code=403)
        result = await run_in_threadpool(self.desk.template_try, name, _parts(form))
        return JSONResponse(_result_json(result))

    async def template_save(self, request: Request, session: Session) -> Response:
        name = _template_name(request)
        form = await self.form(request, session.binding)
        if isinstance(form, Response):
            return form
        now, parts = self.clock(), _parts(form)
        if form.get("op") == "test":
            message = await run_in_threadpool(
                self.desk.template_send_test,
                name,
                parts,
                form.get("variant", ""),
                now,
                session.email,
            )
            response = self.editor(
                request,
                session,
                name,
                parts,
                await run_in_threadpool(self.desk.template_try, name, parts),
                note=message,
            )
            response.background = BackgroundTask(self.desk.deliver, now)
            return response
        result = await run_in_threadpool(self.desk.template_save, name, parts, now, session.email)
        if not result.ok:
            return self.editor(
                request,
                session,
                name,
                parts,
                result,
                422,
                note="Not saved: the template has problems (below).",
            )
        return self.redirect(request, f"/templates/{name}", f"Saved {name}.")

    async def template_versions(self, request: Request, session: Session) -> Response:
        name = _template_name(request)
        versions = await run_in_threadpool(self.desk.template_versions, name)
        return self.page(request, "versions.html", session=session, name=name, versions=versions)

    async def rollback_confirm(self, request: Request, session: Session) -> Response:
        name, n = _template_name(request), int(request.path_params["n"])
        versions = await run_in_threadpool(self.desk.template_versions, name)
        version = next((v for v in versions if v.n == n), None)
        if version is None:
            return self.page(
                request,
                "refused.html",
                404,
                session=session,
                title="Not found",
                message=f"{name} has no version {n}.",
            )
        return self.page(
            request, "confirm_rollback.html", session=session, name=name, version=version
        )

    async def rollback(self, request: Request, session: Session) -> Response:
        name, n = _template_name(request), int(request.path_params["n"])
        form = await self.form(request, session.binding)
        if isinstance(form, Response):
            return form
        result = await run_in_threadpool(
            self.desk.template_rollback, name, n, self.clock(), session.email
        )
        if not result.ok:
            source = await run_in_threadpool(self.desk.template_source, name)
            return self.editor(
                request,
                session,
                name,
                source,
                result,
                422,
                note=f"Version {n} no longer passes the check; not restored.",
            )
        return self.redirect(
            request,
            f"/templates/{name}/versions",
            f"{name} is back at version {n} (saved as a new version).",
        )


class Site(SignInPages, ProgramPages, TemplatePages):
    """The admin site's state and handlers, built by `build_app`."""


def build_app(config: Config, desk: WebAdmin, clock: Clock) -> Starlette:
    """The admin site as an ASGI app, for `desk` (the domain) with `clock` (the time)."""
    site = Site(config, desk, clock)
    g = site.guarded
    routes = [
        Route("/signin", site.signin_page, methods=["GET"]),
        Route("/signin", site.signin_request, methods=["POST"]),
        Route("/signin/{token}", site.link_page, methods=["GET"]),
        Route("/signin/{token}", site.link_redeem, methods=["POST"]),
        Route("/signout", site.signout, methods=["POST"]),
        Route("/", g(site.dashboard)),
        Route("/partnerships", g(site.partnerships)),
        Route("/partnerships/{pid:int}", g(site.partnership)),
        Route("/partnerships/{pid:int}/{action}", g(site.partnership_confirm), methods=["GET"]),
        Route("/partnerships/{pid:int}/{action}", g(site.partnership_act), methods=["POST"]),
        Route("/people", g(site.people)),
        Route("/templates", g(site.templates)),
        Route("/templates/{name}", g(site.template_editor), methods=["GET"]),
        Route("/templates/{name}", g(site.template_save), methods=["POST"]),
        Route("/templates/{name}/preview", g(site.template_preview), methods=["POST"]),
        Route("/templates/{name}/versions", g(site.template_versions)),
        Route(
            "/templates/{name}/versions/{n:int}/rollback", g(site.rollback_confirm), methods=["GET"]
        ),
        Route("/templates/{name}/versions/{n:int}/rollback", g(site.rollback), methods=["POST"]),
        Route("/quarantine", g(site.quarantine)),
        Route("/quarantine/{qid}", g(site.quarantine_show)),
        Route("/quarantine/{qid}/{action:str}", g(site.quarantine_confirm), methods=["GET"]),
        Route("/quarantine/{qid}/{action:str}", g(site.quarantine_act), methods=["POST"]),
        Route("/audit", g(site.audit)),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: site.not_found, 500: site.server_error})
    app.state.site = site
    return SecurityHeaders(app)  # type: ignore[return-value]


# -- running it --------------------------------------------------------------------------------


class WebServer:
    """uvicorn in a thread of its own, on a socket bound before the thread starts."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Listen, or raise StartupError saying why (the port is taken, most often)."""
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise StartupError(
                f"web: cannot listen on {self.host}:{self.port}: {why} (is `mailflow serve` "
                "or `mailflow web` already running? change [web] port, or set "
                "[web] enabled = false for serve)"
            ) from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            timeout_graceful_shutdown=3,
            server_header=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self._run, args=(sock,), name="mailflow-web", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise StartupError(f"web: the server on {self.host}:{self.port} did not start")
            time.sleep(0.02)
        log.info("admin site on %s:%d", self.host, self.port)

    def _run(self, sock: socket.socket) -> None:
        assert self.server is not None
        try:
            asyncio.run(self.server.serve(sockets=[sock]))
        finally:
            sock.close()

    def stop(self) -> None:
        if self.server is None or self.thread is None:
            return
        self.server.should_exit = True
        self.thread.join(timeout=8)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=3)
        log.info("admin site stopped")


def start_site(parts: Parts, clock: Clock) -> WebServer:
    """Build and start the admin site on `[web] host/port` over the parts of a running app
    (StartupError when it cannot listen)."""
    config = parts.config
    server = WebServer(build_app(config, WebAdmin(parts), clock), config.web.host, config.web.port)
    server.start()
    return server


# -- small helpers for the handlers --------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    """Only a path on this site (no scheme, no host, no //): never an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _pid(request: Request) -> int:
    return int(request.path_params["pid"])


def _template_name(request: Request) -> str:
    name = request.path_params["name"]
    if name not in TEMPLATE_NAMES:
        raise MailflowError(f"unknown template {name!r}")
    return str(name)


def _parts(form: dict[str, str]) -> dict[str, str]:
    return {part: form.get(part, "") for part in PARTS}


def _page_number(value: str | None) -> int:
    try:
        return max(1, min(int(value or 1), 100_000))
    except ValueError:
        return 1


def _pages(request: Request, page: int, total: int) -> dict[str, str | int | None]:
    last = max(1, -(-total // PAGE_SIZE))
    params = dict(request.query_params)

    def link(n: int) -> str:
        return f"{request.url.path}?{urlencode({**params, 'page': n})}"

    return {
        "page": page,
        "last": last,
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < last else None,
    }


def _result_json(result: TryResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "problems": [
            {
                "text": p.text,
                "message": p.message,
                "part": p.part,
                "line": p.line,
                "label": PART_LABELS.get(p.part or "", ""),
            }
            for p in result.problems
        ],
        "previews": [
            {
                "label": v.label,
                "subject": v.subject,
                "text": v.text,
                "html": v.html,
                "error": v.error,
            }
            for v in result.previews
        ],
    }


def chart(weeks: list[WeekPoint]) -> dict[str, Any]:
    """Coordinates of the 12-week chart (an inline SVG, drawn by dashboard.html)."""
    width, height, left, right, top, bottom = 640, 220, 44, 12, 14, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(1, len(weeks) - 1)

    def y(value: float) -> float:
        return round(top + plot_h * (1 - value), 1)

    def line(values: list[float | None]) -> list[str]:
        # A week without data breaks the line rather than pretending it was 0.
        segments: list[list[str]] = [[]]
        for i, v in enumerate(values):
            if v is None:
                segments.append([])
            else:
                segments[-1].append(f"{round(left + i * step, 1)},{y(v)}")
        return [" ".join(s) for s in segments if s]

    reply = [w.reply_rate for w in weeks]
    setback = [w.setback_rate for w in weeks]
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - right,
        "top": top,
        "bottom": top + plot_h,
        "grid": [{"y": y(v), "label": f"{round(v * 100)}%"} for v in (0, 0.25, 0.5, 0.75, 1)],
        "ticks": [
            {"x": round(left + i * step, 1), "label": w.period.split("-")[1]}
            for i, w in enumerate(weeks)
        ],
        "reply": line(reply),
        "setback": line(setback),
        "points": [
            {
                "x": round(left + i * step, 1),
                "reply": y(r) if r is not None else None,
                "setback": y(s) if s is not None else None,
            }
            for i, (r, s) in enumerate(zip(reply, setback, strict=True))
        ],
        "weeks": weeks,
    }
