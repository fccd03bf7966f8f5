"""Parser cost: CPU per reply of ``parse_message`` against reading the same bytes with the
standard library only.

Usage: ``.venv/bin/python bench/parse.py [--n 2000] [--repeat 3]``

Ours: ``mailflow.parse.parse_message`` (what the listener's ingest and ``mailflow reply parse``
run), on three sets measured in one process: the bench's own replies (``bench/ingest.py``'s,
2-4 KB of new text above one to three rounds of quoted check-ins), every raw message of the
shared corpus (``../shared/corpus``, skipped when absent) and the real-mail cases
(``../shared/cases/real-mail``). Raw: ``email.message_from_bytes`` plus ``get_payload(decode=True)``
of every text part, decoded with its charset -- the least anyone does to get at the words of a
message. Best of ``--repeat`` rounds, single-threaded, in the same run.

One line per set: ``parse <set>: ours X us/reply, raw Y us/reply, ratio Z`` (ratio = raw / ours,
so higher is better, 1.0 would be parsing for free). Last line, for the bench's replies:
``parse: ours X/s, raw Y/s, ratio Z`` (replies per second of one core).
"""

from __future__ import annotations

import argparse
import email
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from email import policy
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

from mailflow.parse import parse_message  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def raw_read(raw: bytes) -> str:
    """The baseline: the standard library's parse and the decoded text of every text part."""
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    out = []
    for part in msg.walk():
        if part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            out.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
    return "".join(out)


def ours(raw: bytes) -> object:
    return parse_message(raw)


def per_message_us(fn: Callable[[bytes], object], messages: Sequence[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for raw in messages:
            fn(raw)
        best = min(best, time.process_time() - t0)
    return best / len(messages) * 1e6


def sets(n: int) -> dict[str, list[bytes]]:
    now = datetime(2026, 12, 2, 10, 0, tzinfo=c.UTC_TZ)
    out = {
        "bench replies": [c.reply_message(i, 1 + i % 1000, "2026-W49", now)[2] for i in range(n)]
    }
    corpus = SHARED / "corpus"
    if corpus.is_dir():
        out["corpus"] = [p.read_bytes() for p in sorted(corpus.rglob("*.eml"))]
    real = SHARED / "cases" / "real-mail"
    if real.is_dir():
        out["real-mail"] = [p.read_bytes() for p in sorted(real.glob("*.eml"))]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="bench replies (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best counts")
    args = ap.parse_args(argv)
    last = ""
    for name, messages in sets(args.n).items():
        size = sum(map(len, messages)) // len(messages)
        c.progress(f"{name}: {len(messages)} messages, {size} bytes on average")
        # Warm both (imports, compiled patterns, caches) before measuring.
        for raw in messages[:20]:
            ours(raw)
            raw_read(raw)
        raw_us = per_message_us(raw_read, messages, args.repeat)
        ours_us = per_message_us(ours, messages, args.repeat)
        ratio = raw_us / ours_us if ours_us > 0 else 0.0
        print(
            f"parse {name}: ours {ours_us:,.0f} us/reply, raw {raw_us:,.0f} us/reply, "
            f"ratio {ratio:.2f}"
        )
        if not last:
            last = c.result_line("parse", 1e6 / ours_us, 1e6 / raw_us)
    print(last)
    return 0


if __name__ == "__main__":
    sys.exit(main())
