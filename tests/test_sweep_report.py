"""A real sweep (train.py -m, the reduced table4_1 preset, run in process) turned into a report by report.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from skinlesion.report import main as report_main
from skinlesion.testing import sweep as run_sweep

TINY_CLI = ["backbone=test_efficientnet", "backbone.pretrained=false", "trainer=cpu", "trainer.max_epochs=1",
            "data.image_size=32", "data.batch_size=32", "data.num_workers=0", "data.progress=false", "tta=none",
            "trainer.enable_progress_bar=false", "callbacks.progress_bar=null"]


@pytest.fixture(scope="module")
def sweep(pad_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "table4_1"
    run_sweep(["experiment=table4_1", "model=image_only,jif_mmfa", "data.fold=0,1", f"data.root={pad_root}", *TINY_CLI,
           f"hydra.sweep.dir={out}"])
    return out


def test_sweep_runs_the_narrowed_grid(sweep):
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and (p / "run.json").is_file())
    assert jobs == ["0", "1", "2", "3"]
    records = {j: json.loads((sweep / j / "run.json").read_text()) for j in jobs}
    assert {j: r["status"] for j, r in records.items()} == dict.fromkeys(jobs, "completed"), records
    assert sorted((r["model"], r["fold"]) for r in records.values()) == [
        ("image_only", 0), ("image_only", 1), ("jif_mmfa", 0), ("jif_mmfa", 1)]
    for j in jobs:
        assert (sweep / j / "predictions" / "val.parquet").is_file() and (sweep / j / "predictions" / "test.parquet").is_file()


def _val_bac(run_dir: Path, branches: list[str]) -> float:
    """Validation BAC of the mean of ``branches``, straight from the saved parquet columns."""
    df = pd.read_parquet(run_dir / "predictions" / "val.parquet")
    prob = sum(df[[c for c in df.columns if c.startswith(f"prob/{b}/diagnostic/")]].to_numpy() for b in branches)
    return balanced_accuracy_score(df["target/diagnostic"], prob.argmax(1))


def test_report_tables_figures_and_html(sweep, tmp_path):
    out = tmp_path / "report"
    assert report_main([str(sweep), "--format", "md,csv,tex", "--out", str(out)]) == 0
    assert (out / "report.html").is_file() and list((out / "figures").glob("*.png"))
    for ext in ("md", "csv", "tex"):
        assert list((out / "tables").glob(f"*.{ext}")), ext
    summary = pd.read_csv(out / "summary.csv")
    methods = set(summary["method"])
    assert {"Image", "JIF-MMFA(OFB)", "JIF-MMFA(All)"} <= methods
    assert set(summary["backbone"]) >= {"test_efficientnet"}
    html = (out / "report.html").read_text()
    assert "JIF-MMFA(All)" in html and "data:image/png;base64" in html
    assert pd.read_csv(out / "missing.csv").empty
    # every number comes from a completed run's own predictions: 2 folds per method, BAC recomputed here
    runs = pd.read_csv(out / "runs.csv")
    val = runs[runs.split == "val"]
    assert sorted(val.groupby("method").size().items()) == [("Image", 2), ("JIF-MMFA(All)", 2), ("JIF-MMFA(OFB)", 2)]
    outputs = {"Image": ["image"], "JIF-MMFA(OFB)": ["fusion"], "JIF-MMFA(All)": ["image", "meta", "fusion"]}
    for r in val.itertuples():
        assert json.loads((Path(r.run) / "run.json").read_text())["status"] == "completed"
        assert r.score == pytest.approx(_val_bac(Path(r.run), outputs[r.method]))
    avg = summary[(summary.split == "val") & (summary.backbone == "Average")].set_index("method")
    for m in outputs:
        assert avg.loc[m, "n"] == 2 and avg.loc[m, "mean"] == pytest.approx(val[val.method == m]["score"].mean())


def test_report_lists_a_missing_run(sweep, tmp_path):
    broken = tmp_path / "sweep"
    shutil.copytree(sweep, broken)
    shutil.rmtree(broken / "3")
    out = tmp_path / "report"
    assert report_main([str(broken), "--out", str(out), "--no-figures"]) == 0
    missing = pd.read_csv(out / "missing.csv")
    assert len(missing) == 1
    row = missing.iloc[0].astype(str).str.cat(sep=" ")
    assert "jif_mmfa" in row and "data.fold=1" in row


def test_rerunning_the_sweep_skips_its_completed_runs(sweep, pad_root, capsys):
    """The same sweep command again: every completed run is skipped, its files untouched (Hydra's own .hydra/
    bookkeeping, multirun.yaml, the job logs and the run-directory locks aside)."""
    before = {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file() and p.parent.name != ".hydra"
              and p.name != ".run.lock"}
    run_sweep(["experiment=table4_1", "model=image_only,jif_mmfa", "data.fold=0,1", f"data.root={pad_root}", *TINY_CLI,
               f"hydra.sweep.dir={sweep}"])
    assert capsys.readouterr().out.count("already completed; skipped") == 4
    after = {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file() and p.parent.name != ".hydra"
              and p.name != ".run.lock"}
    assert {p: t for p, t in after.items() if p.name not in ("train.log", "multirun.yaml")} == \
        {p: t for p, t in before.items() if p.name not in ("train.log", "multirun.yaml")}
