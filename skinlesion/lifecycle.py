"""How a run's attempt ends, told truthfully in ``run.json``: the signals a job receives and who owns each.

Outside a cluster, SIGTERM and SIGINT (Ctrl-C) stop the job by an exception, and the attempt is recorded
``interrupted``. Under submitit (``launcher=slurm``, ``hydra/launcher=submitit_local``) one owner answers each signal:

- the requeue signal (submitit's, USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise; SLURM sends it before the
  time limit, and on preemption where the cluster sets ``PreemptParameters=send_user_signal``) goes to submitit,
  which requeues the job and exits: the attempt is ``requeued``. The SIGTERM that SLURM sends to the job it is
  requeueing arrives a moment later and is ignored, so it cannot overwrite that. When submitit declines (the job has
  used up ``max_num_timeout`` requeues) the attempt is ``timed_out``, said in one line;
- SIGTERM with no requeue before it (``scancel``, a preemption on a cluster that sends SIGTERM only, the time limit
  without the early signal) is ``interrupted``; on SLURM the job's record is asked, so ``scontrol requeue`` — which
  SLURM itself carries out, counting a restart before it signals the job — is recorded ``requeued``.

Lightning's own SLURM requeue is switched off (:func:`cluster_plugins`), so it never answers the same signal twice.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
from dataclasses import dataclass

log = logging.getLogger("skinlesion")


class Stopped(KeyboardInterrupt):
    """SIGTERM turned into the same shutdown path as Ctrl-C (Lightning stops its loops and tears down)."""


@dataclass
class Outcome:
    status: str             # requeued, interrupted or timed_out
    error: str | None       # the one line run.json and the log say
    detail: dict            # more for the attempt record (the signal, SLURM's job state)


def submitit_job() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def _requeue_signal() -> signal.Signals | None:
    if not submitit_job():
        return None
    from submitit.core.job_environment import JobEnvironment

    return JobEnvironment._usr_sig()   # noqa: SLF001  (submitit's own choice of signal, from its environment)


class RunSignals:
    """The signal handlers of one attempt, installed for the whole attempt — its bookkeeping included, so that a
    second signal cannot cut the record short — and the outcome they imply (:meth:`outcome`)."""

    def __init__(self):
        self.received: str | None = None    # the first SIGTERM/SIGINT that stopped the job
        self.requeue: str | None = None     # None, "asked" (submitit is answering), "requeued", "declined"
        self.declined: str | None = None    # submitit's reason for not requeueing
        self._previous: dict = {}

    def __enter__(self) -> RunSignals:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._stop)
            usr = _requeue_signal()
            if usr is not None and callable(owner := signal.getsignal(usr)):
                self._previous[usr] = signal.signal(usr, self._requeue_by(owner))
        except ValueError:   # not the main thread (e.g. a notebook worker): leave the handlers alone
            pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _stop(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requeue is not None or self.received is not None:
            log.warning("%s received while the job is already ending (%s); ignored", name,
                        f"requeue {self.requeue}" if self.requeue else f"stopped by {self.received}")
            return
        self.received = name
        raise Stopped(name)

    def _requeue_by(self, owner):
        def handler(signum, frame) -> None:
            if self.requeue is not None or self.received is not None:
                return
            self.requeue = "asked"
            try:
                owner(signum, frame)
            except SystemExit:          # submitit requeued the job and exits
                self.requeue = "requeued"
                raise
            except Exception as e:      # submitit's UncompletedJobError: not requeued
                self.requeue, self.declined = "declined", str(e)
                raise Stopped(signal.Signals(signum).name) from None
            # returned: not the job's main task (DDP rank > 0); the main task ends the job
        return handler

    def outcome(self, error: BaseException) -> Outcome:
        """What the attempt's end by ``error`` (an exception out of training) means for ``run.json``."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if self.requeue == "requeued" or (self.requeue == "asked" and isinstance(error, SystemExit)):
            return Outcome("requeued", None, {"signal": "requeue"})
        if self.requeue == "declined":
            return Outcome("timed_out", f"time limit reached; not requeued: {self.declined.rstrip('.')} "
                           "(max_num_timeout)", {"signal": "requeue"})
        name = self.received or ("SIGTERM" if isinstance(error, SIGTERMException) else "SIGINT")
        detail: dict = {"signal": name}
        job = slurm_job() if name == "SIGTERM" else {}
        if job.get("JobState"):
            detail["slurm_state"] = job["JobState"]
        # `scontrol requeue` (or a preemption that requeues) counts the restart before it signals the job, while
        # `scancel` does not: the job's restart count beyond this attempt's says SLURM will start it again.
        if job.get("Restarts", "").isdigit() and int(job["Restarts"]) > int(os.environ.get("SLURM_RESTART_COUNT") or 0):
            return Outcome("requeued", None, detail)
        return Outcome("interrupted", f"interrupted by {name}", detail)


def slurm_job() -> dict[str, str]:
    """SLURM's record of this job (``JobState``, ``Restarts``, ...), or {} off SLURM or when ``scontrol`` does not
    answer within a few seconds (SLURM kills the job ``KillWait`` seconds after SIGTERM)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=3).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def exit_code(outcome: Outcome) -> int:
    """The process's exit status after an ``interrupted`` or ``timed_out`` attempt: 128 + the signal, as a shell
    reports a process a signal ended."""
    sig = getattr(signal, outcome.detail.get("signal", ""), signal.SIGTERM)
    return 128 + int(sig)


def cluster_plugins() -> list:
    """On SLURM, submitit owns the preemption/timeout signal and the requeue (launcher=slurm); Lightning's own
    SLURM auto-requeue would answer the same job's signals a second time, so it is switched off."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
