"""Tests on a real one-node SLURM cluster (``make test-cluster``): the cluster is started (or found running) by
``scripts/slurm-cluster.sh``; without one, or without ``SKINLESION_CLUSTER_TESTS=1`` (the fast suite), every test
here is skipped with one reason. A summary line per case (outcome, the attempts of its ``run.json``, seconds) is
appended to ``$SKINLESION_CLUSTER_SUMMARY`` when set, and printed at the end of the session."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from skinlesion.testing import REPO

ENABLE = "SKINLESION_CLUSTER_TESTS"
SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
_cluster: dict = {}
_lines: list[str] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: runs real SLURM jobs on a one-node cluster (make test-cluster)")


def cluster_unavailable() -> str | None:
    """Why no cluster can be used (None: it is up). Starts it once per session."""
    if "reason" not in _cluster:
        reason = None
        if shutil.which("bash") is None:
            reason = "no bash"
        else:
            try:
                proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600)
                out = (proc.stdout + proc.stderr).strip()
                if proc.returncode != 0:
                    line = next((s for s in out.splitlines() if "cannot start" in s), out.splitlines()[-1:] or [""])
                    reason = f"{SCRIPT.name} exited {proc.returncode}: {''.join(line).strip()}"
            except subprocess.TimeoutExpired:
                reason = f"{SCRIPT.name} did not finish in 600 s"
        if reason is None and shutil.which("sinfo") is None:
            reason = "sinfo not found (no SLURM client tools)"
        _cluster["reason"] = reason
    return _cluster["reason"]


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    ours = [i for i in items if here in Path(str(i.fspath)).parents]
    if not ours:
        return
    if os.environ.get(ENABLE) != "1":
        skip = pytest.mark.skip(reason=f"SLURM cluster tests run with `make test-cluster` ({ENABLE}=1)")
    else:
        reason = cluster_unavailable()
        skip = pytest.mark.skip(reason=f"no SLURM cluster: {reason}") if reason else None
    if skip is not None:
        for item in ours:
            item.add_marker(skip)


def summary(line: str) -> None:
    """One line of the closing note (and of ``$SKINLESION_CLUSTER_SUMMARY``)."""
    _lines.append(line)
    path = os.environ.get("SKINLESION_CLUSTER_SUMMARY")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or "cluster" not in item.keywords:
        return
    props = dict(item.user_properties)
    verdict = "PASS" if report.passed else ("SKIP" if report.skipped else "FAIL")
    seconds = props.get("seconds")
    took = f"{seconds:.0f} s" if isinstance(seconds, int | float) else "?"
    summary(f"{verdict:<4} {props.get('case', item.name)}: {took}; attempts: {props.get('attempts', '?')}"
            + (f"; {props['note']}" if props.get("note") else "")
            + ("" if report.passed else f"; {str(report.longrepr).strip().splitlines()[-1][:300]}"))


def pytest_terminal_summary(terminalreporter):
    if _lines and not os.environ.get("SKINLESION_CLUSTER_SUMMARY"):   # else `make test-cluster` prints the file
        terminalreporter.section("SLURM cluster cases")
        for line in _lines:
            terminalreporter.write_line(line)
