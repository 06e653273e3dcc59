"""Weights & Biases, offline: the run carries the resolved config and the final TTA metrics, in a useful group."""
from __future__ import annotations

import json

import pytest

from skinlesion.testing import train

wandb = pytest.importorskip("wandb")


@pytest.fixture
def captured(tmp_path, monkeypatch):
    """What reached the W&B run, read just before the job closes it."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    seen: dict = {}
    finish = wandb.finish

    def capture(*args, **kwargs):
        run = wandb.run
        if run is not None:
            seen.update(config=run.config.as_dict(), group=run.group, tags=list(run.tags),
                        summary={k: run.summary[k] for k in run.summary.keys()})
        return finish(*args, **kwargs)

    monkeypatch.setattr(wandb, "finish", capture)
    return seen


def test_config_and_final_metrics_reach_the_run(pad_root, tmp_path, captured):
    run = train(["data=pad_ufes", f"data.root={pad_root}", "model=meta_only", "logger=wandb", "tta=none",
                 "optim.optimizer.lr=0.0123"], tmp_path / "run")
    assert wandb.run is None                               # finished: the next job of a sweep opens its own
    config, summary = captured["config"], captured["summary"]
    # the resolved config, nested as in config.yaml, so runs filter by e.g. optim.optimizer.lr
    assert config["optim"]["optimizer"]["lr"] == 0.0123
    assert config["data"]["dataset"] == "pad_ufes" and config["model"]["name"] == "meta_only"
    assert captured["group"] == "pad_ufes-Meta"              # single run: dataset-method
    metrics = json.loads((run / "metrics.json").read_text())
    for part in ("val", "test"):
        m = metrics[part]["meta"]
        assert summary[f"final/{part}/meta/diagnostic/bac"] == pytest.approx(m["tasks"]["diagnostic"]["bac"])
        assert summary[f"final/{part}/meta/diagnostic/auc"] == pytest.approx(m["tasks"]["diagnostic"]["auc"])
        assert summary[f"final/{part}/main"] == pytest.approx(m["tasks"]["diagnostic"]["bac"])
    assert list((run / "wandb").glob("offline-run-*"))


def test_without_credentials_it_logs_offline_in_the_experiments_group(derm7pt_root, tmp_path, captured,
                                                                     monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))              # no ~/.netrc: no credentials
    run = train(["data=derm7pt", f"data.root={derm7pt_root}", "model=jif_cat", "logger=wandb", "tta=none",
                 "group=table4_x", "trainer.limit_train_batches=2"], tmp_path / "run")
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (run / "csv" / "metrics.csv").is_file()        # CSV is always written as well
    assert captured["group"] == "table4_x"
    # every branch and the combination, per task, and the derm7pt averages
    summary = captured["summary"]
    metrics = json.loads((run / "metrics.json").read_text())
    for combo in ("image", "meta", "fusion", "all"):
        for task in ("DIAG", "PN"):
            assert summary[f"final/test/{combo}/{task}/acc"] == pytest.approx(
                metrics["test"][combo]["tasks"][task]["acc"])
        assert summary[f"final/test/{combo}/avg_auc"] == pytest.approx(metrics["test"][combo]["avg_auc"])


def test_fusionm4net_stage2_logs_its_config_and_p1_p2_p3(derm7pt_root, fusionm4net_run, tmp_path, captured):
    import shutil

    from skinlesion.fusionm4net.pipeline import run_pipeline
    from skinlesion.testing import fusionm4net_cfg

    stage1 = shutil.copytree(fusionm4net_run[0] / "stage1", tmp_path / "stage1")   # finished: only stage 2 runs
    cfg = fusionm4net_cfg(derm7pt_root, tmp_path / "run", "logger=wandb", "stage2.grid_n=5", "cluster=logreg",
                          f"stage1_dir={stage1}")
    result = run_pipeline(cfg)
    assert captured["config"]["cluster"] == "logreg" and captured["group"] == "derm7pt-FusionM4Net"
    summary = captured["summary"]
    for b in ("p1", "p2", "p3"):
        assert summary[f"final/test/{b}/avg_acc"] == pytest.approx(result["avg_acc"]["test"][b])
    assert summary["fusion_scheme2/w"] == pytest.approx(result["w"])


def test_a_resumed_run_continues_its_one_wandb_run(pad_root, tmp_path, captured):
    """Stopped at its third epoch and run again in the same directory: both attempts log to the W&B run whose id
    run.json keeps, so a dashboard counts the run once."""
    from skinlesion.testing import four_epochs, run_record, signal_at_epoch_2

    stop = [*four_epochs(pad_root, tmp_path / "cache"), "logger=wandb",
            *signal_at_epoch_2("SIGINT", tmp_path / "once")]
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        train(stop, run, tiny=False)
    first = run_record(run)["wandb_id"]
    train(stop, run, tiny=False)
    record = run_record(run)
    assert record["status"] == "completed" and record["wandb_id"] == first and first
    attempts = sorted((run / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(p.name.endswith(f"-{first}") for p in attempts)
