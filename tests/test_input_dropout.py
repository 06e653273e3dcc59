"""model.input_dropout: a fused model trained with inputs withheld at random answers without them; the loss, the
draws and the prediction path treat a withheld input the same way; runs write their missing-input robustness files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skinlesion.data.synthetic import generate
from skinlesion.evaluation.metrics import evaluate_predictions
from skinlesion.evaluation.predictions import read_predictions
from skinlesion.testing import train

EPOCHS = ["trainer.max_epochs=4", "callbacks.early_stopping=null", "data.batch_size=16", "tta=none"]


@pytest.fixture(scope="module")
def leaky_pad(tmp_path_factory) -> Path:
    """Generated PAD-UFES-20 whose ``region`` names the diagnosis (a planted shortcut): a fused model trained with
    every input leans on the metadata, and withholding it shows."""
    root = generate("pad_ufes", tmp_path_factory.mktemp("leaky") / "pad-ufes-20", n=240, size=32, seed=5,
                    progress=False)
    df = pd.read_csv(root / "metadata.csv")
    regions = sorted(df["region"].dropna().unique())
    df["region"] = df["diagnostic"].map({c: regions[i] for i, c in enumerate(sorted(df["diagnostic"].unique()))})
    df.to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def runs(leaky_pad, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("dropout")
    common = ["data=pad_ufes", f"data.root={leaky_pad}", "model=jf_cat", *EPOCHS]
    return {"plain": train(common, base / "plain"),
            "dropout": train([*common, "model.input_dropout.meta=0.5"], base / "dropout")}


def _bac_without_meta(run: Path, as_if_trained_without: bool = False) -> float:
    """Test BAC of the reported output with the metadata withheld, through the prediction path."""
    from skinlesion.data import pad_ufes
    from skinlesion.predict.cases import Cases
    from skinlesion.predict.inference import predict_cases
    from skinlesion.predict.model import load_predictor

    pred = load_predictor(run)
    if as_if_trained_without:   # what the fused branch says without metadata, had the run been trained for it
        pred.payload = {**pred.payload, "input_dropout": {"meta": 0.5}}
    folds = pd.read_csv(run / "folds.csv", dtype={"case_id": str})
    table = pad_ufes.read(Path(pred.payload["config"]["data"]["root"]))
    rows = np.flatnonzero(np.isin(table.case_ids, folds.loc[folds["partition"] == "test", "case_id"]))
    cases = Cases(table.subset(rows), True, [{"meta": "withheld"} for _ in rows], [[] for _ in rows])
    frame, reported = predict_cases(pred, cases)
    assert (frame["inputs"] == "clinic").all() and frame["missing"].str.startswith("meta").all()
    y = table.targets[rows, 0]
    recall = [(reported["diagnostic"].argmax(1)[y == c] == c).mean() for c in np.unique(y)]
    return float(np.mean(recall))


def test_a_dropout_trained_fused_model_beats_the_same_model_without_it_when_the_metadata_is_withheld(runs):
    with_all = {k: evaluate_predictions(read_predictions(r / "predictions" / "test.parquet"), "fusion")["avg_bac"]
                for k, r in runs.items()}
    plain, dropout = _bac_without_meta(runs["plain"], as_if_trained_without=True), _bac_without_meta(runs["dropout"])
    assert dropout > plain + 0.15, (with_all, plain, dropout)
    assert with_all["dropout"] > 0.5 and with_all["plain"] > 0.5   # both learned; only one survives the withholding
    # the run's own robustness file says the same, through the same path
    saved = read_predictions(runs["dropout"] / "robustness" / "test_no_meta.parquet")
    assert evaluate_predictions(saved, "fusion")["avg_bac"] == pytest.approx(dropout, abs=1e-9)


def test_without_dropout_a_fusion_only_model_has_no_answer_without_its_metadata(runs):
    withheld = json.loads((runs["plain"] / "robustness" / "withheld.json").read_text())
    assert withheld["output"] == "fusion" and "no output of this model answers without 'meta'" in withheld["inputs"]["meta"]
    assert not (runs["plain"] / "robustness" / "test_no_meta.parquet").exists()
    assert (runs["plain"] / "robustness" / "test_no_clinic.parquet").exists() is False
    dropout = json.loads((runs["dropout"] / "robustness" / "withheld.json").read_text())
    assert dropout["inputs"]["meta"].startswith("robustness/test_no_meta.parquet (from fusion)")


def test_a_dropout_trained_jif_without_metadata_answers_with_its_two_remaining_branches(leaky_pad, tmp_path):
    """JIF's image branch reads the clinical image, its fusion branch the image and the metadata. Trained with
    metadata dropout, a case without metadata is answered by both, and the reported ``all`` is their mean; had it
    not been trained so, only the image branch would answer."""
    from skinlesion.predict import predict
    from skinlesion.predict.model import load_predictor

    run = train(["data=pad_ufes", f"data.root={leaky_pad}", "model=jif_cat", "trainer.limit_train_batches=1",
                 "tta=none", "model.input_dropout.meta=0.5", "robustness=false"], tmp_path / "jif")
    pred = load_predictor(run, "cpu")
    csv = tmp_path / "no_meta.csv"
    pd.read_csv(leaky_pad / "metadata.csv").drop(columns=pred.vectorizer.field_names).to_csv(csv, index=False)

    def probs(frame, output):
        return frame[[c for c in frame.columns if c.startswith(f"prob/{output}/diagnostic/")]].to_numpy(float)

    frame = predict(pred, [leaky_pad / "images"], csv, device="cpu")
    assert (frame["inputs"] == "clinic").all() and frame["missing"].str.startswith("meta").all()
    assert np.isnan(probs(frame, "meta")).all() and not np.isnan(probs(frame, "fusion")).any()
    np.testing.assert_allclose(probs(frame, "all"), (probs(frame, "image") + probs(frame, "fusion")) / 2, atol=1e-6)
    pred.payload = {**pred.payload, "input_dropout": {}}     # as if trained without dropout: one branch left
    alone = predict(pred, [leaky_pad / "images"], csv, device="cpu")
    assert np.isnan(probs(alone, "fusion")).all()
    np.testing.assert_allclose(probs(alone, "all"), probs(frame, "image"), atol=1e-6)


def test_dropout_of_an_input_no_fused_branch_reads_fails_at_start(pad_root, tmp_path):
    with pytest.raises(SystemExit, match=r"error: model.input_dropout.meta=0.3: no branch of this network reads 'meta' "
                                          r"together with another input"):
        train(["data=pad_ufes", f"data.root={pad_root}", "model=image_only", "model.input_dropout.meta=0.3"],
              tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def _module(drop: dict[str, float]):
    from skinlesion.data.info import DataInfo
    from skinlesion.data.tasks import PAD_UFES_TASKS
    from skinlesion.module import MultiTaskModule

    class Net(torch.nn.Module):
        branches = ("image", "meta", "fusion")

    info = DataInfo("pad_ufes", PAD_UFES_TASKS, ("clinic",), 4)
    return MultiTaskModule(Net(), info, {"image": 0.5, "meta": 0.5, "fusion": 1.0}, "all", {"name": "sgd", "lr": 0.1},
                           class_counts=[np.array([5, 1, 1, 1, 1, 1])], input_dropout=drop, seed=3,
                           branch_inputs={"image": ("clinic",), "meta": ("meta",), "fusion": ("clinic", "meta")})


def test_draws_depend_only_on_seed_and_step_and_never_take_every_input():
    m = _module({"meta": 0.9, "clinic": 0.9})
    batch = {"target": torch.zeros(4000, 1, dtype=torch.long)}
    a, b = m.draw_absent(batch), m.draw_absent(batch)
    assert all(torch.equal(a[x], b[x]) for x in a)          # same step: the same draws (a resumed run included)
    assert not (a["meta"] & a["clinic"]).any()               # a case keeps at least one input
    assert 0.05 < a["meta"].float().mean() < 0.2             # 0.9 each, minus the cases that would lose both


def test_a_branch_left_without_inputs_adds_no_loss_and_the_others_keep_the_class_weighted_mean():
    import torch.nn.functional as F

    m = _module({"meta": 0.5})
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 6, (8, 1), generator=g)
    logits = {b: {"diagnostic": torch.randn(8, 6, generator=g)} for b in ("image", "meta", "fusion")}
    absent = {"meta": torch.tensor([True, False] * 4)}
    _, parts = m.loss(logits, y, absent)
    w = m.cw_0
    keep = ~absent["meta"]
    assert parts["meta"] == pytest.approx(F.cross_entropy(logits["meta"]["diagnostic"][keep], y[keep, 0], weight=w).item())
    for b in ("image", "fusion"):   # they still read an input of every case
        assert parts[b] == pytest.approx(F.cross_entropy(logits[b]["diagnostic"], y[:, 0], weight=w).item())
    batch = {"meta": torch.ones(8, 4), "images": {"clinic": torch.ones(8, 3, 2, 2)}}
    blanked = m.blank_absent(batch, absent)
    assert (blanked["meta"][absent["meta"]] == 0).all() and (blanked["meta"][keep] == 1).all()
    assert (blanked["images"]["clinic"] == 1).all()


def test_the_sweep_preset_compares_with_and_without_dropout(tmp_path):
    from skinlesion.testing import compose_cfg

    points = [(m, p) for m in ("jf_mmfa", "jif_cat") for p in ("0.0", "0.3")]
    drops = set()
    for model, p in points:
        cfg = compose_cfg(["experiment=input_dropout", f"model={model}", f"model.input_dropout.meta={p}"], tmp_path)
        assert cfg.group == "input_dropout" and cfg.data.dataset == "pad_ufes" and cfg.robustness
        drops.add(float(cfg.model.input_dropout.meta))
    assert drops == {0.0, 0.3}


def test_a_dropout_run_is_its_own_method_in_run_json_and_the_report(runs):
    from skinlesion.evaluation.aggregate import collect_jobs, evaluate_jobs

    methods = {k: json.loads((r / "run.json").read_text())["method"] for k, r in runs.items()}
    assert methods == {"plain": "JF-CAT", "dropout": "JF-CAT[meta drop 0.5]"}
    jobs, _ = collect_jobs([r for r in runs.values()])
    records, _ = evaluate_jobs(jobs)
    assert set(records["method"]) == {"JF-CAT", "JF-CAT[meta drop 0.5]"}


def test_isic_runs_withhold_inputs_on_their_validation_fold_and_the_report_reads_it(isic_root, tmp_path):
    """ISIC-2019 has no test split: its robustness files and table use the validation fold, as its other sections."""
    from skinlesion.evaluation.aggregate import collect_jobs, evaluate_jobs, robustness_records

    run = train(["data=isic2019", f"data.root={isic_root}", "model=jif_cat", "trainer.limit_train_batches=1",
                 "tta=none"], tmp_path / "run")
    assert sorted(p.name for p in (run / "robustness").glob("*.parquet")) == ["val_no_derm.parquet",
                                                                            "val_no_meta.parquet"]
    jobs, _ = collect_jobs([run])
    records, _ = evaluate_jobs(jobs)
    rob, notes = robustness_records(jobs, records)
    assert not notes and set(rob["split"]) == {"val"}
    assert set(rob["condition"]) == {"all inputs", "no_meta", "no_derm"} and rob["score"].notna().all()
