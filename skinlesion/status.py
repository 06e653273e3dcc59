"""Where a sweep stands, in one command: every job of one or more sweep (or run) directories with its status, its
attempts and what ended the last one, then the count per status.

    python -m skinlesion.status multirun/2025-01-01/12-00-00
    skinlesion-status multirun/...

Statuses: ``completed``; ``running`` (or killed without a word: SIGKILL, a lost node — its rerun resumes);
``requeued`` (the cluster runs it again); ``interrupted`` (SIGTERM or Ctrl-C, not requeued); ``timed_out`` (the time
limit with no requeue left); ``failed`` (with the error); ``missing`` (expected by the sweep, never started).
Exit status 0 when every job has completed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from skinlesion.evaluation.aggregate import collect_jobs


def rows(dirs: Sequence[str | Path]) -> list[dict]:
    jobs, _ = collect_jobs(dirs)
    out = []
    for job in sorted(jobs, key=lambda j: str(j.path)):
        info = job.info or {}
        attempts = info.get("attempts") or []
        status = info.get("status") or ("missing" if job.status == "missing_job" else job.status)
        if status == "completed" and job.status != "ok":
            status = job.status   # completed, but its predictions are gone
        last = attempts[-1] if attempts else {}
        where = last.get("interrupted_at") or info.get("failed_at")
        out.append({"job": str(job.path), "status": status, "attempts": " ".join(a.get("outcome") or "running"
                                                                              for a in attempts) or "-",
                    "at": f"epoch {where['epoch']}, step {where['step']}" if where else "",
                    "note": info.get("error") or ("" if job.status in ("ok", "running") else job.reason or "")})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m skinlesion.status", description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", metavar="SWEEP_DIR")
    args = ap.parse_args(argv)
    try:
        table = rows(args.dirs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not table:
        print(f"no jobs under {', '.join(args.dirs)}")
        return 1
    width = max(len(r["job"]) for r in table)
    print(f"{'job':<{width}}  {'status':<12} {'attempts':<32} {'stopped at':<18} note")
    for r in table:
        print(f"{r['job']:<{width}}  {r['status']:<12} {r['attempts']:<32} {r['at']:<18} {r['note']}".rstrip())
    counts = Counter(r["status"] for r in table)
    print(", ".join(f"{n} {s}" for s, n in counts.most_common()))
    return 0 if set(counts) == {"completed"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
