"""Under submitit, one owner per signal, and run.json tells the truth: a requeue is ``requeued`` (and the SIGTERM
that SLURM sends to a job it requeues does not overwrite that), a SIGTERM that nothing requeues is ``interrupted``,
and a time limit with no requeue left is ``timed_out``. Real signals, sent by the job process to itself at the start
of its third epoch, inside real submitit jobs (submitit's local executor: its signal handling and environment
variables, without a cluster)."""
from __future__ import annotations

import time

import pytest

from skinlesion.testing import SubmititTrainJob, epochs_logged, four_epochs, run_record, signal_at_epoch_2

submitit = pytest.importorskip("submitit")


def _submit(folder, pad_root, run_dir, signals: str, timeout_min: int = 20, max_num_timeout: int = 3):
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=max_num_timeout)
    executor.update_parameters(timeout_min=timeout_min)
    overrides = [*four_epochs(pad_root, run_dir.parent / "cache"), *signal_at_epoch_2(signals, run_dir / ".sent")]
    return executor.submit(SubmititTrainJob(overrides, run_dir))


def _wait(jobs, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(j.done() for j in jobs):
        assert time.monotonic() < deadline, "submitit jobs did not end in time"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ended(pad_root, tmp_path_factory):
    """Three jobs at once: requeue signal + SLURM's SIGTERM; SIGTERM alone; the requeue signal with none left."""
    base = tmp_path_factory.mktemp("signals")
    runs = {k: base / k for k in ("requeued", "scancel", "exhausted")}
    jobs = {"requeued": _submit(base / "submitit", pad_root, runs["requeued"], "SIGUSR2+SIGTERM"),
            "scancel": _submit(base / "submitit", pad_root, runs["scancel"], "SIGTERM"),
            # with a ten-minute limit submitit counts the signal as the time limit (it guarantees min(80 %,
            # limit - 10 min) of it); max_num_timeout=0 leaves no requeue
            "exhausted": _submit(base / "submitit-0", pad_root, runs["exhausted"], "SIGUSR2", timeout_min=10,
                                 max_num_timeout=0)}
    _wait(list(jobs.values()))
    logs = {k: (j.stdout() or "") + (j.stderr() or "") for k, j in jobs.items()}
    return runs, jobs, logs


@pytest.mark.timeout(300)
def test_a_requeue_is_recorded_requeued_and_the_sigterm_after_it_does_not_overwrite_it(ended):
    runs, jobs, logs = ended
    record = run_record(runs["requeued"])
    first, second = record["attempts"]
    assert first["outcome"] == "requeued" and first["signal"] == "requeue" and first["interrupted_at"]["epoch"] == 2
    # the SIGTERM, delivered with the requeue signal, changed nothing: handled after the requeue, it is ignored
    # (logged when it comes before the attempt has ended; a process that has exited by then never sees it)
    assert "interrupted by SIGTERM" not in logs["requeued"]
    assert second["resumed_from"]["epochs_done"] == 2 and second["outcome"] == "completed"
    assert record["status"] == "completed" and jobs["requeued"].result() == "completed"
    assert epochs_logged(runs["requeued"]) == [0, 1, 2, 3]


@pytest.mark.timeout(300)
def test_a_sigterm_that_nothing_requeues_is_recorded_interrupted(ended):
    runs, jobs, _ = ended
    record = run_record(runs["scancel"])
    assert record["status"] == "interrupted" and record["error"] == "interrupted by SIGTERM"
    assert [a["outcome"] for a in record["attempts"]] == ["interrupted"]         # not requeued, not run again
    jobs["scancel"]._results_timeout_s = 1   # it has ended without a result file: none is coming (submitit waits 15 s)
    with pytest.raises(Exception):                                               # the job failed in submitit's eyes
        jobs["scancel"].result()


@pytest.mark.timeout(300)
def test_a_time_limit_with_no_requeue_left_is_recorded_timed_out_in_one_line(ended):
    runs, _, logs = ended
    record = run_record(runs["exhausted"])
    assert record["status"] == "timed_out" and [a["outcome"] for a in record["attempts"]] == ["timed_out"]
    assert "\n" not in record["error"] and "max_num_timeout" in record["error"]
    assert "timed-out too many times" in record["error"]
    assert sum("run.json records status 'timed_out'" in line for line in logs["exhausted"].splitlines()) == 1


@pytest.mark.timeout(300)
def test_one_command_shows_each_jobs_state_and_attempts(ended, capsys):
    from skinlesion.status import main

    runs, _, _ = ended
    assert main([str(runs["requeued"].parent)]) == 1                          # not every job completed
    lines = {line.split()[0].rsplit("/", 1)[-1]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert lines["requeued"].split()[1:4] == ["completed", "requeued", "completed"]
    assert lines["scancel"].split()[1:3] == ["interrupted", "interrupted"] and "epoch 2" in lines["scancel"]
    assert "timed_out" in lines["exhausted"] and "max_num_timeout" in lines["exhausted"]
