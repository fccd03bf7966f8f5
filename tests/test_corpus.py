"""Our parser against the shared reply/bounce corpus (../shared/corpus/MANIFEST.json).

Scoring rules live in bench/corpus_eval.py (shared with bench/peers.py, which prints the same
numbers beside the public peer parsers). Each corpus set must stay at or above its floor, set a
couple of points under the rate measured when the floor was chosen. Sets marked ``[ref]`` are
entries whose only expectation is the upstream library's own output (not a test assertion).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import corpus_eval as ce  # noqa: E402

# Measured pass rates (percent) when these floors were set, minus about two points.
FLOORS = {
    "github": 88.0,
    "github [ref]": 81.0,
    "zapier": 98.0,
    "zapier [ref]": 92.0,
    "mail-parser-reply": 88.0,
    "mail-parser-reply [ref]": 71.0,
    "talon": 87.0,
    "email_reply_trimmer": 79.0,
    "sisimai (kinds)": 94.0,
    "flanker (kinds)": 76.0,
}


@pytest.fixture(scope="module")
def rates() -> dict[str, tuple[int, int]]:
    if not (CORPUS / "MANIFEST.json").exists():
        pytest.skip(f"corpus not present at {CORPUS}")
    results: dict[str, list[bool | None]] = defaultdict(list)
    for entry in ce.load_entries(CORPUS):
        task = ce.task(entry, CORPUS)
        start = time.monotonic()
        out = ce.run_ours(task)
        if task["mode"] == "timing" and time.monotonic() - start > 5:
            out = ce.TIMEOUT
        results[ce.set_name(entry)].append(ce.score(entry, out))
    return ce.summarise(results)


def test_every_set_has_a_floor(rates: dict[str, tuple[int, int]]) -> None:
    assert set(rates) == set(FLOORS)


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_pass_rate_at_or_above_floor(rates: dict[str, tuple[int, int]], name: str) -> None:
    passed, scored = rates[name]
    rate = 100 * passed / scored
    print(f"{name}: {passed}/{scored} = {rate:.1f}%")
    assert rate >= FLOORS[name], f"{name}: {passed}/{scored} = {rate:.1f}% < {FLOORS[name]}%"


def test_never_raises_on_any_corpus_file() -> None:
    if not (CORPUS / "MANIFEST.json").exists():
        pytest.skip(f"corpus not present at {CORPUS}")
    from mailflow.parse import parse_message

    for entry in ce.load_entries(CORPUS):
        parsed = parse_message((CORPUS / entry["file"]).read_bytes())
        assert set(parsed.to_json_dict()) == {"kind", "text", "setback", "sections"}
