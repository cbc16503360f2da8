"""Run the reliability, hostile-input, overload, TLS and security tests and write docs/reliability.md.

    python -m tests.reliability_table            # from the repository root
    python -m tests.reliability_table -x -k tls  # extra arguments go to pytest

The table is generated from what the tests did, never written by hand: one
row per test case with what it expected, what it observed (the messages and
numbers the test recorded with ``record_property``) and whether it passed.
The exit code is pytest's.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "reliability.md"

# Sections of the document, in order: (title, test file, what the section promises).
SECTIONS = [
    ("Faults", "batch/test_reliability_faults.py",
     "Workers and drivers killed at awkward moments, with real processes on loopback."),
    ("Hostile manifests and rows", "batch/test_hostile_manifest.py",
     "The driver against broken manifests and rows: manifest-level problems stop the run before any call "
     "(`batch.ManifestError`; `batch run` exits 2); row-level ones fail that row with its message and reason "
     "while the other rows succeed."),
    ("Hostile image bytes at the worker", "worker/test_hostile_worker.py",
     "Sent over gRPC to a real worker (`--max-message-mb 1`, memory capped); after each case the worker "
     "must still answer health SERVING and rotate a good image."),
    ("Property tests (hypothesis)", "worker/test_hostile_fuzz.py",
     "Arbitrary and mutated bytes into the decode path, `worker.rotation` and the manifest parser: "
     "only our own clean errors, never another exception or a hang."),
    ("Rotation fidelity and decoder work", "worker/test_rotate_fidelity.py",
     "Deep colour, EXIF orientation of any integer type, RGBA BMP and decoder work bombs through a real worker: "
     "never `ok` with less than was sent, and no file may cost unbounded work."),
    ("The worker's limits per call, and its operations", "worker/test_worker_limits.py",
     "Abandoned and expired calls, clients that never read their answers, one size limit for every service, "
     "a port already held, unusable TLS files and bad options at start-up."),
    ("Inputs that would hang or exhaust the driver", "batch/test_driver_inputs.py",
     "FIFOs, devices, sockets, files over what a call can carry, and folders in --out that link elsewhere."),
    ("The results folder is the run's own", "batch/test_results_folder.py",
     "Outputs naming the run's files or the manifest, planted links, full and read-only disks, damaged "
     "journals, shorter manifests: one line and the right exit code, nothing lost, nothing temporary left."),
    ("Overload", "batch/test_overload.py", "Four drivers at `--concurrency 64` against one small worker."),
    ("TLS and mTLS end to end", "batch/test_tls_batch.py", "`batch run` against TLS and mTLS workers."),
    ("Security", "worker/test_reliability_security.py", "What the worker touches and how models are loaded."),
    ("Who can reach a worker, and what references let them do", "worker/test_trust.py",
     "Another local user (nobody) during a batch with the embedded worker, named workers serving references "
     "without client certificates, output folders raced into links, idle connections to the metrics port."),
    ("Clients we did not write", "worker/test_conformance.py",
     "A fresh `worker serve` called only through stubs generated from proto/ into a temporary folder (every "
     "RPC, with no deadline, a very long one and a very short one), Node's @grpc/grpc-js, and the seed's "
     "legacy client (raw pixels, no deadline)."),
    ("Streams that stop sending, cancels, idle connections", "worker/test_stream_limits.py",
     "Streams that declare much and send nothing, pause, trickle or are cancelled; connections that never "
     "speak or stop answering pings: bounded by what was received, idle and call limits, keepalive."),
    ("Hostile options, templates, object keys and outputs", "batch/test_driver_hostile.py",
     "`--timeout inf`, `--name {rotation:d}`, object keys with ? or #, and outputs truncated, emptied or "
     "replaced after a run: a usage error before any work, a per-row refusal, or a rerun on resume."),
    ("Drivers sharing a fleet", "batch/test_shared_fleet.py",
     "Four adaptive drivers against two small workers: busy refusals retried, no row failed as overloaded."),
]

TMP = re.compile(r"/tmp/(?:pytest-of-[^/\s]+/pytest-\d+/|tmp[\w-]+/)")


@dataclass
class Case:
    nodeid: str
    doc: str = ""
    outcome: str = "not run"
    properties: dict[str, str] = field(default_factory=dict)
    reason: str = ""


class Collector:
    """A pytest plugin that remembers each test's docstring, recorded properties and outcome."""

    def __init__(self) -> None:
        self.cases: dict[str, Case] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            doc = (getattr(item, "function", None).__doc__ or "").strip().splitlines()
            self.cases[item.nodeid] = Case(item.nodeid, doc[0] if doc else "")

    def pytest_deselected(self, items) -> None:
        for item in items:
            self.cases.pop(item.nodeid, None)

    def pytest_runtest_logreport(self, report) -> None:
        case = self.cases.setdefault(report.nodeid, Case(report.nodeid))
        for key, value in report.user_properties:
            case.properties[key] = str(value)
        if report.when == "call" or report.outcome != "passed":
            if case.outcome in ("not run", "passed"):
                case.outcome = report.outcome if report.when == "call" else (
                    "skipped" if report.skipped else f"error in {report.when}")
            if report.failed:
                case.reason = _first_line(report.longreprtext)
            elif report.skipped and isinstance(report.longrepr, tuple):
                case.reason = report.longrepr[2]


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("E ")]
    return (lines[0][2:].strip() if lines else text.strip().splitlines()[-1] if text.strip() else "")[:300]


def _cell(text: str) -> str:
    text = TMP.sub("…/", text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 400 else text[:397] + "…"


def _case_name(case: Case) -> str:
    name = case.nodeid.split("::", 1)[1]
    if "[" in name:
        return name[name.index("[") + 1: -1]
    return case.doc or name.replace("_", " ")


MARK = {"passed": "✅ pass", "failed": "❌ FAIL", "skipped": "⏭ skipped"}


def render(cases: list[Case], exit_code: int) -> str:
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.outcome] = counts.get(c.outcome, 0) + 1
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    lines = [
        "# Reliability and security: what was tried, and what happened",
        "",
        "Generated by `python -m tests.reliability_table` from the outcomes of the tests below — do not edit by "
        "hand; run the command again instead.",
        "",
        f"Run on {datetime.date.today().isoformat()} at commit `{commit.stdout.strip() or 'unknown'}`, "
        f"Python {sys.version.split()[0]}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f" (pytest exit code {exit_code}).",
        "",
    ]
    for title, filename, promise in SECTIONS:
        rows = [c for c in cases if c.nodeid.split("::")[0].endswith(filename)]
        if not rows:
            continue
        lines += [f"## {title}", "", f"{promise} (`tests/{filename}`)", "",
                  "| case | expected | observed | outcome |", "|---|---|---|---|"]
        for c in rows:
            expected = c.properties.get("expected", "")
            observed = c.properties.get("observed", "")
            if c.outcome != "passed" and c.reason:
                observed = (observed + " — " if observed else "") + c.reason
            lines.append(f"| {_cell(_case_name(c))} | {_cell(expected)} | {_cell(observed)} | "
                         f"{MARK.get(c.outcome, c.outcome)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    files = [str(ROOT / "tests" / f) for _, f, _ in SECTIONS if (ROOT / "tests" / f).exists()]
    collector = Collector()
    code = pytest.main(["-p", "no:cacheprovider", "-q", "-W", "ignore", *files, *argv], plugins=[collector])
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(render(list(collector.cases.values()), int(code)), encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
