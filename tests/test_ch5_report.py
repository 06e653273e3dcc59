"""Chapter-5 sweeps turned into the thesis's configuration tables (Tables 5.6-5.18 layout)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from skinlesion.evaluation import simulated_runs as S
from skinlesion.evaluation.tables import ch5_thesis_row
from skinlesion.report import main as report_main
from skinlesion.testing import sweep

SWIN, MNV3, R50, CNX = ("swin_tiny_patch4_window7_224.ms_in1k", "mobilenetv3_small_100.lamb_in1k",
                        "resnet50.tv_in1k", "convnext_tiny.fb_in1k")


@pytest.mark.parametrize("method,backbone,row", [
    ("SFF-CAT", SWIN, "SFF-CAT"), ("AFF-BAB", SWIN, "AFF-BAB"), ("AMMFM", SWIN, "AFF+AAB (AMMFM)"),
    ("AFF-AAB", SWIN, "AFF+AAB (AMMFM)"), ("AMMFM", R50, "AFF+AAB (ResNet50)"), ("SFF-CAT", CNX, "SFF-CAT (ConvNeXt)"),
    ("SFF-CAT", MNV3, "SFF-CAT (MN)"), ("Single-derm", SWIN, "Derm (ST)"), ("Single-clinic", MNV3, "Clic (MN)"),
    ("PEMM", SWIN, "PS+SCA+BL (PEMM)"), ("PEMM", "densenet201.tv_in1k", "PS+SCA+BL (DenseNet201)"),
    ("PS-CAT", SWIN, "PS"), ("PEMM W=0.3", SWIN, "W=0.3"), ("PEMM W=eq", SWIN, "EQ"),
    ("AMMFM-reversed", MNV3, "AFF+AAB reversed (Clic ST / Derm MN)")])
def test_configurations_map_to_the_thesis_rows(method, backbone, row):
    assert ch5_thesis_row(method, backbone) == row


def _simulated_table5_6(root, runs=3):
    """Runs shaped like a table5_6 sweep, on the real backbones, with known predictions."""
    rng = np.random.default_rng(0)
    classes = S.dataset_classes("derm7pt")
    y = {t: rng.integers(0, len(c), size=60) for t, c in classes.items()}
    job = 0
    for method, signal, thesis_count in (("SFF-CAT", 1.0, 58.36e6), ("AFF-AAB", 1.6, 33.29e6)):
        for seed in range(runs):
            test = S.make_predictions(classes, 60, ["derm", "clinic", "fusion"], rng, signal, y)
            info = S.run_info("derm7pt", "two_image", method, SWIN, None, seed, ["derm", "clinic", "fusion"],
                              reported="fusion", experiment="table5_6",
                              params={"total": 1, "trainable": 1, "thesis_count": thesis_count})
            S.write_run(root / str(job), info, test, test)
            job += 1
    return root


def test_configuration_table_mean_std_and_thesis_cells(tmp_path):
    sweep = _simulated_table5_6(tmp_path / "sweep")
    assert report_main([str(sweep), "--out", str(tmp_path / "rep"), "--format", "csv", "--no-figures"]) == 0
    table = pd.read_csv(tmp_path / "rep" / "tables" / "derm7pt_test_configurations.csv", dtype=str)
    assert list(table["Configuration"]) == ["SFF-CAT", "AFF-AAB"] and list(table["runs"]) == ["3", "3"]
    # AVG AUC recomputed independently: mean over runs of the mean of the 17 non-absent category AUCs
    absent = {"DIAG": [], "PN": ["ABS"], "STR": ["ABS"], "PIG": ["ABS"], "RS": ["ABS"], "DaG": ["ABS"],
              "BWV": ["ABS"], "VS": ["ABS"]}
    for job, row in zip((0, 3), table.itertuples()):
        aucs = []
        for j in range(job, job + 3):
            df = pd.read_parquet(sweep / str(j) / "predictions" / "test.parquet")
            cats = []
            for t, cls in S.dataset_classes("derm7pt").items():
                for k, c in enumerate(cls):
                    if c not in absent[t]:
                        cats.append(roc_auc_score(df[f"target/{t}"] == k, df[f"prob/fusion/{t}/{c}"]))
            assert len(cats) == 17
            aucs.append(np.mean(cats))
        cell = row[3]
        assert cell.startswith(f"{100 * np.mean(aucs):.1f} ± {100 * np.std(aucs, ddof=1):.1f}")
    assert "[T5.6: 87.3 ± 0.4; Δ" in table.iloc[0]["AVG AUC"] and "[T5.6: 76.6 ± 0.5; Δ" in table.iloc[0]["AVG ACC"]
    assert "[T5.6: 87.6 ± 0.4; Δ" in table.iloc[1]["AVG AUC"]
    assert table.iloc[0]["Params (M)"] == "58.36 [T5.6: 58.49]" and table.iloc[1]["Params (M)"] == "33.29 [T5.6: 33.06]"


TINY_CLI = ["backbone=test_resnet", "backbone.pretrained=false", "structure.clinic_backbone.name=test_efficientnet",
            "trainer=cpu", "trainer.max_epochs=2", "callbacks.swa.last_epochs=1", "trainer.limit_train_batches=2",
            "data.image_size=32", "data.batch_size=32", "data.num_workers=0", "data.progress=false", "tta=flips",
            "trainer.enable_progress_bar=false", "callbacks.progress_bar=null"]


def test_a_real_table5_6_sweep_becomes_the_table(derm7pt_root, tmp_path):
    out = tmp_path / "table5_6"
    sweep(["experiment=table5_6", "structure=aff", "block=cat,aab", "seed=0", f"data.root={derm7pt_root}", *TINY_CLI,
           f"hydra.sweep.dir={out}"])
    records = [json.loads((out / j / "run.json").read_text()) for j in ("0", "1")]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert sorted(r["method"] for r in records) == ["AFF-AAB", "AFF-CAT"]
    assert all(r["reported"] == "searched" and r["experiment"] == "table5_6" for r in records)
    assert report_main([str(out), "--out", str(tmp_path / "rep"), "--format", "csv", "--no-figures"]) == 0
    table = pd.read_csv(tmp_path / "rep" / "tables" / "derm7pt_test_configurations.csv", dtype=str)
    assert sorted(table["Configuration"]) == ["AFF-AAB", "AFF-CAT"] and list(table["runs"]) == ["1", "1"]
    for rec, job in zip(records, ("0", "1")):
        metrics = json.loads((out / job / "metrics.json").read_text())
        row = table[table["Configuration"] == rec["method"]].iloc[0]
        assert row["AVG ACC"].startswith(f"{100 * metrics['test']['searched']['avg_acc']:.1f}")
