"""Wiring: build the parts from one Config and start them. No rule lives here.

`build(config)` is the one entry point for anything that runs mailflow: the CLI, `serve`,
the demo, the tests, the benches, and a web server. It is cheap (it opens the data
directory, reads the template files and the token key; it does not parse a period file), so
a caller can build once and keep the `App`, whose parts are:

| part | what it does |
|---|---|
| `store`, `spool`, `outbox` | the data directory: records, accepted mail, outgoing mail |
| `templates` | the last good set of mail templates |
| `svc` | what letters need to know about the service (addresses, keys, settings) |
| `mailroom` | a `Letter` becomes queued mail |
| `intake` | spooled mail becomes records (`ingest`) |
| `jobs` | the week's jobs (`run_and_deliver`, `introduce`) |

`App.tick(now)` runs everything due at `now` once; `App.listener(clock)` makes the SMTP
listener on this app's spool; `App.start_site(clock)` starts the admin site over these same
parts; `serve(app, clock, stop)` runs listener, ingest, sender and scheduler (and the site,
unless `[web] enabled = false`) until `stop` is set. The sender is woken by ingest whenever it
queued mail, so a receipt, a forwarded note or a consent confirmation leaves seconds after the
reply that caused it, not at the next tick. Every part reads the clock only through the `now`
it is handed; the edges (the CLI, `serve`, the tests) hold the clock.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import pickle
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import schedule as schedule_lib

from mailflow import status
from mailflow.clock import Clock, JumpWatch
from mailflow.compose import Templates
from mailflow.config import Config, templates_override
from mailflow.errors import ListenerError, StartupError
from mailflow.intake import Intake
from mailflow.jobs import Jobs
from mailflow.letters import ServiceInfo
from mailflow.mailroom import Mailroom, TickReport
from mailflow.outbox import Outbox
from mailflow.spool import Spool
from mailflow.store import Store
from mailflow.tokens import Rcpt
from mailflow.triage import Trust

if TYPE_CHECKING:  # the listener (aiosmtpd) and the site (uvicorn) only by what runs them
    from mailflow.inbox import Listener
    from mailflow.web import WebServer

log = logging.getLogger("mailflow")

INGEST_GATHER_SECONDS = 0.1  # serve: how long an ingest round waits for more mail to batch
# serve with ingest in a thread: how long a thread may hold the GIL while another waits for
# it (Python's default is 5 ms). The listener's thread wakes for every SMTP command and
# finished spool write; behind the parser it waited up to that long each time.
THREADED_SWITCH_SECONDS = 0.0005
KEY_FILE = "secret.key"


def load_secret(config: Config) -> bytes:
    """The token key: from `service.secret_env` (read at config load) when set, else a key
    made once in data_dir/secret.key (never overwritten: another process may have made it)."""
    value = config.secret(config.service.secret_env)
    if value:
        return value.encode("utf-8")
    data_dir = config.service.data_dir
    path = data_dir / KEY_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # never overwrite a key another process made first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


class App:
    """The parts of one mailflow, built from one Config by `build`."""

    def __init__(self, config: Config, templates: Templates | None = None) -> None:
        self.config = config
        self.data_dir = config.service.data_dir
        self.store = Store(self.data_dir)
        self.store.init()
        self.templates = templates or Templates(templates_override(config))
        self.svc = ServiceInfo.from_config(config, load_secret(config))
        relay = config.relay
        password = config.secret(relay.password_env) if relay.host else None
        bounces = self.svc.keys.bounce_address
        self.outbox = Outbox(self.store, relay, password, bounces, self.data_dir)
        self.spool = Spool(self.data_dir / "spool")
        self.mailroom = Mailroom(self.store, self.outbox, self.templates, self.svc)
        trust = Trust(config.listener.trusted_authserv_id)
        self.intake = Intake(self.store, self.spool, self.mailroom, self.svc, self.data_dir, trust)
        self.jobs = Jobs(self.store, self.mailroom, self.svc)

    def ingest(self, now: datetime) -> TickReport:
        """Turn what the spool holds into records (see `intake`)."""
        return self.intake.ingest(now)

    def tick(self, now: datetime) -> TickReport:
        """Everything due at `now`, once: ingest spooled mail, queue jobs, deliver; then what
        the store found wrong with its files on the way (each named, as `error`/`warning`
        lines: a broken file stops only what needs it, and the caller must hear of it)."""
        out = self.intake.ingest(now)
        out.extend(self.jobs.run_and_deliver(now))
        out.add_problems(self.store.take_problems())
        return out

    def status(self, now: datetime) -> dict[str, Any]:
        """The `status --json` dict at `now`."""
        return status.status(self.store, self.spool, self.outbox, self.svc.settings, now)

    def rcpt_policy(self, address: str) -> Rcpt:
        """RCPT: only our signed reply addresses, the plain address and the bounce address."""
        return self.svc.keys.rcpt(address)[0]

    def listener(
        self, clock: Clock, on_spooled: Callable[[str], None] | None = None, **overrides: Any
    ) -> Listener:
        """The SMTP listener of this app's config (not started); `overrides` replace fields
        of its `ListenerOptions` (a test's port, a smaller size limit, ...)."""
        from mailflow.inbox import Listener, options_from_config

        # Every [listener] key, plus the banner's domain and the disk floor: one place.
        options = options_from_config(
            self.config, auth_users=self.config.listener.auth_users(self.config.secrets)
        )
        notify = on_spooled or _ignore
        return Listener(replace(options, **overrides), self.spool, self.rcpt_policy, notify, clock)

    def start_site(self, clock: Clock) -> WebServer:
        """Start the admin site on `[web] host/port` over this app's parts (it shares their
        store, spool, outbox and templates); StartupError, saying why, when it cannot listen.
        """
        from mailflow.web import start_site

        return start_site(self, clock)


def build(config: Config, *, templates: Templates | None = None) -> App:
    """The parts of mailflow for `config` (see the module docstring); `templates` lets a
    caller that already holds a checked set share it."""
    return App(config, templates)


def _ignore(_entry_id: str) -> None:
    pass


# -- serve --------------------------------------------------------------------------------------


def serve(
    app: App,
    clock: Clock,
    stop: threading.Event,
    ready: Callable[[], None] | None = None,
    *,
    ingest_process: bool | None = None,
    site: bool | None = None,
) -> None:
    """Listener + ingest process (or thread) + scheduler loop (+ admin site) until `stop`.

    Refuses to start (StartupError) with a broken template, a listener that cannot listen,
    or an ingest process without a clock that can cross to it. `ingest_process` None: the
    config's `listener.ingest_process`; `site` None: the config's `web.enabled`. The site
    starts after the mail service's own start checks and its first tick; it is for people,
    and mail must not wait for it: if its port is taken, serve logs why and goes on without
    it (`mailflow web` alone fails instead). `ready` is called once everything runs.
    """
    problems = app.templates.check()
    if problems:
        raise StartupError("templates have errors; fix them first: " + "; ".join(problems))
    # Only `serve` clears half-written files: a CLI command running next to it must not
    # delete what the running listener or sender is writing at that moment.
    app.spool.recover()
    app.outbox.init()
    if ingest_process is None:
        ingest_process = app.config.listener.ingest_process
    worker = _IngestWorker(app.config, clock) if ingest_process else _IngestThread(app, clock)
    switch = sys.getswitchinterval()
    if not ingest_process:
        sys.setswitchinterval(THREADED_SWITCH_SECONDS)
    try:
        _serve(app, clock, stop, ready, worker, site)
    finally:
        sys.setswitchinterval(switch)


def _serve(
    app: App,
    clock: Clock,
    stop: threading.Event,
    ready: Callable[[], None] | None,
    worker: _IngestThread | _IngestWorker,
    site: bool | None,
) -> None:
    worker.start()
    sender = _Sender(app, clock, worker.queued)
    sender.start()
    try:
        listener = app.listener(clock, lambda _id: worker.wake.set())
        listener.start()
    except BaseException as exc:
        worker.stop()
        sender.stop()
        if isinstance(exc, ListenerError | OSError):
            raise StartupError(f"cannot start: {exc}") from None
        raise
    lc = app.config.listener
    log.info("listening on %s:%d for *@%s", lc.host, lc.port, app.svc.domain)
    since = clock()

    def refusals() -> None:  # for `status`: what the listener refused since we started
        counts = listener.refusals
        if counts != app.spool.refusals().get("counts", {}):
            app.spool.record_refusals(counts, since)

    sites: list[WebServer] = []

    def started() -> None:
        if app.config.web.enabled if site is None else site:
            try:
                sites.append(app.start_site(clock))
            except StartupError as exc:
                log.error("admin site not started (mail goes on): %s", exc)
        if ready is not None:
            ready()

    try:
        _schedule(app, clock, stop, worker, started, refusals)
    finally:
        log.info("stopping")
        for running in sites:
            running.stop()  # first: a page in flight may still queue mail
        listener.stop()
        refusals()
        worker.stop()
        sender.stop()
        log.info("stopped")


def _give_back_memory() -> None:
    """Hand the memory a tick freed back to the system (glibc's malloc_trim; elsewhere a
    no-op): a tick builds and drops tens of MB of records and letters, and without this the
    freed heap stays in `serve`'s RSS until the next tick reuses it."""
    gc.collect()
    with suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _schedule(
    app: App,
    clock: Clock,
    stop: threading.Event,
    worker: _IngestThread | _IngestWorker,
    ready: Callable[[], None] | None,
    after_tick: Callable[[], None] = lambda: None,
) -> None:
    """The scheduler loop: a tick every `tick_seconds` (and one at once, to catch up)."""
    scheduler = schedule_lib.Scheduler()

    def scheduled_tick() -> None:
        try:
            after_tick()
            for problem in app.templates.refresh():
                log.error("template not used (last good version stays): %s", problem)
            app.jobs.run_and_deliver(clock())
            # Logged by the store as it found them; taken so that a file still broken at
            # the next tick is logged again (and a repaired one no longer is).
            app.store.take_problems()
            _give_back_memory()
        except Exception:  # noqa: BLE001 - a failed tick is retried at the next one
            log.exception("tick failed; will retry")

    tick_seconds = app.config.schedule.tick_seconds
    scheduler.every(tick_seconds).seconds.do(scheduled_tick)
    worker.wake.set()  # process anything a previous run left in the spool
    scheduled_tick()
    if ready is not None:
        ready()
    watch = JumpWatch()
    watch.jumped()
    while not stop.is_set():
        jump = watch.jumped()
        if jump is not None:
            # `schedule` compares naive local time: after a step back (or the zone leaving
            # DST) its next run would lie that far ahead. Re-armed from now, and a tick at
            # once (ticks are idempotent), so a clock step delays nothing.
            log.warning("wall clock jumped by %s; scheduler re-armed", jump)
            scheduler.clear()
            scheduler.every(tick_seconds).seconds.do(scheduled_tick)
            scheduled_tick()
        scheduler.run_pending()
        if not worker.alive():
            log.error("ingest process stopped (exit %s); starting a new one", worker.exitcode())
            worker.start()
        stop.wait(timeout=min(1.0, tick_seconds))


def _ingest_loop(
    app: App, clock: Clock, wake: Any, stop: Any, parent: int | None, queued: Any
) -> None:
    """Wait for spooled mail and ingest it in batches until `stop` (or the parent is gone);
    set `queued` whenever a batch queued mail, to wake the sender."""
    while not stop.is_set():
        if wake.wait(timeout=1.0):
            # Group commit: let the messages arriving meanwhile join this batch, so the
            # period file is rewritten once per batch, not once per message.
            stop.wait(INGEST_GATHER_SECONDS)
        wake.clear()
        if stop.is_set() or (parent is not None and os.getppid() != parent):
            break  # a SIGKILLed `serve` must not leave an orphan ingesting behind it
        try:
            if app.ingest(clock()).queued:
                queued.set()
        except Exception:  # noqa: BLE001 - keep serving; the spool keeps the mail
            log.exception("ingest failed; will retry")


class _Sender:
    """Delivers what ingest queued as soon as it is queued (the scheduler's tick delivers
    the rest). One flush at a time across processes: the outbox's lock."""

    def __init__(self, app: App, clock: Clock, queued: Any) -> None:
        self.app, self.clock, self.queued = app, clock, queued
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="mailflow-sender", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            if not self.queued.wait(timeout=1.0):
                continue
            self.queued.clear()
            try:
                result = self.app.outbox.flush(self.clock())
            except Exception:  # noqa: BLE001 - the tick delivers it then
                log.exception("send failed; the next tick retries")
                continue
            if result.busy:  # another process is delivering: try again shortly
                self.queued.set()
                self.stop_event.wait(1.0)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


class _IngestThread:
    """Ingest in a thread of `serve` (the default)."""

    def __init__(self, app: App, clock: Clock) -> None:
        self.app, self.clock = app, clock
        self.wake = threading.Event()
        self.queued = threading.Event()  # set when a batch queued mail (wakes the sender)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(
            target=_ingest_loop,
            args=(self.app, self.clock, self.wake, self.stop_event, None, self.queued),
            name="mailflow-ingest",
            daemon=True,
        )
        self.thread.start()

    def alive(self) -> bool:
        return True  # a thread's failures are caught and logged inside its loop

    def exitcode(self) -> int | None:
        return None

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=5)


def _ingest_process(
    config: Config, clock: Clock, wake: Any, stop: Any, parent: int, queued: Any
) -> None:
    """Entry point of the ingest process (spawned: a fresh interpreter, no inherited locks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = build(config)
    wake.set()  # whatever is in the spool already
    _ingest_loop(app, clock, wake, stop, parent, queued)


class _IngestWorker:
    """The ingest process of `serve` (`listener.ingest_process`), restarted if it dies.

    Parsing is the costly part of taking a reply; in a process of its own the listener and
    the parser use both cores (the spool and the store already work across processes). The
    process gets the same clock, which must therefore be a value that pickles (see `clock`).
    """

    def __init__(self, config: Config, clock: Clock) -> None:
        try:
            pickle.dumps(clock)
        except (pickle.PicklingError, AttributeError, TypeError):
            raise StartupError(
                "listener.ingest_process needs a clock that can be sent to another process"
            ) from None
        self.context = multiprocessing.get_context("spawn")
        self.config = config
        self.clock = clock
        self.wake = self.context.Event()
        self.queued = self.context.Event()  # set by the process when it queued mail
        self.stop_event = self.context.Event()
        self.process: Any = None

    def start(self) -> None:
        self.process = self.context.Process(
            target=_ingest_process,
            args=(self.config, self.clock, self.wake, self.stop_event, os.getpid(), self.queued),
            name="mailflow-ingest",
            daemon=True,
        )
        self.process.start()

    def alive(self) -> bool:
        return bool(self.process is not None and self.process.is_alive())

    def exitcode(self) -> int | None:
        return None if self.process is None else self.process.exitcode

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        if self.process is not None:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=2)


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop` (serve then shuts down in order)."""

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
