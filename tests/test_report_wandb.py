"""python report.py ... --wandb: the report's tables and figures go to one offline W&B run in the sweep's group."""
import csv
import json

import pytest

from skinlesion.evaluation.aggregate import collect_jobs
from skinlesion.evaluation.simulated_runs import make_sweep
from skinlesion.report import main, sweep_group

wandb = pytest.importorskip("wandb")


def test_report_logs_tables_and_figures_to_one_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    sweep = make_sweep(tmp_path / "sweep", "pad_ufes", models=("image_only", "jf_cat", "jif_mmfa"),
                       experiment="table4_1", features=True)
    calls, logged = [], []
    real_init = wandb.init

    def spy_init(**kwargs):
        calls.append(kwargs)
        run = real_init(**kwargs)
        real_log = run.log
        monkeypatch.setattr(run, "log", lambda data, *a, **k: (logged.append(data), real_log(data, *a, **k))[1])
        return run

    monkeypatch.setattr(wandb, "init", spy_init)
    out = tmp_path / "rep"
    assert main([str(sweep), "--out", str(out), "--format", "csv", "--no-tsne", "--wandb"]) == 0
    assert "W&B: logged" in capsys.readouterr().out

    assert len(calls) == 1 and calls[0]["group"] == "table4_1" and calls[0]["job_type"] == "report"
    payload = {k: v for d in logged for k, v in d.items()}
    csvs = sorted((out / "tables").glob("*.csv"))
    assert {f"tables/{p.stem}" for p in csvs} == {k for k in payload if k.startswith("tables/")}
    for p in csvs:
        with open(p, newline="") as f:
            header, *rows = list(csv.reader(f))
        table = payload[f"tables/{p.stem}"]
        assert isinstance(table, wandb.Table)
        assert table.columns == header and [list(map(str, r)) for r in table.data] == rows
    stats = payload["tables/pad_ufes_val_bac_stats"]
    assert stats.columns[:2] == ["Pair", "n"] and stats.data[0][0] == "Image - JF-CAT"
    pngs = sorted((out / "figures").glob("*.png"))
    images = {k: v for k, v in payload.items() if k.startswith("figures/")}
    assert len(pngs) >= 3 and set(images) == {f"figures/{p.stem}" for p in pngs}
    assert all(isinstance(v, wandb.Image) for v in images.values())
    from PIL import Image
    bar = images["figures/bar_pad_ufes_bac_val"]
    assert (bar.image.width, bar.image.height) == Image.open(out / "figures" / "bar_pad_ufes_bac_val.png").size

    # the offline run holds the logged tables as files (what `wandb sync` uploads)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    saved = list((runs[0] / "files" / "media" / "table" / "tables").glob("pad_ufes_val_bac_backbones_*.table.json"))
    assert saved and json.loads(saved[0].read_text())["columns"][0] == "Backbone"


def test_sweep_group_falls_back_to_the_directory(tmp_path):
    sweep = make_sweep(tmp_path / "my-sweep", "pad_ufes", models=("image_only",), runs=(0,))
    jobs, _ = collect_jobs([sweep])
    assert sweep_group(jobs, [sweep]) == "my-sweep"
    named = make_sweep(tmp_path / "other", "pad_ufes", models=("image_only",), runs=(0,), experiment="table4_1")
    jobs, _ = collect_jobs([named])
    assert sweep_group(jobs, [named]) == "table4_1"
