"""The peer teams build instead: Postfix piping each reply to a script, beside our `serve`.

Usage: ``.venv/bin/python bench/postfix.py [--n 2000] [--clients 8] [--concurrency 2,8]``

Runs only where Postfix is installed (``/usr/sbin/postfix``); elsewhere it prints
``skipped: postfix not installed`` and exits 0. Postfix's master runs as root, so the bench
must run as root or with password-less sudo (it prefixes ``sudo -n`` to the postfix commands
when it is not root; it prints ``skipped: ...`` when neither works).

The peer: a private Postfix instance, never the system's -- its own config_directory,
queue_directory and data_directory under a temp dir (``bench/.work/``), smtpd on a free
127.0.0.1 port, nothing else listening -- with the program's domain in mydestination,
``recipient_delimiter = +`` and the alias ``checkin: "|PYTHON script.py"``, so every reply
address (``checkin+TOKEN@DOMAIN``) is one local(8) delivery to a pipe. The script is what a
team writes: parse the message with the standard library, take the text part, cut the quoted
history with ``email_reply_parser`` (installed in a throwaway venv, as bench/peers.py does;
never a project dependency), append one JSON line to a records file and fsync it; Postfix
deletes its queue file once the script exits 0. It is measured with Postfix's default
``local_destination_concurrency_limit`` (2) and with each value of ``--concurrency``.

Ours: the same messages (bench/common.py's replies, 2-4 KB with quoted history) from the same
`--clients` concurrent SMTP clients to `mailflow serve` (bench/ingest.py's measure_ours: until
every reply is a progress record). The clock of both stops when the last record is durable.

Last lines: ``postfix (local_destination_concurrency_limit=K): X/s`` for each K, then
``postfix-peer: ours X/s, raw Y/s, ratio Z`` where raw is the peer at its best.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402
import ingest  # noqa: E402

POSTFIX = "/usr/sbin/postfix"
POSTALIAS = "/usr/sbin/postalias"

SCRIPT = '''\
"""Deliver one reply (stdin) as a record: what a team pipes Postfix's aliases to."""
import email, email.policy, json, os, sys
from email_reply_parser import EmailReplyParser

msg = email.message_from_binary_file(sys.stdin.buffer, policy=email.policy.default)
part = msg.get_body(preferencelist=("plain",))
text = part.get_content() if part is not None else ""
record = {
    "to": os.environ.get("ORIGINAL_RECIPIENT") or os.environ.get("RECIPIENT", ""),
    "from": str(msg["From"] or ""),
    "message_id": str(msg["Message-ID"] or ""),
    "text": EmailReplyParser.parse_reply(text),
}
with open(sys.argv[1], "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\\n")
    f.flush()
    os.fsync(f.fileno())
'''


def privileged() -> list[str] | None:
    """The prefix that runs a postfix command as root: [] as root, sudo -n, or None."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        ok = subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=30).returncode
        if ok == 0:
            return ["sudo", "-n"]
    return None


def peer_venv(root: Path) -> Path:
    """A throwaway venv with email_reply_parser; returns its python."""
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "email-reply-parser"],
        check=True,
        timeout=600,
    )
    return py


def write_instance(
    root: Path, prefix: list[str], port: int, python: Path, script: Path, records: Path, k: int
) -> Path:
    """A private Postfix instance under root/postfix; returns its config_directory."""
    base = root / f"postfix-{k}"
    conf, queue, data = base / "etc", base / "spool", base / "data"
    for d in (conf, queue, data):
        d.mkdir(parents=True)
    user = pwd.getpwnam("nobody")  # local(8) runs the pipe as default_privs (nobody)
    (conf / "main.cf").write_text(
        "\n".join(
            [
                "compatibility_level = 3.6",
                f"queue_directory = {queue}",
                f"data_directory = {data}",
                "mail_owner = postfix",
                "setgid_group = postdrop",
                "myhostname = postfix-peer.localhost",
                f"mydomain = {c.DOMAIN}",
                f"mydestination = {c.DOMAIN}, localhost",
                "inet_interfaces = 127.0.0.1",
                "inet_protocols = ipv4",
                "mynetworks = 127.0.0.0/8",
                "smtpd_relay_restrictions = permit_mynetworks, reject",
                "recipient_delimiter = +",
                "local_recipient_maps =",
                f"alias_maps = hash:{conf}/aliases",
                f"alias_database = hash:{conf}/aliases",
                "biff = no",
                "smtputf8_enable = no",
                f"maillog_file_prefixes = {base}",
                f"maillog_file = {data / 'maillog'}",
                f"local_destination_concurrency_limit = {k}",
                # Nothing of this instance leaves the machine.
                "default_transport = error:the bench delivers nothing outside",
                "relayhost =",
                "",
            ]
        )
    )
    # master.cf: smtpd on the bench's port instead of 25, postlog for maillog_file, and the
    # rest of the stock services (cleanup, qmgr, local, ...).
    stock = Path("/etc/postfix/master.cf.proto")
    lines = []
    for line in stock.read_text().splitlines():
        if line.startswith("smtp ") and " inet " in line:
            line = f"127.0.0.1:{port} inet n - y - - smtpd"
        lines.append(line)
    if not any(x.startswith("postlog") for x in lines):
        lines.append("postlog   unix-dgram n  -       n       -       1       postlogd")
    (conf / "master.cf").write_text("\n".join(lines) + "\n")
    (conf / "aliases").write_text(f'checkin: "|{python} {script} {records}"\n')
    subprocess.run([POSTALIAS, "-c", str(conf), f"hash:{conf}/aliases"], check=True, timeout=60)
    # Postfix's own state (master.lock, the TLS caches) belongs to its mail_owner.
    subprocess.run([*prefix, "chown", "postfix", str(data)], check=True, timeout=60)
    records.touch()
    os.chown(records, user.pw_uid, user.pw_gid)
    return conf


def wait_lines(path: Path, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        with path.open("rb") as f:
            done = sum(1 for _ in f)
        if done >= n:
            return time.time()
        if done // 500 != last // 500:
            c.progress(f"  delivered {done}/{n}")
        last = done
        time.sleep(0.05)
    raise RuntimeError(f"only {done}/{n} delivered after {timeout:.0f} s")


def measure_postfix(
    root: Path, prefix: list[str], python: Path, n: int, clients: int, k: int
) -> float:
    port = c.free_port()
    script = root / "deliver.py"
    script.write_text(SCRIPT)
    records = root / f"records-{k}.jsonl"
    conf = write_instance(root, prefix, port, python, script, records, k)
    postfix = [*prefix, POSTFIX, "-c", str(conf)]
    subprocess.run([*postfix, "start"], check=True, timeout=120, capture_output=True)
    try:
        c.wait_port(port, timeout=60)
        now = c.now_in_period()
        messages = [c.reply_message(i, 1 + i % 1000, "2026-W01", now) for i in range(n)]
        c.progress(f"postfix (local concurrency {k}): {n} replies from {clients} clients")
        started, accepted = c.send_concurrently(port, messages, clients)
        c.progress(f"  all accepted after {accepted - started:.2f} s")
        done = wait_lines(records, n, timeout=max(300.0, n / 2))
    finally:
        subprocess.run([*postfix, "stop"], timeout=120, capture_output=True, check=False)
    rate = n / (done - started)
    c.progress(f"  {n} records in {done - started:.2f} s: {rate:.1f}/s")
    return rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="replies (default 2000)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--concurrency", default="2,8", help="local_destination_concurrency_limit")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args(argv)
    if not Path(POSTFIX).exists():
        print("skipped: postfix not installed")
        return 0
    prefix = privileged()
    if prefix is None:
        print("skipped: postfix's master needs root (run as root or with sudo -n)")
        return 0
    root = c.workdir("mailflow-bench-postfix-")
    # local(8) runs the pipe as nobody: it must reach the script, the venv and the records.
    os.chmod(root, 0o755)
    try:
        c.progress("throwaway venv with email-reply-parser")
        python = peer_venv(Path(tempfile.mkdtemp(prefix="venv-", dir=root)))
        os.chmod(python.parent.parent.parent, 0o755)
        rates = {}
        for k in (int(x) for x in args.concurrency.split(",")):
            rates[k] = measure_postfix(root, prefix, python, args.n, args.clients, k)
        (root / "ours").mkdir()
        ours, _ = ingest.measure_ours(root / "ours", args.n, args.clients, min(1000, args.n))
    finally:
        if args.keep:
            c.progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    for k, rate in rates.items():
        print(f"postfix (local_destination_concurrency_limit={k}): {rate:,.1f}/s")
    print(c.result_line("postfix-peer", ours, max(rates.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
