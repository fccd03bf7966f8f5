"""Our reply parser beside the public peers, on the shared corpus expectations.

Usage: ``.venv/bin/python bench/peers.py [--corpus DIR] [--keep-venv DIR]``

Creates a throwaway venv (under a temp dir), pip-installs the peer parsers from PyPI there --
``email-reply-parser`` (zapier's Python port of GitHub's), ``talon`` (Mailgun) and
``mail-parser-reply`` -- whichever install, runs each on every entry of
``../shared/corpus/MANIFEST.json`` in a subprocess, and prints one table per corpus set:
our pass rate and each peer's, scored by the same rules (bench/corpus_eval.py). The peers are
never project dependencies.

How peers are driven (their best documented API for each input):

* email-reply-parser: ``EmailReplyParser.parse_reply(text)``.
* talon: ``quotations.extract_from_plain(text)``; for entries whose upstream API is the
  signature extractor, ``signature.bruteforce.extract_signature(text)[0]``; HTML input goes
  through ``quotations.extract_from_html`` then ``utils.html_to_text``.
* mail-parser-reply: ``EmailReplyParser(languages=...).read(text).replies[0].body`` with the
  entry's languages when given, else all its languages.

Peers without an HTML path get the visible text of the HTML (BeautifulSoup ``get_text``);
raw .eml inputs are given to them as the decoded first text/plain part (as talon's own test
does). The reply parsers do not classify kinds, so they show ``n/a`` on the kind sets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import venv
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import corpus_eval as ce  # noqa: E402

PEERS = {
    "email-reply-parser": "email-reply-parser",
    "talon": "talon",
    "mail-parser-reply": "mail-parser-reply",
}
ALL_MPR_LANGS = ["en", "de", "da", "nl", "pl", "sv", "ja", "fr", "es", "it", "cs", "ko", "zh"]


def _talon_sklearn_shim() -> None:
    """talon imports ``sklearn.externals.joblib``, removed from current scikit-learn."""
    try:
        import joblib
        import sklearn.externals

        sys.modules.setdefault("sklearn.externals.joblib", joblib)
        sklearn.externals.joblib = joblib  # type: ignore[attr-defined]
    except ImportError:
        pass


def _peer_text(name: str, text: str, t: dict[str, Any]) -> str:
    if name == "email-reply-parser":
        from email_reply_parser import EmailReplyParser

        return EmailReplyParser.parse_reply(text)
    if name == "talon":
        from talon import quotations

        if t.get("signature_api"):
            from talon.signature import bruteforce

            return bruteforce.extract_signature(text)[0]
        return quotations.extract_from_plain(text)
    if name == "mail-parser-reply":
        from mailparser_reply import EmailReplyParser

        langs = t.get("languages") or ALL_MPR_LANGS
        try:
            parsed = EmailReplyParser(languages=langs).read(text)
        except Exception:
            parsed = EmailReplyParser(languages=["en"]).read(text)
        return parsed.replies[0].body if parsed.replies else ""
    raise ValueError(name)


def _peer_run(name: str, t: dict[str, Any]) -> Any:
    mode = t["mode"]
    if mode == "classify":
        return None
    if mode == "eml":
        return _peer_text(name, ce.first_plain_text(t["raw"]), t)
    if mode == "html":
        if name == "talon":
            from talon import quotations, utils

            return utils.html_to_text(quotations.extract_from_html(t["html"])) or ""
        from bs4 import BeautifulSoup

        return _peer_text(name, BeautifulSoup(t["html"], "html.parser").get_text(), t)
    return _peer_text(name, t["text"], t)


def _timed(fn: Any, t: dict[str, Any]) -> Any:
    """Run fn; timing entries fail past 5 s. Exceptions count as wrong output."""
    start = time.monotonic()
    try:
        out = fn(t)
    except Exception as exc:  # a peer crashing on an input is a failed entry, not a crash here
        out = f"<error {type(exc).__name__}>"
    if isinstance(out, bytes):
        out = out.decode("utf-8", "replace")
    if out is None and t["mode"] != "classify":
        out = ""  # a peer answering None has produced no text: scored, and failed

    if t["mode"] == "timing":
        return "" if time.monotonic() - start <= 5 else ce.TIMEOUT
    return out


def child_main(name: str, corpus: Path) -> None:
    """Inside the peer venv: print a JSON list of outputs, one per manifest entry."""
    if name == "talon":
        _talon_sklearn_shim()
        import talon

        # talon.init() loads the ML signature model (unpicklable with current scikit-learn);
        # the APIs used here do not need it.
        with contextlib.suppress(Exception):
            talon.init()
    outputs = []
    for entry in ce.load_entries(corpus):
        t = ce.task(entry, corpus)
        outputs.append(_timed(lambda x: _peer_run(name, x), t))
    json.dump(outputs, sys.stdout)


def _make_venv(root: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    return root / "bin" / "python"


def _install(python: Path, package: str) -> bool:
    res = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", package],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        print(
            f"# {package}: install failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr
        )
    return res.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=ce.corpus_dir_default())
    parser.add_argument("--keep-venv", type=Path, default=None, help="reuse/keep venvs here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    corpus = args.corpus.resolve()
    if args.child:
        child_main(args.child, corpus)
        return 0
    if not (corpus / "MANIFEST.json").exists():
        print(f"error: no corpus at {corpus}", file=sys.stderr)
        return 1

    entries = ce.load_entries(corpus)
    sets = [ce.set_name(e) for e in entries]
    results: dict[str, dict[str, list[bool | None]]] = defaultdict(lambda: defaultdict(list))
    for entry, name in zip(entries, sets, strict=True):
        out = _timed(ce.run_ours, ce.task(entry, corpus))
        results["ours"][name].append(ce.score(entry, out))

    tmp = tempfile.TemporaryDirectory(prefix="mailflow-peers-")
    base = args.keep_venv or Path(tmp.name)
    peer_names: list[str] = []
    for peer, package in PEERS.items():
        root = base / peer
        python = root / "bin" / "python"
        if not python.exists():
            python = _make_venv(root)
            if not _install(python, package) or not _install(python, "beautifulsoup4"):
                continue
        env = dict(os.environ, PYTHONPATH=str(HERE))
        res = subprocess.run(
            [str(python), str(Path(__file__).resolve()), "--child", peer, "--corpus", str(corpus)],
            capture_output=True,
            text=True,
            env=env,
        )
        if res.returncode != 0:
            print(f"# {peer}: run failed: {res.stderr.strip()[-300:]}", file=sys.stderr)
            continue
        outputs = json.loads(res.stdout)
        peer_names.append(peer)
        for entry, name, out in zip(entries, sets, outputs, strict=True):
            results[peer][name].append(ce.score(entry, out))
    tmp.cleanup()

    systems = ["ours", *peer_names]
    header = f"| {'corpus set':24} | {'n':>4} | " + " | ".join(f"{s:>18}" for s in systems) + " |"
    print(header)
    print("|" + "-" * 26 + "|" + "-" * 6 + "|" + "|".join("-" * 20 for _ in systems) + "|")
    for name in dict.fromkeys(sets):
        cells = []
        n = 0
        for system in systems:
            passed, scored = ce.summarise({name: results[system][name]})[name]
            n = max(n, scored)
            cells.append(f"{passed}/{scored} {100 * passed / scored:5.1f}%" if scored else "n/a")
        print(f"| {name:24} | {n:>4} | " + " | ".join(f"{c:>18}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
