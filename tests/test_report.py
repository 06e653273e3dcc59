import csv
import shutil
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import balanced_accuracy_score

from skinlesion.evaluation import predictions as P
from skinlesion.evaluation.aggregate import collect_jobs, expected_jobs, sweep_values
from skinlesion.evaluation.simulated_runs import make_sweep
from skinlesion.report import main


def _bac(run_dir, split, combination):
    df = P.read_predictions(run_dir / "predictions" / f"{split}.parquet")
    prob = P.combine(df, combination)["diagnostic"]
    return balanced_accuracy_score(df["target/diagnostic"], prob.argmax(1))


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_report_pad_sweep(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "multirun" / "2024-01-01" / "10-00-00", "pad_ufes", features=True)
    out = tmp_path / "rep"
    assert main([str(sweep), "--out", str(out), "--format", "md,csv,tex"]) == 0
    stdout = capsys.readouterr().out
    assert "PAD-UFES-20 validation BAC" in stdout and "| densenet |" in stdout

    # thesis layout: backbones (+ Average) as rows, methods as columns
    rows = _read_csv(out / "tables" / "pad_ufes_val_bac_backbones.csv")
    assert rows[0] == ["Backbone", "Image", "JIF-MMFA(OFB)", "JIF-MMFA(All)"]
    assert [r[0] for r in rows[1:]] == ["densenet", "Average"]
    # cell = mean ± sample std of per-fold BAC, recomputed here from the parquet files
    jobs = {json.loads((d / "run.json").read_text())["model"] + str(json.loads((d / "run.json").read_text())["fold"]): d
            for d in sweep.iterdir() if (d / "run.json").exists()}
    img = [_bac(jobs[f"image_only{f}"], "val", "image") for f in (0, 1)]
    jif_all = [_bac(jobs[f"jif_mmfa{f}"], "val", "all") for f in (0, 1)]
    jif_ofb = [_bac(jobs[f"jif_mmfa{f}"], "val", "fusion") for f in (0, 1)]
    assert rows[1][1].startswith(f"{100 * np.mean(img):.1f} ± {100 * np.std(img, ddof=1):.1f} [T4.1: 68.9 ± 2.6; Δ")
    assert rows[1][3].startswith(f"{100 * np.mean(jif_all):.1f} ± {100 * np.std(jif_all, ddof=1):.1f}")
    assert rows[2][2].startswith(f"{100 * np.mean(jif_ofb):.1f}") and "[T4.1: 76.7 ± 2.2" in rows[2][2]

    summary = pd.read_csv(out / "summary.csv")
    s = summary[(summary.split == "val") & (summary.method == "Image") & (summary.backbone == "Average")].iloc[0]
    assert s["n"] == 2 and s["mean"] == pytest.approx(np.mean(img)) and s["std"] == pytest.approx(np.std(img, ddof=1))
    assert s["best"] == pytest.approx(max(img))
    assert set(summary["split"]) == {"val", "test"}  # PAD reports validation and fixed-test means

    for f in ("md", "csv", "tex"):
        for name in ("pad_ufes_val_bac_backbones", "pad_ufes_test_bac_backbones", "pad_ufes_val_bac_backbones_best",
                     "pad_ufes_val_bac_stats", "params", "missing_or_failed"):
            assert (out / "tables" / f"{name}.{f}").exists(), (name, f)
    assert "\\pm" in (out / "tables" / "pad_ufes_val_bac_backbones.tex").read_text()
    for fig in ("bar_pad_ufes_bac_val.png", "bar_pad_ufes_bac_test.png", "confusion_pad_ufes_bac_val.png",
                "tsne_pad_ufes_bac.png", "reliability_pad_ufes_bac_test.png", "forest_pad_ufes_bac_test.png"):
        assert (out / "figures" / fig).stat().st_size > 1000
    stats = json.loads((out / "stats" / "pad_ufes_val_bac.json").read_text())
    assert stats["methods"] == ["Image", "JIF-MMFA(OFB)", "JIF-MMFA(All)"] and len(stats["pairs"]) == 3
    assert stats["friedman"]["n_blocks"] == 2
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "No missing or failed runs" in page
    assert "JIF-MMFA(All)" in page
    assert pd.read_csv(out / "missing.csv").empty


def test_report_lists_missing_and_failed(tmp_path, capsys):
    # 2 methods x 4 folds = jobs 0..7 (Image 0-3, JIF 4-7): job 1 never started, job 4 failed,
    # job 5 crashed before run.json, job 2 is still running, job 6 lost its test predictions
    sweep = make_sweep(tmp_path / "sweep", "pad_ufes", runs=(0, 1, 2, 3), skip=[1], fail=[4], no_run_json=[5])
    info = json.loads((sweep / "2" / "run.json").read_text())
    (sweep / "2" / "run.json").write_text(json.dumps({**info, "status": "running"}))
    (sweep / "6" / "predictions" / "test.parquet").unlink()
    info = json.loads((sweep / "3" / "run.json").read_text())   # job 3 was stopped by SIGTERM
    (sweep / "3" / "run.json").write_text(json.dumps({**info, "status": "interrupted",
                                                      "interrupted_at": {"epoch": 3, "step": 40}}))
    assert main([str(sweep), "--no-figures", "--format", "md"]) == 0
    captured = capsys.readouterr()
    out = sweep / "report"  # default output location
    missing = pd.read_csv(out / "missing.csv")
    assert sorted(missing["status"]) == ["failed", "interrupted", "missing_job", "missing_predictions",
                                         "missing_run_json", "running"]
    assert missing[missing.status == "interrupted"].iloc[0]["reason"] == "stopped by a signal at epoch 3, step 40"
    lost = missing[missing.status == "missing_job"].iloc[0]
    assert "model=image_only" in lost["job"] and "data.fold=1" in lost["job"]
    assert "synthetic failure" in missing[missing.status == "failed"].iloc[0]["reason"]
    assert "test.parquet" in missing[missing.status == "missing_predictions"].iloc[0]["reason"]
    for status in ("missing_job", "failed", "running", "missing_run_json", "missing_predictions"):
        assert f"| {status} |" in captured.out
    page = (out / "report.html").read_text()
    assert "missing_job" in page and "synthetic failure" in page
    md = (out / "tables" / "pad_ufes_val_bac_backbones.md").read_text()
    assert "(n=1)" in md  # the single surviving runs are flagged, not silently averaged
    summary = pd.read_csv(out / "summary.csv")
    n = summary[(summary.split == "val") & (summary.backbone == "Average")].set_index("method")["n"]
    assert n.to_dict() == {"Image": 1, "JIF-MMFA(OFB)": 1, "JIF-MMFA(All)": 1}
    table = (out / "tables" / "missing_or_failed.md").read_text()
    assert table.count("| missing_job |") == 1


def test_report_errors_without_traceback(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no completed runs") and "Traceback" not in err
    assert main([str(tmp_path / "does_not_exist")]) == 2
    assert "not a directory" in capsys.readouterr().err
    only_failed = make_sweep(tmp_path / "f", "pad_ufes", models=("image_only",), runs=(0,), fail=[0])
    assert main([str(only_failed)]) == 2
    err = capsys.readouterr().err
    assert "[failed]" in err and "synthetic failure" in err
    assert main([str(only_failed), "--format", "docx"]) == 2


def test_experiment_preset_sweep_and_missing(tmp_path):
    sweep = make_sweep(tmp_path / "exp", "pad_ufes", models=("image_only", "jf_cat"), sweeper_params=True, skip=[3])
    combos, notes = expected_jobs(sweep / "multirun.yaml")
    assert len(combos) == 4 and not notes
    assert combos[0] == {"model": "image_only", "data.fold": "0"}  # single-valued keys are not sweep axes
    jobs, _ = collect_jobs([sweep])
    missing = [j for j in jobs if j.status == "missing_job"]
    assert len(missing) == 1 and missing[0].expected == {"model": "jf_cat", "data.fold": "1"}
    assert sum(j.ok for j in jobs) == 3


def test_sweep_value_parsing(tmp_path):
    assert sweep_values("image_only,jf_cat") == ["image_only", "jf_cat"]
    assert sweep_values("range(3)") == ["0", "1", "2"]
    assert sweep_values("range(1,8,3)") == ["1", "4", "7"]
    assert sweep_values("[1,2]") is None and sweep_values("0") is None
    assert sweep_values("[1,2],[3]") == ["[1,2]", "[3]"]
    y = tmp_path / "multirun.yaml"
    y.write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["model=a,b", "+data.fold=range(2)", "x=1"]},
                                           "sweeper": {"params": {"seed": "7,8", "model": "z"}}}}, sort_keys=False))
    combos, _ = expected_jobs(y)
    # sweeper params first, command line overrides win for the same key
    assert combos == [{"seed": s, "model": m, "data.fold": f} for s in "78" for m in "ab" for f in "01"]


def test_report_derm7pt_tables(tmp_path):
    sweep = make_sweep(tmp_path / "d7", "derm7pt", models=("jf_cat", "jif_mmfa"), runs=(0, 1, 2), main_metric="avg_acc",
                       n_test=120)
    out = tmp_path / "rep"
    assert main([str(sweep), "--out", str(out), "--format", "csv", "--no-figures", "--layout", "t6_3"]) == 0
    acc = _read_csv(out / "tables" / "derm7pt_test_avg_acc_task_acc.csv")
    assert acc[0] == ["Method", "BWV", "DaG", "PIG", "PN", "RS", "STR", "VS", "DIAG", "AVG", "runs"]
    assert [r[0] for r in acc[1:]] == ["JF-CAT", "JIF-MMFA(OFB)", "JIF-MMFA(All)"]
    assert acc[1][-1] == "3"
    auc = _read_csv(out / "tables" / "derm7pt_test_avg_acc_category_auc_best.csv")
    assert len(auc[0]) == 1 + 17 + 1 and auc[0][1] == "DIAG-BCC" and auc[0][-1] == "AVG"
    mel = _read_csv(out / "tables" / "derm7pt_test_avg_acc_melanoma.csv")
    assert mel[0][2:] == ["DIAG-MEL", "PN-ATP", "STR-IR", "PIG-IR", "RS-PRS", "DaG-IR", "BWV-PRS", "VS-IR", "AVG"]
    assert [r[0] for r in mel[1:]] == ["AUC"] * 3 + ["PRE"] * 3 + ["SEN"] * 3 + ["SPE"] * 3
    allc = _read_csv(out / "tables" / "derm7pt_test_avg_acc_all_categories_best.csv")
    assert len(allc[0]) == 2 + 24 and allc[0][2] == "DIAG-BCC"
    # AVG ACC column of the mean table equals the per-run average accuracy, recomputed here
    runs = [d for d in sweep.iterdir() if (d / "run.json").exists()
            and json.loads((d / "run.json").read_text())["model"] == "jf_cat"]
    vals = []
    for d in runs:
        df = P.read_predictions(d / "predictions" / "test.parquet")
        probs, ys = P.combine(df, "fusion"), P.targets(df)
        vals.append(np.mean([np.mean(probs[t].argmax(1) == ys[t]) for t in ys]))
    assert acc[1][9] == f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals, ddof=1):.1f}"
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["split"]) == {"test"} and set(summary["metric"]) == {"avg_acc"}
    # best-run selection by AVG AUC (Ch. 5 convention): the AVG cell is the max AVG AUC over the runs
    out2 = tmp_path / "rep2"
    assert main([str(sweep), "--out", str(out2), "--format", "md,csv", "--no-figures", "--best-by", "avg_auc"]) == 0
    assert "best run by AVG AUC" in (out2 / "tables" / "derm7pt_test_avg_acc_category_auc_best.md").read_text()
    runs_csv = pd.read_csv(out2 / "runs.csv")
    best_auc = runs_csv[runs_csv.method == "JF-CAT"]["avg_auc"].max()
    auc_best = _read_csv(out2 / "tables" / "derm7pt_test_avg_acc_category_auc_best.csv")
    assert auc_best[1][0] == "JF-CAT" and auc_best[1][-1] == f"{100 * best_auc:.1f}"


def test_report_isic_validation_only(tmp_path):
    sweep = make_sweep(tmp_path / "isic", "isic2019", models=("image_only", "jf_cat"),
                       backbones=("densenet121", "resnet50.tv_in1k"))
    out = tmp_path / "rep"
    assert main([str(sweep), "--out", str(out), "--format", "md", "--no-figures"]) == 0
    names = {p.name for p in (out / "tables").iterdir()}
    assert "isic2019_val_bac_backbones.md" in names and not any("isic2019_test" in n for n in names)
    md = (out / "tables" / "isic2019_val_bac_backbones.md").read_text()
    assert "| densenet |" in md and "| resnet |" in md and "| Average |" in md and "[T4.3:" in md
    assert "[T4.3: 81.8 ± 0.5" in md  # densenet Image cell of T4.3
    stats = json.loads((out / "stats" / "isic2019_val_bac.json").read_text())
    assert stats["friedman"]["note"] and stats["pairs"][0]["n"] == 4


def test_stats_method_selection(tmp_path, capsys):
    # Image, JF-CAT, JIF-CAT(OFB/All) and JIF-MMFA(OFB/All) x 3 folds
    sweep = make_sweep(tmp_path / "sel", "pad_ufes", models=("image_only", "jf_cat", "jif_cat", "jif_mmfa"),
                       runs=(0, 1, 2))

    def methods(*extra):
        out = tmp_path / f"rep{len(extra)}"
        assert main([str(sweep), "--out", str(out), "--format", "csv", "--no-figures", *extra]) == 0
        return json.loads((out / "stats" / "pad_ufes_val_bac.json").read_text())

    default = methods()   # the thesis's eight methods that the sweep has; JIF-CAT is not among them
    assert default["methods"] == ["Image", "JF-CAT", "JIF-MMFA(OFB)", "JIF-MMFA(All)"]
    assert any("JIF-CAT(OFB)" in n for n in default["notes"]) and default["selection"] == "thesis"
    assert len(default["pairs"]) == 6 and all(p["n"] == 3 for p in default["pairs"])
    every = methods("--stats-methods", "all")
    assert every["methods"] == ["Image", "JF-CAT", "JIF-CAT(OFB)", "JIF-MMFA(OFB)", "JIF-CAT(All)", "JIF-MMFA(All)"]
    assert every["friedman"]["n_methods"] == 6 and len(every["pairs"]) == 15
    listed = methods("--stats-methods", "jif-cat(all), Image,JF-XYZ")
    assert listed["methods"] == ["JIF-CAT(All)", "Image"] and any("JF-XYZ" in n for n in listed["notes"])
    assert "Friedman needs at least 3 methods" in capsys.readouterr().out


def test_glob_sweep_lists_a_deleted_run(tmp_path):
    # an experiment preset that sweeps the model group with glob(...), like table4_x; one run deleted
    sweep = make_sweep(tmp_path / "g", "pad_ufes", models=("image_only", "jf_cat"), runs=(0, 1, 2), sweeper_params=True)
    cfg = yaml.safe_load((sweep / "multirun.yaml").read_text())
    cfg["hydra"]["sweeper"]["params"]["model"] = "glob([image_only,jf_ca*])"
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    shutil.rmtree(sweep / "4")   # jf_cat, fold 1
    jobs, notes = collect_jobs([sweep])
    assert not notes
    missing = [j for j in jobs if j.status == "missing_job"]
    assert [j.expected for j in missing] == [{"model": "jf_cat", "data.fold": "1"}]
    assert sum(j.ok for j in jobs) == 5


def test_chapter5_sweeps_pick_the_best_run_by_avg_auc_unless_told_otherwise(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "t5", "derm7pt", models=("jf_cat",), runs=range(4), experiment="table5_6", seed=1)
    runs = None
    for flag, column, name in (([], "avg_auc", "AVG AUC"), (["--best-by", "avg_acc"], "avg_acc", "AVG ACC")):
        out = tmp_path / f"rep-{column}"
        assert main([str(sweep), "--out", str(out), "--format", "csv", "--no-figures", *flag]) == 0
        assert f"best run selected by {name}" in capsys.readouterr().out
        runs = pd.read_csv(out / "runs.csv") if runs is None else runs
        best = runs.loc[runs[runs.method == "JF-CAT"][column].idxmax(), "run"]
        best_acc = runs[(runs.run == best) & (runs.method == "JF-CAT")]["avg_acc"].iloc[0]
        table = _read_csv(out / "tables" / "derm7pt_test_avg_acc_task_acc_best.csv")
        assert table[1][0] == "JF-CAT" and table[1][-2] == f"{100 * best_acc:.1f}"
    by_auc, by_acc = (runs.loc[runs[runs.method == "JF-CAT"][c].idxmax(), "run"] for c in ("avg_auc", "avg_acc"))
    assert by_auc != by_acc                       # the two criteria pick different runs here, so the test can fail


def test_metadata_only_runs_pair_by_fold_with_every_backbone_and_join_the_figure(tmp_path, monkeypatch):
    """A sweep of image_only (two backbones) and meta_only over five folds: Meta has no image backbone, so its
    runs pair fold by fold with each backbone's Image runs (a Wilcoxon p-value over the shared folds), and the
    confusion-matrix figure shows both methods under a title that fits the figure."""
    from skinlesion.evaluation import figures as F

    images = make_sweep(tmp_path / "image", "pad_ufes", models=("image_only",),
                        backbones=("densenet121.tv_in1k", "resnet50.tv_in1k"), runs=range(5))
    meta = make_sweep(tmp_path / "meta", "pad_ufes", models=("meta_only",), runs=range(5), seed=1)
    drawn = {}
    original = F.confusion_figure

    def spy(matrices, classes, title, path):
        drawn.update(methods=list(matrices), title=title)
        return original(matrices, classes, title, path)

    monkeypatch.setattr(F, "confusion_figure", spy)
    assert main([str(images), str(meta), "--out", str(tmp_path / "rep"), "--format", "csv", "--no-tsne"]) == 0
    stats = json.loads(next((tmp_path / "rep" / "stats").glob("pad_ufes_*.json")).read_text())
    pair = next(r for r in stats["pairs"] if {r["a"], r["b"]} == {"Image", "Meta"})
    assert pair["n"] == 10 and pair["p"] is not None and 0 < pair["p"] <= 1   # 5 folds x 2 backbones
    assert drawn["methods"] == ["Image", "Meta"]
    fig = F.confusion_fig({m: np.eye(6) for m in drawn["methods"]}, list("abcdef"), drawn["title"])
    fig.canvas.draw()
    box, page = fig._suptitle.get_window_extent(fig.canvas.get_renderer()), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1      # the whole title is on the figure
    assert fig._suptitle.get_text().replace("\n", " ") == drawn["title"]


def test_report_case_level_sections(tmp_path, capsys):
    """Calibration, bootstrap intervals, subgroups, the paired bootstrap beside Wilcoxon and the robustness table,
    from a small simulated sweep: tables in every format, sections in report.html, per-run CSVs."""
    sweep = make_sweep(tmp_path / "pad", "pad_ufes", models=("image_only", "jf_cat", "jif_mmfa"), runs=(0, 1, 2),
                       n_val=120, n_test=200, robustness=("no_meta",))
    out = tmp_path / "rep"
    assert main([str(sweep), "--out", str(out), "--format", "md,csv,tex", "--no-tsne", "--bootstrap", "300",
                 "--bootstrap-auc", "100", "--min-subgroup", "40"]) == 0
    for name in ("pad_ufes_test_calibration", "pad_ufes_test_bac_intervals", "pad_ufes_test_bac_paired_bootstrap",
                 "pad_ufes_test_bac_robustness", "pad_ufes_test_subgroups_sex_bac", "pad_ufes_test_subgroups_age_auc"):
        for f in ("md", "csv", "tex"):
            assert (out / "tables" / f"{name}.{f}").is_file(), (name, f)
    cal = pd.read_csv(out / "tables" / "pad_ufes_test_calibration.csv", dtype=str, keep_default_na=False)
    cal = cal.set_index("Method")
    assert cal.loc["JIF-MMFA(All)", "ECE (TS)"] != "—" and "log-probabilities" in cal.loc["JIF-MMFA(All)", "note"]
    assert cal.loc["Image", "note"] == ""                    # scaled on its logits: nothing to say
    assert cal.loc["Image", "T"] != "—" and cal.loc["Image", "runs"] == "3"
    # the per-run calibration is recomputed here for one run and agrees with the table's inputs
    runs = pd.read_csv(out / "calibration_runs.csv")
    assert len(runs) == 3 * 4 and set(runs["method"]) == {"Image", "JF-CAT", "JIF-MMFA(OFB)", "JIF-MMFA(All)"}
    rob = pd.read_csv(out / "tables" / "pad_ufes_test_bac_robustness.csv", dtype=str).set_index("Method")
    assert rob.loc["JF-CAT", "no meta"] == "—" and rob.loc["Image", "no meta"] == rob.loc["Image", "all inputs"]
    jif_no_meta = float(rob.loc["JIF-MMFA(All)", "no meta"].split(" ")[0])
    assert jif_no_meta < float(rob.loc["JIF-MMFA(All)", "all inputs"].split(" ")[0])   # simulated: weaker without
    sex = pd.read_csv(out / "tables" / "pad_ufes_test_subgroups_sex_bac.csv", dtype=str).set_index("Group")
    assert list(sex.columns) == ["n", "Image", "JF-CAT", "JIF-MMFA(OFB)", "JIF-MMFA(All)"]
    assert sex.loc["unknown", "Image"] == "too small" and int(sex.loc["unknown", "n"]) < 40 <= int(sex.loc["male", "n"])
    assert "[" in sex.loc["female", "Image"] and "gap (best − worst)" in sex.index
    paired = pd.read_csv(out / "tables" / "pad_ufes_test_bac_paired_bootstrap.csv", dtype=str)
    assert len(paired) == 6 and {"p (bootstrap)", "p (Wilcoxon)", "p (Holm)"} <= set(paired.columns)
    head = pd.read_csv(out / "bootstrap_runs.csv")
    main_rows = head[(head.task == "main") & head.reported]
    recs = pd.read_csv(out / "runs.csv")
    test_scores = recs[recs.split == "test"].set_index(["run", "method"])["score"]
    for r in main_rows.itertuples():   # the bootstrap's observed value is the report's own score
        assert r.value == pytest.approx(test_scores[(r.run, r.method)]) and r.lo < r.value < r.hi
    page = (out / "report.html").read_text()
    for anchor in ("calibration", "intervals", "subgroups", "robustness"):
        assert f"<h2 id='{anchor}'>" in page and f"href='#{anchor}'" in page
    wilcoxon, paired_at = page.index("pad_ufes_val_bac_stats"), page.index("pad_ufes_test_bac_paired_bootstrap")
    assert 0 < paired_at - wilcoxon < 20000   # the paired table follows the Wilcoxon table
    reliability = page.index("reliability_pad_ufes_bac_test.png")
    assert page.index("id='calibration'") < reliability < page.index("id='intervals'")

    # runs saved before subgroup attributes existed: listed, not an error; --no-case-level drops the sections
    for f in sweep.glob("*/subgroups.csv"):
        f.unlink()
    assert main([str(sweep), "--out", str(tmp_path / "old"), "--format", "csv", "--no-figures"]) == 0
    assert "no subgroup attributes saved (9 run(s))" in (tmp_path / "old" / "report.html").read_text()
    assert main([str(sweep), "--out", str(tmp_path / "none"), "--format", "csv", "--no-figures",
                 "--no-case-level"]) == 0
    assert not (tmp_path / "none" / "tables" / "pad_ufes_test_calibration.csv").exists()
    assert (tmp_path / "none" / "tables" / "pad_ufes_test_bac_robustness.csv").exists()
    capsys.readouterr()
    assert main([str(sweep), "--out", str(tmp_path / "bad"), "--bootstrap", "0"]) == 2
    assert "--bootstrap must be at least 1, got 0" in capsys.readouterr().err


def test_bar_chart_from_zero_legend_clear_and_no_band_under_titles(tmp_path, monkeypatch):
    """The bar chart's value axis starts at 0 and its legend covers no bar; a figure title sits just above its
    panels."""
    from skinlesion.evaluation import figures as F

    kept = []
    monkeypatch.setattr(F, "_save", lambda fig, path: kept.append(fig) or path)
    summary = pd.DataFrame({"backbone": "Average", "method": ["Image", "JF-CAT", "JIF-MMFA(All)"],
                            "mean": [0.62, 0.71, 0.80], "std": [0.02, 0.03, 0.01], "best": [0.65, 0.74, 0.81],
                            "n": [5, 5, 5]})
    F.bar_figure(summary, "BAC per method", "BAC (%)", tmp_path / "bar.png")
    fig = kept.pop()
    fig.canvas.draw()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches]
    assert ax.get_ylim()[0] == 0 and len(bars) == 3
    assert not any(legend.overlaps(b) for b in bars) and legend.x0 >= ax.get_window_extent(renderer).x1
    F.confusion_figure({m: np.eye(6) + 0.1 for m in ("Image", "JF-CAT", "JIF-MMFA(OFB)")}, list("abcdef"),
                       "PAD-UFES-20 val, densenet: confusion matrices", tmp_path / "cm.png")
    fig = kept.pop()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    top = max(a.get_tightbbox(renderer).y1 for a in fig.axes if a.axison)
    assert 0 <= title.y0 - top < 0.2 * fig.dpi   # under 0.2 inch between the panels and their title


def test_a_broken_run_is_left_out_of_the_case_level_sections_with_a_note(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "pad", "pad_ufes", models=("image_only", "jf_cat"), runs=(0, 1), n_test=80)
    (sweep / "1" / "subgroups.csv").write_text("id,sex\nt0000,male\n")   # no case_id column
    out = tmp_path / "rep"
    assert main([str(sweep), "--out", str(out), "--format", "csv", "--no-figures", "--bootstrap", "50"]) == 0
    stdout = capsys.readouterr().out
    assert "note: " + str((sweep / "1").resolve()) + ": left out of the case-level sections (ValueError:" in stdout
    assert "no case_id column" in stdout
    cal = pd.read_csv(out / "calibration_runs.csv")
    assert sorted(set(cal["run"])) == sorted(str((sweep / j).resolve()) for j in ("0", "2", "3"))
