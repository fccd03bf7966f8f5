"""Configuration: built-in defaults, overlaid by a TOML file, checked key by key.

Every key is optional so the service runs with no file at all. A wrong type or value is
refused at start with the key's dotted name, so an operator sees exactly what to fix.
Secrets never live in the file: it only names the environment variables that hold them.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from mailflow import hints
from mailflow.addresses import canonical
from mailflow.errors import ConfigError

WEEKDAYS = hints.WEEKDAYS


DEFAULT_FROM_NAME = "mailflow"


@dataclass(frozen=True)
class ServiceConfig:
    domain: str = "mailflow.localhost"
    # "ADDRESS" or "NAME <ADDRESS>", as every mail program writes it; empty: "mailflow@" + domain
    from_address: str = ""
    from_name: str = ""  # the display name, when from_address carries none ("": "mailflow")
    data_dir: Path = Path("data")
    timezone: str = "UTC"
    admin_address: str = ""
    secret_env: str = "MAILFLOW_SECRET"
    # Below this much free space (MB) where data_dir lives, the listener answers 452 and
    # the space left is kept for the database and the queue (Postfix: queue_minfree).
    min_free_mb: int = 100

    @property
    def sender(self) -> str:
        """The From address alone (no display name): what mail is sent from."""
        return split_address(self.from_address)[1] or f"mailflow@{self.domain}"

    @property
    def sender_name(self) -> str:
        """The display name of our From: from_address's own, else from_name, else mailflow."""
        return split_address(self.from_address)[0] or self.from_name or DEFAULT_FROM_NAME


@dataclass(frozen=True)
class ListenerConfig:
    host: str = "127.0.0.1"
    port: int = 2525
    max_message_bytes: int = 10 * 1024 * 1024
    timeout_seconds: int = 60
    max_connections: int = 200
    # Parse replies in a second process (uses a second core: ~1.5x the ingest rate, about
    # twice the memory). Off: a thread of `serve` does it.
    ingest_process: bool = False
    # Optional STARTTLS and AUTH, for a listener that faces other servers directly.
    tls_cert: Path | None = None  # PEM certificate (chain); with tls_key, offers STARTTLS
    tls_key: Path | None = None
    require_starttls: bool = False  # refuse MAIL before STARTTLS
    auth_username: str = ""  # set: AUTH required (only over TLS) before MAIL
    auth_password_env: str = "MAILFLOW_LISTENER_PASSWORD"
    # Floods (issue 12): sessions per client address (0: no cap); the MTA in front is exempt.
    max_sessions_per_client: int = 10
    trusted_peers: tuple[str, ...] = ("127.0.0.1", "::1")  # addresses or networks (CIDR)
    # Mail held (waiting or quarantined) for anything but a reply address: per envelope
    # sender and in all; over either, RCPT gets 452 (0: no quota).
    quarantine_max_per_sender: int = 20
    quarantine_max_mb: int = 100
    # The authserv-id of the MTA in front (RFC 8601), e.g. "mx.example.com": its topmost
    # Authentication-Results header with dmarc=pass proves a sender's address ("": none
    # counts). Such headers from anyone else are ignored.
    trusted_authserv_id: str = ""

    def auth_users(self, environ: Mapping[str, str]) -> dict[str, str] | None:
        """{username: password} for the listener's AUTH, or None when AUTH is off."""
        if not self.auth_username:
            return None
        password = environ.get(self.auth_password_env, "")
        if not password:
            raise ConfigError(
                f"listener.auth_password_env: environment variable {self.auth_password_env} "
                "is not set (it holds the AUTH password for listener.auth_username)"
            )
        return {self.auth_username: password}


SMTPUTF8_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class RelayConfig:
    host: str = ""  # empty: write each message to data_dir/outbox/*.eml
    port: int = 587
    starttls: bool = False
    ssl: bool = False
    username: str = ""
    password_env: str = "MAILFLOW_RELAY_PASSWORD"
    timeout_seconds: int = 30
    # "auto": use SMTPUTF8 when the relay's EHLO offers it; "always": the relay takes it even
    # unannounced; "never": ASCII only (IDN domains as A-labels, non-ASCII local parts fail).
    smtputf8: str = "auto"


@dataclass(frozen=True)
class ScheduleConfig:
    checkin_day: str = "monday"
    checkin_time: str = "09:00"
    remind_after_hours: int = 48
    deadline_after_hours: int = 96
    digest_delay_minutes: int = 30
    tick_seconds: int = 30
    consent_days: int = 7  # the admin is told when a partner has not answered by then
    # "HH:MM-HH:MM" in each recipient's own zone: mail other than her check-in and reminder
    # (or an answer to what she just wrote) waits until it ends. "": no quiet hours.
    quiet_hours: str = "21:00-07:00"


SELF_SERVICE_MODES = ("open", "approval", "off")


@dataclass(frozen=True)
class ProgramConfig:
    """Self-service by email: the program's address and its rules."""

    # Where members write `offer`, `partner for`, `help`, `status` ("": hotteam@ + domain).
    address: str = ""
    # open: an agreed ask starts at once; approval: the admin approves it first; off: no asks.
    self_service: str = "open"
    max_partnerships_per_partner: int = 3  # suggestions and asks skip partners at the cap

    def address_for(self, domain: str) -> str:
        """The program's address, lower case."""
        return (self.address or f"hotteam@{domain}").strip().lower()


@dataclass(frozen=True)
class TemplatesConfig:
    dir: Path | None = None


@dataclass(frozen=True)
class WebConfig:
    """The admin site: `serve` also serves it unless `enabled` is false; `mailflow web` alone."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8025
    # Who may sign in (a one-time link is mailed to these addresses only). Empty: nobody by
    # mail; `mailflow web link EMAIL` (shell access to the data) still lets anyone in.
    admins: tuple[str, ...] = ()
    # The address people type to reach the site (scheme://host[:port]), for the links we
    # mail ("" means http://host:port). An https:// URL also marks the session cookie Secure.
    public_url: str = ""


@dataclass(frozen=True)
class Config:
    service: ServiceConfig = field(default_factory=ServiceConfig)
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    templates: TemplatesConfig = field(default_factory=TemplatesConfig)
    program: ProgramConfig = field(default_factory=ProgramConfig)
    web: WebConfig = field(default_factory=WebConfig)
    # The values of the environment variables this config names (secret_env, password_env,
    # auth_password_env), read once at load: nothing else reads the environment. Not from the
    # file, never printed, not compared.
    secrets: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def secret(self, env_name: str) -> str | None:
        """The value the environment gave `env_name` at load, or None when unset or empty."""
        return self.secrets.get(env_name) or None

    def templates_dir(self) -> Path:
        """Where admins' template files live: `[templates] dir`, else data_dir/templates/.

        Files there override the shipped ones file by file; the web admin saves into it.
        """
        return self.templates.dir or self.service.data_dir / "templates"


def templates_override(config: Config) -> Path:
    """The override directory to hand `compose.Templates`, created when it is the default.

    A configured `[templates] dir` must exist (a typo must not silently fall back to the
    shipped set); the default data_dir/templates/ is made here, so that a template saved later
    by the web admin is picked up by `serve`'s refresh without a restart.
    """
    path = config.templates_dir()
    if config.templates.dir is None:
        path.mkdir(parents=True, exist_ok=True)
    return path


_SECTIONS: dict[str, type] = {
    "service": ServiceConfig,
    "listener": ListenerConfig,
    "relay": RelayConfig,
    "schedule": ScheduleConfig,
    "templates": TemplatesConfig,
    "program": ProgramConfig,
    "web": WebConfig,
}

# Optional paths: "" or absent means none.
_OPTIONAL_PATHS = {"templates.dir", "listener.tls_cert", "listener.tls_key"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(value: str) -> time:
    """'09:30' -> time(9, 30); ValueError otherwise (with a "did you mean" for '9:30')."""
    m = _HHMM.match(value)
    if not m:
        guess = hints.clock_time(value)
        raise ValueError(f'expected HH:MM, got "{value}"{hints.did_you_mean(guess)}')
    return time(int(m.group(1)), int(m.group(2)))


def parse_quiet_hours(value: str) -> tuple[time, time] | None:
    """'21:00-07:00' -> (start, end), a window that may run past midnight; '' -> None (no
    quiet hours); ValueError otherwise."""
    text = value.strip()
    if not text:
        return None
    start, sep, end = text.partition("-")
    if not sep:
        raise ValueError(f'expected "HH:MM-HH:MM" (e.g. "21:00-07:00") or "", got "{value}"')
    window = parse_hhmm(start.strip()), parse_hhmm(end.strip())
    if window[0] == window[1]:
        raise ValueError(f'start and end are the same ("{value}"): use "" for no quiet hours')
    return window


_NAMED = re.compile(r"^\s*(?P<name>.*?)\s*<(?P<addr>[^<>]*)>\s*$", re.DOTALL)


def split_address(value: str) -> tuple[str, str]:
    """'Hot Team <ht@x.example>' -> ('Hot Team', 'ht@x.example'); a bare address -> ('', it).

    A quoted name ('"Team, Hot" <ht@x>') loses its quotes. Nothing is validated here.
    """
    m = _NAMED.match(value)
    if not m:
        return "", value.strip()
    name = m.group("name").strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1]).strip()
    return name, m.group("addr").strip()


def check_timezone(value: str) -> str:
    """Return the IANA zone name if it exists; ValueError otherwise (with a "did you mean")."""
    try:
        if not value or value != value.strip() or ".." in value or value.startswith("/"):
            raise ZoneInfoNotFoundError(value)
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        guess = hints.timezone(value)
        raise ValueError(f'unknown time zone "{value}"{hints.did_you_mean(guess)}') from None
    return value


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check one raw TOML value against the type of its default."""
    if isinstance(default, tuple):  # a list of strings (web.admins)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {_describe(value)}")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if isinstance(default, str | Path) or default is None:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        if isinstance(default, Path):
            # A required path: "" would become None and crash later instead of naming the key.
            if not value.strip():
                raise ConfigError(f"{key}: expected a directory path, got an empty string")
            return Path(value).expanduser()
        if default is None and key in _OPTIONAL_PATHS:
            return Path(value).expanduser() if value else None  # "": none (shipped templates)
        return value
    if isinstance(default, tuple):  # a list of strings (e.g. listener.trusted_peers)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {_describe(value)}")
        return tuple(value)
    raise ConfigError(f"{key}: unsupported value {_describe(value)}")  # pragma: no cover


# -- value checks beyond types: one rule per line, checked in order, each names its key --------

Check = Callable[[Config], str | None]
"""A rule's check: what is wrong with the config (one phrase), or None when it holds."""

_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _domain(value: str) -> str | None:
    if _DOMAIN.fullmatch(value) and ".." not in value:
        return None
    return f'not a valid domain name: "{value}"'


def _address(value: str) -> str | None:
    if not value:
        return None
    try:
        validate_email(value, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        return f'not a valid address "{value}": {exc}'
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _from_address(value: str) -> str | None:
    """A bare address or "NAME <ADDRESS>": the address must be valid, the name one line."""
    if not value:
        return None
    name, address = split_address(value)
    if _CONTROL.search(name):
        return "the display name must not contain control characters (such as CR/LF)"
    if not address:
        return f'no address in "{value}" (expected "NAME <ADDRESS>" or an address)'
    return _address(address)


def _from_name(cfg: Config) -> str | None:
    name = cfg.service.from_name
    if _CONTROL.search(name) or any(c in name for c in "<>"):
        return "must be one line of text without < or >"
    carried = split_address(cfg.service.from_address)[0]
    if name and carried:
        return f'from_address already carries the display name "{carried}": set one of the two'
    return None


def _quiet_hours(value: str) -> str | None:
    try:
        parse_quiet_hours(value)
    except ValueError as exc:
        return str(exc)
    return None


def _zone(value: str) -> str | None:
    try:
        check_timezone(value)
    except ValueError as exc:
        return str(exc)
    return None


def _env_name(value: str) -> str | None:
    return None if _ENV_NAME.match(value) else f'not an environment variable name: "{value}"'


def _port(value: int) -> str | None:
    return None if 0 < value < 65536 else f"expected 1-65535, got {value}"


def _at_least(minimum: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        if value >= minimum:
            return None
        if minimum == 0:  # digest_delay_minutes: 0 means "at the next tick"
            return f"expected 0 or more, got {value}"
        return f"expected at least {minimum}, got {value}"

    return check


def _weekday(value: str) -> str | None:
    if value.lower() in WEEKDAYS:
        return None
    return f'expected a weekday name, got "{value}"{hints.did_you_mean(hints.weekday(value))}'


def _hhmm(value: str) -> str | None:
    try:
        parse_hhmm(value)
    except ValueError as exc:
        return str(exc)
    return None


def _value(key: str, check: Callable[[Any], str | None]) -> tuple[str, Check]:
    """A rule on one value, found by its dotted key."""
    section, name = key.split(".")
    return key, lambda cfg: check(getattr(getattr(cfg, section), name))


def _when(key: str, broken: Callable[[Config], bool], why: str) -> tuple[str, Check]:
    """A rule across keys: `why` when `broken(cfg)`."""
    return key, lambda cfg: why if broken(cfg) else None


def _auth_name(value: str) -> str | None:
    if any(c.isspace() or not c.isprintable() for c in value):
        return "must not contain spaces or control characters"
    return None


def _mode(value: str) -> str | None:
    if value not in SELF_SERVICE_MODES:
        return f'expected one of {", ".join(SELF_SERVICE_MODES)}, got "{value}"'
    return None


def _program_address(cfg: Config) -> str | None:
    address = cfg.program.address_for(cfg.service.domain)
    why = _address(cfg.program.address)  # the default is made of a checked domain
    if why:
        return why
    taken = {f"checkin@{cfg.service.domain}".lower(), f"bounces@{cfg.service.domain}".lower()}
    if address in taken:
        return f"{address} is already one of our addresses (checkin@ and bounces@ are taken)"


def _off_or_more(value: int) -> str | None:
    return None if value >= 0 else f"expected 0 or more (0: off), got {value}"


def _networks(values: tuple[str, ...]) -> str | None:
    for peer in values:
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError:
            return f'not an IP address or network: "{peer}"'
    return None


def _authserv_id(value: str) -> str | None:
    # RFC 8601's authserv-id is one token (a host name in practice): compared exactly.
    if any(c.isspace() or not c.isprintable() or c in ';"()' for c in value):
        return "expected one word such as mx.example.com (no spaces, quotes or semicolons)"
    return None


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f'expected one of {", ".join(choices)}, got "{value}"'

    return check


def _host(value: str) -> str | None:
    if not value.strip() or any(c.isspace() for c in value):
        return f'expected a host name or address, got "{value}"'
    return None


def _addresses(values: tuple[str, ...]) -> str | None:
    for value in values:
        why = _address(value) if value else 'not a valid address ""'
        if why:
            return why
    return None


def _site_url(value: str) -> str | None:
    # No path: the site's own links are absolute from "/", so it must own the host.
    if not value or re.fullmatch(r"https?://[^\s/?#@]+", value):
        return None
    return f'expected http(s)://host[:port], got "{value}"'


def _deadline_after_remind(cfg: Config) -> str | None:
    sc = cfg.schedule
    if sc.deadline_after_hours <= sc.remind_after_hours:
        return f"must be greater than remind_after_hours ({sc.remind_after_hours})"
    return None


_RULES: tuple[tuple[str, Check], ...] = (
    _value("service.domain", _domain),
    _value("service.from_address", _from_address),
    ("service.from_name", _from_name),
    _value("service.admin_address", _address),
    _value("service.timezone", _zone),
    _value("service.secret_env", _env_name),
    _value("service.min_free_mb", _at_least(0)),
    _value("listener.port", _port),
    _value("listener.max_message_bytes", _at_least(1024)),
    _value("listener.timeout_seconds", _at_least(1)),
    _value("listener.max_connections", _at_least(1)),
    _when(
        "listener.tls_key",
        lambda c: c.listener.tls_cert is not None and c.listener.tls_key is None,
        "tls_cert and tls_key go together: set both or neither",
    ),
    _when(
        "listener.tls_cert",
        lambda c: c.listener.tls_cert is None and c.listener.tls_key is not None,
        "tls_cert and tls_key go together: set both or neither",
    ),
    _when(
        "listener.require_starttls",
        lambda c: c.listener.require_starttls and c.listener.tls_cert is None,
        "needs listener.tls_cert and listener.tls_key",
    ),
    _when(
        "listener.auth_username",
        lambda c: bool(c.listener.auth_username) and c.listener.tls_cert is None,
        "AUTH needs TLS: set tls_cert and tls_key",
    ),
    _value("listener.auth_username", _auth_name),
    _value("listener.auth_password_env", _env_name),
    _value("listener.max_sessions_per_client", _off_or_more),
    _value("listener.trusted_peers", _networks),
    _value("listener.quarantine_max_per_sender", _off_or_more),
    _value("listener.quarantine_max_mb", _off_or_more),
    _value("listener.trusted_authserv_id", _authserv_id),
    _value("relay.port", _port),
    _when(
        "relay.ssl",
        lambda c: c.relay.starttls and c.relay.ssl,
        "starttls and ssl are exclusive: choose one",
    ),
    _value("relay.password_env", _env_name),
    _value("relay.timeout_seconds", _at_least(1)),
    _value("relay.smtputf8", _one_of(SMTPUTF8_MODES)),
    _value("schedule.checkin_day", _weekday),
    _value("schedule.checkin_time", _hhmm),
    _value("schedule.digest_delay_minutes", _at_least(0)),
    _value("schedule.remind_after_hours", _at_least(1)),
    _value("schedule.deadline_after_hours", _at_least(1)),
    _value("schedule.tick_seconds", _at_least(1)),
    _value("schedule.consent_days", _at_least(1)),
    _value("schedule.quiet_hours", _quiet_hours),
    ("schedule.deadline_after_hours", _deadline_after_remind),
    ("program.address", _program_address),
    _value("program.self_service", _mode),
    _value("program.max_partnerships_per_partner", _at_least(1)),
    _when(
        "schedule.deadline_after_hours",
        lambda c: c.schedule.deadline_after_hours > 24 * 7 - 1,
        "must fall within the week (at most 167)",
    ),
    _value("web.host", _host),
    _value("web.port", _port),
    _value("web.admins", _addresses),
    _value("web.public_url", _site_url),
)


# Every port we listen on: two of them equal would make the second bind fail at start (or,
# for `mailflow web` next to `serve`, later), so the pair is refused up front.
_LISTENING_PORTS = ("listener.port", "web.port")


def _same_ports(cfg: Config) -> list[str]:
    """One problem per pair of listening ports that are equal, naming both keys."""
    ports = {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in
             _LISTENING_PORTS}  # fmt: skip
    keys = list(ports)
    return [
        f"{a} and {b}: both are {ports[a]}; each service needs its own port"
        for i, a in enumerate(keys)
        for b in keys[i + 1 :]
        if ports[a] == ports[b]
    ]


def _problems(cfg: Config, reported: set[str]) -> list[str]:
    """Value checks that go beyond types, in `_RULES` order, as "KEY: why" (one per key; a
    key already reported, e.g. for its type, is not checked again)."""
    problems = []
    for key, check in _RULES:
        if key in reported:
            continue
        why = check(cfg)
        if why is not None:
            problems.append(f"{key}: {why}")
            reported.add(key)
    return problems + _same_ports(cfg)


def _raise_all(problems: list[str]) -> None:
    """ConfigError naming every problem, on one line (the CLI's one `error:` line)."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems in the configuration: " + "; ".join(problems))


def _unknown(name: str, known: Any) -> str:
    """` (did you mean "X"?)` for a misspelt section or key, else ""."""
    return hints.did_you_mean(hints.name(name, known))


def from_mapping(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build a checked Config from parsed TOML. Relative paths resolve against base_dir.

    `environ` (a mapping like `os.environ`; None: empty) supplies the secrets the config names
    by environment variable; only those variables are kept, in `Config.secrets`.
    """
    sections: dict[str, Any] = {}
    problems: list[str] = []  # every one is reported, not just the first
    reported: set[str] = set()
    for name, raw in data.items():
        if name not in _SECTIONS:
            problems.append(
                f"{name}: unknown section{_unknown(name, _SECTIONS)} "
                f"(known: {', '.join(_SECTIONS)})"
            )
            continue
        if not isinstance(raw, dict):
            problems.append(f"{name}: expected a table, got {_describe(raw)}")
            continue
        cls = _SECTIONS[name]
        defaults = cls()
        values: dict[str, Any] = {}
        for key, value in raw.items():
            dotted = f"{name}.{key}"
            if key not in cls.__dataclass_fields__:
                problems.append(f"{dotted}: unknown key{_unknown(key, cls.__dataclass_fields__)}")
                continue
            try:
                values[key] = _coerce(dotted, value, getattr(defaults, key))
            except ConfigError as exc:
                problems.append(str(exc))
                reported.add(dotted)
        sections[name] = cls(**values)
    cfg = Config(**sections)
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    if cfg.schedule.checkin_day != cfg.schedule.checkin_day.lower():
        cfg = _replace(cfg, "schedule", checkin_day=cfg.schedule.checkin_day.lower())
    if cfg.web.admins:
        # Addresses compare in their stored form, as people's addresses do (people.py):
        # lower case, and an IDN domain's A-labels (xn--) and Unicode the same.
        admins = tuple(dict.fromkeys(canonical(a) for a in cfg.web.admins))
        cfg = _replace(cfg, "web", admins=admins)
    if cfg.web.public_url.endswith("/"):
        cfg = _replace(cfg, "web", public_url=cfg.web.public_url.rstrip("/"))
    _raise_all(problems + _problems(cfg, reported))
    if environ:
        names = (cfg.service.secret_env, cfg.relay.password_env, cfg.listener.auth_password_env)
        cfg = replace(cfg, secrets={n: environ[n] for n in names if environ.get(n)})
    return cfg


def _replace(cfg: Config, section: str, **changes: Any) -> Config:
    return replace(cfg, **{section: replace(getattr(cfg, section), **changes)})


def _resolve_paths(cfg: Config, base_dir: Path) -> Config:
    data_dir = cfg.service.data_dir
    if not data_dir.is_absolute():
        cfg = _replace(cfg, "service", data_dir=base_dir / data_dir)
    tdir = cfg.templates.dir
    if tdir is not None and not tdir.is_absolute():
        cfg = _replace(cfg, "templates", dir=base_dir / tdir)
    for name in ("tls_cert", "tls_key"):
        value = getattr(cfg.listener, name)
        if value is not None and not value.is_absolute():
            cfg = _replace(cfg, "listener", **{name: base_dir / value})
    return cfg


def load(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load a TOML file (None: built-in defaults). Paths in the file are relative to it.

    `environ` supplies the secrets (see `from_mapping`); the CLI passes its environment.
    """
    if path is None:
        return from_mapping({}, environ=environ)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return from_mapping(data, base_dir=path.resolve().parent, environ=environ)
