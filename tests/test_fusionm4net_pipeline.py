"""FusionM4Net end to end for one seed on generated derm7pt data: both stage-1 trainings, stage 2, resume."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skinlesion.data import derm7pt
from skinlesion.errors import SkinLesionError
from skinlesion.fusionm4net.pipeline import run_pipeline
from skinlesion.testing import FUSIONM4NET_CACHED, FUSIONM4NET_FAST, compose_cfg, fusionm4net_cfg, unequal_pairs

FAST = FUSIONM4NET_FAST
_cfg = fusionm4net_cfg


@pytest.fixture
def pipeline(fusionm4net_run):
    return fusionm4net_run


def test_the_pipeline_runs_on_unequal_image_pairs(pipeline, derm7pt_root):
    """Generated derm7pt pairs include images of unequal size, as the release does (tests/test_unequal_pairs.py)."""
    out, _ = pipeline
    unequal = unequal_pairs(derm7pt_root)
    folds = pd.read_csv(out / "stage1" / "main" / "folds.csv")
    assert unequal & set(folds.loc[folds["partition"] == "train", "case_id"].astype(str))
    for part in ("val", "test"):
        assert unequal & set(pd.read_parquet(out / "predictions" / f"{part}.parquet")["case_id"].astype(str))


def test_presets_are_fusionnet_and_the_chapter6_recipe(derm7pt_root, tmp_path):
    cfg = compose_cfg(["data=derm7pt", "model=fusionnet"], tmp_path)
    assert cfg.model.net.fusion_input == "sum" and cfg.model.monitor == "branch_mean"
    assert cfg.backbone.name.startswith("resnet50") and cfg.data.batch_size == 32
    assert cfg.trainer.max_epochs == 250 and cfg.optim.optimizer.lr == 3e-5
    assert cfg.callbacks.get("early_stopping") is None and cfg.callbacks.get("swa") is None   # no SWA in ch. 6


def test_sub_model_trains_on_the_first_half_of_the_index_file(pipeline, derm7pt_root):
    out, _ = pipeline
    folds = pd.read_csv(out / "stage1" / "sub" / "folds.csv")
    rows = pd.read_csv(derm7pt_root / "meta" / "train_indexes.csv")["indexes"].to_numpy()
    table = derm7pt.read(derm7pt_root)
    first, rest = rows[: len(rows) // 2], rows[len(rows) // 2:]
    by_id = folds.set_index("case_id")["partition"]
    assert all(by_id[int(table.case_ids[r])] == "train" for r in first)
    assert all(by_id[int(table.case_ids[r])] == "holdout" for r in rest)
    holdout = pd.read_parquet(out / "stage1" / "sub" / "predictions" / "holdout.parquet")
    assert sorted(holdout["case_id"].astype(str)) == sorted(table.case_ids[rest])
    main_folds = pd.read_csv(out / "stage1" / "main" / "folds.csv")
    assert (main_folds["partition"] == "train").sum() == len(rows)          # the main model trains on all


def test_classifier_is_fitted_on_the_holdout_cases_only(pipeline):
    out, _ = pipeline
    fitted = pd.read_parquet(out / "classifier" / "train_features.parquet")
    holdout = pd.read_parquet(out / "stage1" / "sub" / "predictions" / "holdout.parquet")
    val = pd.read_parquet(out / "predictions" / "val.parquet")
    test = pd.read_parquet(out / "predictions" / "test.parquet")
    ids = set(fitted["case_id"].astype(str))
    assert ids == set(holdout["case_id"].astype(str))
    assert not ids & (set(val["case_id"].astype(str)) | set(test["case_id"].astype(str)))


def test_p1_p2_p3_are_saved_scored_and_reported(pipeline):
    out, result = pipeline
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["branches"] == ["p1", "p2", "p3", "p3_avg"]
    metrics = json.loads((out / "metrics.json").read_text())
    test = pd.read_parquet(out / "predictions" / "test.parquet")
    for b in ("p1", "p2", "p3"):
        accs = [(test[[c for c in test.columns if c.startswith(f"prob/{b}/{t}/")]].to_numpy().argmax(1)
                 == test[f"target/{t}"].to_numpy()).mean() for t in [t.name for t in derm7pt.TASKS]]
        assert metrics["test"][b]["avg_acc"] == pytest.approx(sum(accs) / len(accs))
    assert result["avg_acc"]["test"]["p3"] == pytest.approx(metrics["test"]["p3"]["avg_acc"])
    sub = json.loads((out / "stage1" / "sub" / "run.json").read_text())
    assert sub["role"] == "stage1-sub"        # an input of stage 2, not a result the report lists


def test_rerun_skips_finished_stage1_runs(pipeline, derm7pt_root):
    out, _ = pipeline
    ckpts = {p: p.stat().st_mtime_ns for p in (out / "stage1").rglob("*.ckpt")}
    (out / "stage1" / "sub" / "predictions" / "holdout.parquet").unlink()   # the sub run is now unfinished
    run_pipeline(_cfg(derm7pt_root, out, *FUSIONM4NET_CACHED))
    main_after = {p: p.stat().st_mtime_ns for p in (out / "stage1" / "main").rglob("*.ckpt")}
    assert main_after == {p: t for p, t in ckpts.items() if "main" in p.parts}   # main untouched
    assert (out / "stage1" / "sub" / "predictions" / "holdout.parquet").is_file()  # sub redone


def test_a_failed_stage1_run_stops_the_seed_in_words(derm7pt_root, tmp_path):
    with pytest.raises(SkinLesionError, match=r"stage 1 main run failed .*loss diverged"):
        run_pipeline(_cfg(derm7pt_root, tmp_path, "optim.optimizer.lr=1e30"))
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "stage1" / "sub").exists()


def test_report_shows_the_stage_outputs_and_the_searched_weights(pipeline, tmp_path):
    from skinlesion.report import main as report_main

    out, result = pipeline
    assert report_main([str(out), "--out", str(tmp_path / "rep"), "--format", "csv", "--no-figures"]) == 0
    runs = pd.read_csv(tmp_path / "rep" / "runs.csv")
    methods = set(runs[runs["split"] == "test"]["method"])
    assert {"FusionM4Net(P1)", "FusionM4Net(P2)", "FusionM4Net(P3)", "FusionNet(P_derm)", "FusionNet(P_clin)",
            "FusionNet(P_fusion)"} <= methods
    assert not any("sub" in str(r) for r in runs["run"])             # the sub model is an input, not a result
    weights = pd.read_csv(tmp_path / "rep" / "tables" / "fusionm4net_weights.csv", dtype=str)
    row = weights.iloc[0]
    assert row["W_clin"].startswith(f"{100 * result['weights']['clinic']:.1f}")
    assert row["W_1"].startswith(f"{100 * result['w']:.1f}") and "[T6.6: 73.5 ± 6.4" in row["W_1"]
    tasks = pd.read_csv(tmp_path / "rep" / "tables" / "derm7pt_test_avg_acc_task_acc.csv", dtype=str)
    p3 = tasks[tasks["Method"] == "FusionM4Net(P3)"].iloc[0]
    assert "[T6.4: 76.3 ± 0.7" in p3["AVG"]                          # the thesis's P3 beside ours
    # the equal-weight baselines of Tables 6.5 and 6.6, with their thesis cells
    p1_avg = tasks[tasks["Method"] == "FusionNet(P1 averaged)"].iloc[0]
    assert "[T6.5: 87.5 ± 0.5" in p1_avg["BWV"]
    p3_avg = tasks[tasks["Method"] == "FusionM4Net(P3 averaged)"].iloc[0]
    assert "[T6.6: 88.2 ± 0.5" in p3_avg["BWV"]
    test = pd.read_parquet(out / "predictions" / "test.parquet")
    main_test = pd.read_parquet(out / "stage1" / "main" / "predictions" / "test.parquet").set_index("case_id")
    y = test["target/DIAG"].to_numpy()
    avg = sum(main_test.loc[test["case_id"], [c for c in main_test.columns if c.startswith(f"prob/{b}/DIAG/")]]
              .to_numpy() for b in ("derm", "clinic", "fusion")) / 3
    acc = runs[(runs.split == "test") & (runs.method == "FusionNet(P1 averaged)")]
    assert p1_avg["DIAG"].startswith(f"{100 * (avg.argmax(1) == y).mean():.1f}") and len(acc) == 1


@pytest.mark.slow
def test_two_classifiers_of_one_seed_in_parallel_train_stage1_once(derm7pt_root, tmp_path):
    """table6_4's layout: the classifiers of a seed share one stage 1. Started together, one job trains each
    stage-1 run while the other waits for it, then reuses it."""
    import subprocess
    import sys

    from skinlesion.testing import run_record, started

    stage1 = tmp_path / "stage1"
    cmds = [[sys.executable, "fusionm4net.py", f"data.root={derm7pt_root}", *FAST, f"cluster={c}",
             f"stage1_dir={stage1}", f"hydra.run.dir={tmp_path / c}"] for c in ("svm", "logreg")]
    with started(cmds[0], stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as a, \
            started(cmds[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as b:
        procs = [a, b]
        outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    for name in ("main", "sub"):
        assert len(run_record(stage1 / name)["attempts"]) == 1              # trained once
    assert any("waiting for the lock of the shared run" in o for o in outs)
    assert all(run_record(tmp_path / c)["status"] == "completed" for c in ("svm", "logreg"))


def test_the_sub_models_training_loader_yields_exactly_the_first_half_of_the_index_file(derm7pt_root):
    """What the sub model trains on, read from its training loader over two epochs (not from its folds.csv): the
    first half of meta/train_indexes.csv in file order, every case of it, nothing else."""
    from skinlesion.data import Derm7ptDataModule

    rows = pd.read_csv(derm7pt_root / "meta" / "train_indexes.csv")["indexes"].to_numpy()
    dm = Derm7ptDataModule(root=str(derm7pt_root), hold_out="second_half", image_size=32, batch_size=16,
                           num_workers=0, progress=False, persistent_workers=False)
    dm.setup()
    loader = dm.train_dataloader()
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        seen = [int(i) for batch in loader for i in batch["index"]]
        assert sorted(seen) == sorted(rows[: len(rows) // 2].tolist())
    holdout = pd.read_csv(derm7pt_root / "meta" / "meta.csv").iloc[rows[len(rows) // 2:]]
    assert len(dm.datasets["holdout"]) == len(holdout)


def test_a_fusionm4net_run_predicts_its_saved_p1_p2_p3(fusionm4net_run, derm7pt_root):
    """predict.py on the pipeline's run directory: stage 1 on the images, Scheme 1's weights, stage 2's classifier
    (refitted from what it saved) and w give the run's own test predictions."""
    from skinlesion.predict import predict

    out, _ = fusionm4net_run
    frame = predict(out, root=derm7pt_root, split="test", device="cpu")
    saved = pd.read_parquet(out / "predictions" / "test.parquet")
    assert list(frame["case_id"]) == list(saved["case_id"].astype(str))
    assert (frame["inputs"] == "clinic+derm+meta").all() and (frame["missing"] == "").all()
    for b in ("p1", "p2", "p3", "p3_avg"):
        cols = [c for c in saved.columns if c.startswith(f"prob/{b}/")]
        assert np.abs(frame[cols].to_numpy(float) - saved[cols].to_numpy(float)).max() < 1e-5, b
    p3 = [c for c in saved.columns if c.startswith("prob/p3/DIAG/")]
    assert list(frame["pred/DIAG"]) == [c.rsplit("/", 1)[1] for c in saved[p3].idxmax(axis=1)]
