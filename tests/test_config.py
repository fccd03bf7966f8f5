"""Configuration: defaults, every key, wrong types and values named by key, file lookup."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from clitools import run_console

from mailflow import config
from mailflow.config import Config, ConfigError, from_mapping, load

FULL = """
[service]
domain = "mail.example.org"
from_address = "hot@example.org"
from_name = "Hot Team"
data_dir = "/srv/mailflow"
timezone = "Europe/Berlin"
admin_address = "admin@example.org"
secret_env = "MY_SECRET"
min_free_mb = 50

[listener]
host = "0.0.0.0"
port = 2626
max_message_bytes = 2048
timeout_seconds = 5
max_connections = 7
ingest_process = true
tls_cert = "/srv/tls/cert.pem"
tls_key = "/srv/tls/key.pem"
require_starttls = true
auth_username = "mta"
auth_password_env = "LISTENER_PW"
max_sessions_per_client = 3
trusted_peers = ["10.0.0.25", "fd00::/64"]
quarantine_max_per_sender = 5
quarantine_max_mb = 40
trusted_authserv_id = "mx.example.org"

[relay]
host = "smtp.example.org"
port = 465
starttls = false
ssl = true
username = "bot"
password_env = "RELAY_PW"
timeout_seconds = 9
smtputf8 = "never"

[schedule]
checkin_day = "Tuesday"
checkin_time = "07:45"
remind_after_hours = 24
deadline_after_hours = 72
digest_delay_minutes = 15
tick_seconds = 10
consent_days = 3
quiet_hours = "22:30-06:00"

[templates]
dir = "/srv/templates"

[program]
address = "hotteam@example.org"
self_service = "approval"
max_partnerships_per_partner = 2

[web]
enabled = false
host = "0.0.0.0"
port = 8443
admins = ["Ops@Example.org", "hr@example.org"]
public_url = "https://admin.example.org"
"""


def write(tmp_path: Path, text: str, name: str = "mailflow.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    cfg = load(None)
    assert cfg == Config()
    assert cfg.service.domain == "mailflow.localhost"
    assert cfg.service.sender == "mailflow@mailflow.localhost"
    assert cfg.service.timezone == "UTC"
    assert cfg.listener.port == 2525
    assert cfg.relay.host == ""
    assert cfg.schedule.checkin_day == "monday"
    assert cfg.schedule.checkin_time == "09:00"
    assert cfg.schedule.remind_after_hours == 48
    assert cfg.schedule.deadline_after_hours == 96
    assert cfg.schedule.digest_delay_minutes == 30
    assert cfg.templates.dir is None


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, ""))
    assert cfg.listener == Config().listener
    assert cfg.schedule == Config().schedule
    assert cfg.service.data_dir == tmp_path / "data"


def test_every_key_of_every_section_is_accepted(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, FULL))
    assert cfg.service == config.ServiceConfig(
        domain="mail.example.org",
        from_address="hot@example.org",
        from_name="Hot Team",
        data_dir=Path("/srv/mailflow"),
        timezone="Europe/Berlin",
        admin_address="admin@example.org",
        secret_env="MY_SECRET",
        min_free_mb=50,
    )
    assert cfg.listener == config.ListenerConfig(
        "0.0.0.0",
        2626,
        2048,
        5,
        7,
        True,
        Path("/srv/tls/cert.pem"),
        Path("/srv/tls/key.pem"),
        True,
        "mta",
        "LISTENER_PW",
        3,
        ("10.0.0.25", "fd00::/64"),
        5,
        40,
        "mx.example.org",
    )
    assert cfg.relay == config.RelayConfig(
        "smtp.example.org", 465, False, True, "bot", "RELAY_PW", 9, "never"
    )
    assert cfg.schedule == config.ScheduleConfig(
        "tuesday", "07:45", 24, 72, 15, 10, 3, "22:30-06:00"
    )
    assert cfg.templates.dir == Path("/srv/templates")
    assert cfg.program == config.ProgramConfig("hotteam@example.org", "approval", 2)
    assert cfg.web == config.WebConfig(
        False, "0.0.0.0", 8443, ("ops@example.org", "hr@example.org"), "https://admin.example.org"
    )
    # Every field of every section appears in FULL: a new key must be added here too.
    for section, cls in config._SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"\n{f.name} = " in FULL.split(f"[{section}]")[1].split("\n[")[0], f.name


def _wrong_value(default: object) -> object:
    if isinstance(default, bool):
        return "yes"
    if isinstance(default, int):
        return "eighty"
    return 5  # strings and paths


ALL_KEYS = [
    (section, f.name) for section, cls in config._SECTIONS.items() for f in dataclasses.fields(cls)
]


@pytest.mark.parametrize(("section", "key"), ALL_KEYS)
def test_a_wrong_type_names_the_key(section: str, key: str) -> None:
    default = getattr(config._SECTIONS[section](), key)
    with pytest.raises(ConfigError) as info:
        from_mapping({section: {key: _wrong_value(default)}})
    assert str(info.value).startswith(f"{section}.{key}: expected ")


def test_wrong_type_through_the_cli_is_one_error_line(tmp_path: Path) -> None:
    write(tmp_path, '[listener]\nport = "eighty"\n', "bad.toml")
    result = run_console("--config", "bad.toml", "people", "list", cwd=tmp_path)
    assert result.code == 1
    assert result.err == 'error: listener.port: expected an integer, got "eighty"\n'
    assert result.out == ""
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[listener]\nport = 0", "listener.port: expected 1-65535, got 0"),
        ("[listener]\nport = 70000", "listener.port: expected 1-65535, got 70000"),
        ("[listener]\nport = 25.5", "listener.port: expected an integer, got 25.5"),
        ("[listener]\nport = true", "listener.port: expected an integer, got true"),
        ("[relay]\nport = -1", "relay.port: expected 1-65535, got -1"),
        ("[relay]\nstarttls = 1", "relay.starttls: expected true or false, got 1"),
        ("[relay]\nstarttls = true\nssl = true", "relay.ssl: starttls and ssl are exclusive"),
        ('[relay]\npassword_env = "not a name"', "relay.password_env: not an environment"),
        (
            '[schedule]\ncheckin_day = "funday"',
            'schedule.checkin_day: expected a weekday name, got "funday"',
        ),
        ('[schedule]\ncheckin_time = "9:00"', 'schedule.checkin_time: expected HH:MM, got "9:00"'),
        ('[schedule]\ncheckin_time = "24:00"', "schedule.checkin_time: expected HH:MM"),
        ('[schedule]\ncheckin_time = "09:60"', "schedule.checkin_time: expected HH:MM"),
        (
            "[schedule]\ndeadline_after_hours = 48",
            "schedule.deadline_after_hours: must be greater than remind_after_hours (48)",
        ),
        (
            "[schedule]\nremind_after_hours = 100",
            "schedule.deadline_after_hours: must be greater than remind_after_hours (100)",
        ),
        ("[schedule]\ntick_seconds = 0", "schedule.tick_seconds: expected at least 1, got 0"),
        (
            '[service]\ntimezone = "Mars/Olympus"',
            'service.timezone: unknown time zone "Mars/Olympus"',
        ),
        ('[service]\ntimezone = "../etc/passwd"', "service.timezone: unknown time zone"),
        ('[service]\ntimezone = ""', "service.timezone: unknown time zone"),
        ('[service]\ndomain = "bad domain"', "service.domain: not a valid domain name"),
        ('[service]\nfrom_address = "nobody"', "service.from_address: not a valid address"),
        ('[service]\ndata_dir = ""', "service.data_dir: "),
        ("[service]\nportt = 1", "service.portt: unknown key"),
        ('[services]\ndomain = "x.org"', "services: unknown section"),
        ("service = 5", "service: expected a table, got 5"),
        ("[listener]\nmax_message_bytes = 10", "listener.max_message_bytes: expected at least"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, toml + "\n"))
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_weekday_names_are_case_insensitive(tmp_path: Path) -> None:
    assert load(write(tmp_path, '[schedule]\ncheckin_day = "SUNDAY"\n')).schedule.checkin_day == (
        "sunday"
    )


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[listener\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: invalid TOML")
    assert "\n" not in str(info.value)


def test_non_utf8_and_missing_config_files(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[service]\ndomain = "caf\xe9.org"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "nope.toml")


def test_missing_config_through_the_cli(tmp_path: Path) -> None:
    result = run_console("--config", "nope.toml", "people", "list", cwd=tmp_path)
    assert result.code == 1
    assert result.err.startswith("error: nope.toml: cannot read config")
    assert len(result.err.splitlines()) == 1


def test_invalid_toml_through_the_cli(tmp_path: Path) -> None:
    write(tmp_path, "this is not toml\n", "bad.toml")
    result = run_console("--config", "bad.toml", "people", "list", cwd=tmp_path)
    assert result.code == 1
    assert result.err.startswith("error: bad.toml: invalid TOML")
    assert len(result.err.splitlines()) == 1
    assert "Traceback" not in result.err


def test_mailflow_config_environment_variable_is_honoured(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    write(conf_dir, '[service]\ndata_dir = "state"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {"MAILFLOW_CONFIG": str(conf_dir / "mailflow.toml")}
    result = run_console(
        "people",
        "add",
        "ann@example.com",
        "--name",
        "Ann",
        "--department",
        "Sales",
        cwd=elsewhere,
        env=env,
    )
    assert result.code == 0, result
    assert list((conf_dir / "state" / "db" / "people").glob("*.json"))  # the person landed there
    assert not (elsewhere / "data").exists()
    # A bad file named by the variable is refused like one given with --config.
    write(conf_dir, '[listener]\nport = "eighty"\n')
    result = run_console("people", "list", cwd=elsewhere, env=env)
    assert (result.code, result.err) == (
        1,
        'error: listener.port: expected an integer, got "eighty"\n',
    )


def test_config_option_wins_over_the_environment(tmp_path: Path) -> None:
    write(tmp_path, '[listener]\nport = "eighty"\n', "bad.toml")
    write(tmp_path, '[service]\ndata_dir = "good-data"\n', "good.toml")
    result = run_console(
        "--config",
        "good.toml",
        "people",
        "list",
        cwd=tmp_path,
        env={"MAILFLOW_CONFIG": str(tmp_path / "bad.toml")},
    )
    assert result.code == 0, result


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(sub, '[service]\ndata_dir = "state"\n[templates]\ndir = "tpl"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load(Path("conf/mailflow.toml"))
    assert cfg.service.data_dir == sub / "state"
    assert cfg.templates.dir == sub / "tpl"
    assert load(path).service.data_dir.is_absolute()
    absolute = write(sub, '[service]\ndata_dir = "/var/lib/mf"\n', "abs.toml")
    assert load(absolute).service.data_dir == Path("/var/lib/mf")


def test_relative_data_dir_through_the_cli(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    write(sub, '[service]\ndata_dir = "state"\n')
    result = run_console(
        "--config",
        "conf/mailflow.toml",
        "people",
        "add",
        "bo@example.com",
        "--name",
        "Bo",
        "--department",
        "Ops",
        cwd=tmp_path,
    )
    assert result.code == 0, result
    assert list((sub / "state" / "db" / "people").glob("*.json"))


def test_the_example_config_lists_every_key_with_its_default() -> None:
    """config.example.toml is the reference an admin reads: every key of every section, each
    with the built-in default (data_dir and templates.dir resolve against the file)."""
    import tomllib

    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    listed = tomllib.loads(example.read_text(encoding="utf-8"))
    defaults = Config()
    for section in dataclasses.fields(defaults):
        values = getattr(defaults, section.name)
        if not dataclasses.is_dataclass(values):
            continue
        keys = {f.name for f in dataclasses.fields(values)}
        assert set(listed[section.name]) == keys, section.name
    cfg = load(example)
    assert dataclasses.replace(cfg.service, data_dir=Path("data")) == defaults.service
    assert (cfg.listener, cfg.relay, cfg.schedule, cfg.program) == (
        defaults.listener,
        defaults.relay,
        defaults.schedule,
        defaults.program,
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("[service]\nmin_free_mb = -1\n", "service.min_free_mb: expected 0 or more"),
        ("[listener]\nmax_sessions_per_client = -2\n", "listener.max_sessions_per_client"),
        ("[listener]\nquarantine_max_mb = -1\n", "listener.quarantine_max_mb"),
        ("[listener]\nquarantine_max_per_sender = -1\n", "listener.quarantine_max_per_sender"),
        ('[listener]\ntrusted_peers = "127.0.0.1"\n', "listener.trusted_peers: expected a list"),
        ("[listener]\ntrusted_peers = [1]\n", "listener.trusted_peers: expected a list"),
        ('[listener]\ntrusted_peers = ["mx.local"]\n', 'not an IP address or network: "mx.local"'),
        ('[listener]\ntrusted_authserv_id = "mx; x"\n', "listener.trusted_authserv_id: expected"),
    ],
)
def test_limit_keys_are_checked_by_name(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load(write(tmp_path, text))
    cfg = load(write(tmp_path, "[listener]\ntrusted_peers = []\n"))
    assert cfg.listener.trusted_peers == () and Config().service.min_free_mb == 100


@pytest.mark.parametrize("bad", ['"sometimes"', '"AUTO"', "true"])
def test_relay_smtputf8_is_auto_always_or_never(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[relay]\nsmtputf8 = {bad}\n")
    with pytest.raises(ConfigError, match="relay.smtputf8"):
        config.load(path)


def test_two_listening_ports_alike_are_one_problem_naming_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "[listener]\nport = 8025\n"))  # web.port's default
    assert str(info.value) == (
        "listener.port and web.port: both are 8025; each service needs its own port"
    )
    with pytest.raises(ConfigError, match="listener.port and web.port: both are 2600"):
        load(write(tmp_path, "[listener]\nport = 2600\n[web]\nport = 2600\nenabled = false\n"))
    load(write(tmp_path, "[listener]\nport = 2600\n[web]\nport = 2601\n"))  # apart: fine


def test_every_problem_is_named_on_one_line_with_did_you_mean(tmp_path: Path) -> None:
    toml = (
        '[shedule]\ncheckin_day = "monday"\n'
        '[listener]\nprot = 25\nmax_message_bytes = "x"\n'
        "[relay]\nport = 0\n"
    )
    write(tmp_path, toml, "bad.toml")
    result = run_console("--config", "bad.toml", "people", "list", cwd=tmp_path)
    assert result.code == 1
    assert result.out == ""
    assert result.err.count("\n") == 1 and result.err.startswith("error: 4 problems in the ")
    for part in (
        'shedule: unknown section (did you mean "schedule"?)',
        'listener.prot: unknown key (did you mean "port"?)',
        'listener.max_message_bytes: expected an integer, got "x"',
        "relay.port: expected 1-65535, got 0",
    ):
        assert part in result.err, result.err
    # A key far from every known one gets no guess.
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "[web]\nxyzzy = 1\n"))
    assert str(info.value) == "web.xyzzy: unknown key"
