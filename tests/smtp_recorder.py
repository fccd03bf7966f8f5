"""A real SMTP server on loopback that records what it receives, with knobs for faults.

Used wherever a test needs "the relay": the outbox tests, the end-to-end tests of `serve`
and `tick`, the fault tests of the fan-out. It is aiosmtpd on 127.0.0.1 (pinned: the default
host may resolve to ::1) on a port chosen with `free_port()`, so tests run in parallel.

    with RecordingSMTPServer() as relay:
        ...  # point [relay] host/port at "127.0.0.1", relay.port
        got = relay.wait_for(3, timeout=5)        # bounded; raises AssertionError on timeout
        assert got[0].rcpt_tos == ("a@example.com",)
        assert "Done:" in text_of(got[0])           # the plain part (html_of: the HTML part)

Faults (set them at any time from the test thread; the server reads them under a lock):
- `refuse_rcpt[address] = "550 5.1.1 no such user"` (or a 4xx): RCPT answer for that address.
- `refuse_data[address] = "554 5.6.0 rejected"`: DATA answer when that address is a recipient.
- `fail_next_connections = N`: the next N sessions get `421` as their greeting and are closed.
- `drop_next_data = N`: the next N DATA commands close the connection without an answer
  (the relay dies mid-batch; the message is not recorded). With `drop_after_data = K` the
  first K DATA commands still pass, so a batch breaks after K messages.
- `drop_data_for = {address}`: a DATA for that recipient is read in full and then the
  connection is closed without an answer, every time (a poison message that crashes the
  relay's content filter).
- `on_message = callable`: called with each RecordedMessage as it is accepted (on the
  server's thread, before the 250 goes out), e.g. to fill a disk at that moment.
- `down()` / `up()`: stop and start listening on the same port (connections are refused).
TLS and AUTH, for the client's real STARTTLS/implicit-TLS/login path: `starttls=True` or
`implicit_tls=True` make a self-signed certificate for 127.0.0.1/localhost (openssl CLI, or
`cryptography` when installed); `client_context()` returns an SSLContext that trusts it.
`auth={"user": "secret"}` requires AUTH (PLAIN/LOGIN) before MAIL.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

try:
    from conftest import free_port
except ImportError:  # pragma: no cover - imported from outside tests/
    import socket

    def free_port() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


HOST = "127.0.0.1"


@dataclass(frozen=True)
class RecordedMessage:
    """One message the server accepted with 250."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    session: int  # 1-based number of the connection it arrived on
    tls: bool
    auth_login: str | None


def text_of(msg: RecordedMessage) -> str:
    """The plain-text part of a recorded message."""
    body = msg.message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def html_of(msg: RecordedMessage) -> str:
    """The HTML part of a recorded message."""
    body = msg.message.get_body(preferencelist=("html",))
    assert body is not None
    return str(body.get_content())


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for 127.0.0.1 and localhost; returns (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    openssl = shutil.which("openssl")
    if openssl:
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return cert, key
    return _cert_with_cryptography(cert, key)  # pragma: no cover - depends on the machine


def _cert_with_cryptography(cert: Path, key: Path) -> tuple[Path, Path]:  # pragma: no cover
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    # OpenSSL checks validity against the real system time, whatever clock a test simulates:
    # a fixed, wide window works on any date.
    start = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(dt.datetime(2999, 12, 31, tzinfo=dt.UTC))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .sign(pkey, hashes.SHA256())
    )
    key.write_bytes(
        pkey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert, key


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP with the connection-level faults the recorder can inject."""

    def __init__(self, recorder: RecordingSMTPServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorder = recorder
        self.session_no = 0
        if recorder.implicit_tls:
            # aiosmtpd only counts STARTTLS as TLS, so it would hide AUTH on an implicit-TLS
            # port; asking it with auth_require_tls=False instead warns on every session.
            self._auth_require_tls = False

    async def _handle_client(self) -> None:
        fail, self.session_no = self._recorder._on_connect()
        if fail:
            await self.push("421 4.3.2 Service not available, closing transmission channel")
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str) -> None:
        if self._recorder._should_drop():
            # Close without an answer, as a relay that crashes would; raising CancelledError
            # ends the session the same way aiosmtpd handles a reset connection.
            assert self.transport is not None
            self.transport.close()
            raise asyncio.CancelledError
        await super().smtp_DATA(arg)


class _Handler:
    def __init__(self, recorder: RecordingSMTPServer) -> None:
        self._recorder = recorder

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        answer = self._recorder._lookup("refuse_rcpt", address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._recorder._poisoned(envelope.rcpt_tos):
            # Close after the whole message arrived, without an answer.
            assert server.transport is not None
            server.transport.close()
            raise asyncio.CancelledError
        for rcpt in envelope.rcpt_tos:
            answer = self._recorder._lookup("refuse_data", rcpt)
            if answer:
                return answer
        raw = envelope.original_content or b""
        if not isinstance(raw, bytes):  # pragma: no cover - decode_data is off
            raw = raw.encode("utf-8", "surrogateescape")
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)
        login = getattr(session.auth_data, "login", None)
        self._recorder._record(
            RecordedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                raw=raw,
                message=parsed,
                session=getattr(server, "session_no", 0),
                tls=session.ssl is not None or _implicit_tls(server),
                auth_login=login.decode("utf-8", "replace") if isinstance(login, bytes) else None,
            )
        )
        return "250 2.0.0 OK queued"


def _implicit_tls(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("sslcontext") is not None


class RecordingSMTPServer:
    """A recording relay on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        port: int | None = None,
        starttls: bool = False,
        implicit_tls: bool = False,
        auth: dict[str, str] | None = None,
        cert_dir: Path | None = None,
    ) -> None:
        if starttls and implicit_tls:
            raise ValueError("starttls and implicit_tls are exclusive")
        self.host = HOST
        self.port = port or free_port()
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.auth = dict(auth) if auth else None
        self.refuse_rcpt: dict[str, str] = {}
        self.refuse_data: dict[str, str] = {}
        self.fail_next_connections = 0
        self.drop_next_data = 0
        self.drop_after_data = 0
        self.drop_data_for: set[str] = set()
        self.dropped = 0  # DATA transactions closed by drop_data_for
        self.on_message: Any = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._messages: list[RecordedMessage] = []
        self._connections = 0
        self._ready = False  # connections before this are the controller's own start probe
        self._controller: Controller | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.cert: Path | None = None
        self.key: Path | None = None
        if starttls or implicit_tls:
            if cert_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="smtp-recorder-")
                cert_dir = Path(self._tmp.name)
            self.cert, self.key = make_self_signed_cert(cert_dir)

    # -- what tests read ----------------------------------------------------------------------

    @property
    def messages(self) -> list[RecordedMessage]:
        """A copy of everything accepted so far, in arrival order."""
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """Client sessions opened so far (including ones refused with 421)."""
        with self._lock:
            return self._connections

    def wait_for(self, n: int, timeout: float = 10.0) -> list[RecordedMessage]:
        """Block until at least n messages arrived; AssertionError after timeout seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"relay got {len(self._messages)} messages, expected {n} within {timeout} s"
                    )
                self._cond.wait(left)
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._connections = 0

    def client_context(self) -> ssl.SSLContext:
        """An SSLContext that verifies this server's certificate (hostname checked too)."""
        if self.cert is None:
            raise RuntimeError("server runs without TLS")
        return ssl.create_default_context(cafile=str(self.cert))

    # -- lifecycle ------------------------------------------------------------------------------

    def _server_context(self) -> ssl.SSLContext:
        assert self.cert is not None and self.key is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def _factory(self) -> SMTP:
        kwargs: dict[str, Any] = {"hostname": "relay.test", "enable_SMTPUTF8": True, "timeout": 30}
        if self.starttls:
            kwargs.update(tls_context=self._server_context(), require_starttls=True)
        if self.auth is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        return _FaultySMTP(self, _Handler(self), **kwargs)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.auth is not None
            and self.auth.get(auth_data.login.decode("utf-8", "replace"))
            == auth_data.password.decode("utf-8", "replace")
        )
        # handled=False so a failure gets its 535 answer (the default sends none).
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def up(self) -> None:
        """Start listening (again) on the same port."""
        if self._controller is not None:
            return
        with self._lock:
            self._ready = False
        ctl = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            ssl_context=self._server_context() if self.implicit_tls else None,
            ready_timeout=10,
        )
        ctl.factory = self._factory  # type: ignore[method-assign]
        ctl.start()
        with self._lock:
            self._ready = True
        self._controller = ctl

    def down(self) -> None:
        """Stop listening; new connections are refused until up()."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    start = up

    def stop(self) -> None:
        self.down()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RecordingSMTPServer:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- called on the server's event-loop thread -------------------------------------------

    def _on_connect(self) -> tuple[bool, int]:
        with self._lock:
            if not self._ready:
                return False, 0
            self._connections += 1
            if self.fail_next_connections > 0:
                self.fail_next_connections -= 1
                return True, self._connections
            return False, self._connections

    def _should_drop(self) -> bool:
        with self._lock:
            if self.drop_next_data <= 0:
                return False
            if self.drop_after_data > 0:
                self.drop_after_data -= 1
                return False
            self.drop_next_data -= 1
            return True

    def _poisoned(self, rcpts: list[str]) -> bool:
        with self._lock:
            if any(r.lower() in self.drop_data_for for r in rcpts):
                self.dropped += 1
                return True
            return False

    def _lookup(self, knob: str, address: str) -> str | None:
        with self._lock:
            table: dict[str, str] = getattr(self, knob)
            return table.get(address) or table.get(address.lower())

    def _record(self, msg: RecordedMessage) -> None:
        if self.on_message is not None:
            self.on_message(msg)
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()
