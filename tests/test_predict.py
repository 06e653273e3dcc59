"""Predicting new cases (``python predict.py CKPT --images ... --metadata CSV``): checkpoints carry what inference
needs, a run's own test cases come out as its saved predictions, and missing inputs fall back to the branches that
do not need them (or fail, naming the row and field)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skinlesion.data.info import DataInfo
from skinlesion.data.metadata import MetadataVectorizer, UnseenCategoryWarning, build_vectorizer
from skinlesion.data.tasks import DERM7PT_TASKS, PAD_UFES_TASKS
from skinlesion.errors import DataError
from skinlesion.evaluation.predictions import branch_probs, combine, read_predictions
from skinlesion.models import branch_inputs, build_network
from skinlesion.predict import load_predictor, predict
from skinlesion.testing import python, train


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def jif_run(pad_root, tmp_path_factory) -> Path:
    return train(["data=pad_ufes", f"data.root={pad_root}", "model=jif_cat", "trainer.limit_train_batches=2"],
                 tmp_path_factory.mktemp("predict") / "jif")


@pytest.fixture(scope="module")
def jf_run(pad_root, tmp_path_factory) -> Path:
    return train(["data=pad_ufes", f"data.root={pad_root}", "model=jf_cat", "trainer.limit_train_batches=1"],
                 tmp_path_factory.mktemp("predict") / "jf")


@pytest.fixture(scope="module")
def two_run(derm7pt_root, tmp_path_factory) -> Path:
    # ch5 recipe: weight averaging (swa.ckpt is the evaluated checkpoint) and the searched branch weighting
    return train(["data=derm7pt", f"data.root={derm7pt_root}", "model=two_image", "trainer.limit_train_batches=2",
                  "callbacks.swa.last_epochs=1"], tmp_path_factory.mktemp("predict") / "two")


def _test_rows(run: Path, csv: Path, id_col: str, out: Path) -> Path:
    """The run's test cases as rows of the official CSV (CSV order, as the saved predictions)."""
    folds = pd.read_csv(run / "folds.csv")
    ids = set(folds.loc[folds["partition"] == "test", "case_id"].astype(str))
    df = pd.read_csv(csv)
    df[df[id_col].astype(str).isin(ids)].to_csv(out, index=False)
    return out


def _saved(run: Path) -> pd.DataFrame:
    return read_predictions(run / "predictions" / "test.parquet").set_index("case_id")


def _probs(frame: pd.DataFrame, branch: str, task: str) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith(f"prob/{branch}/{task}/")]].to_numpy(dtype=float)


# ---------------------------------------------------------------------------------------------- payload
def test_every_checkpoint_carries_the_inference_payload(jif_run, two_run):
    cfg = (jif_run / "config.yaml").read_text()
    for run, ckpts in ((jif_run, ["last.ckpt"]), (two_run, ["last.ckpt", "swa.ckpt"])):
        names = {p.name for p in (run / "checkpoints").glob("*.ckpt")}
        assert set(ckpts) <= names and len(names) >= len(ckpts) + 1   # + the best checkpoint
        for name in names:
            payload = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)["inference"]
            assert payload["image_size"] == 32 and payload["normalize"] == "imagenet"
            if run == jif_run:
                assert payload["tasks"] == {"diagnostic": list(PAD_UFES_TASKS[0].classes)}
                assert payload["image_keys"] == ["clinic"] and payload["tta"] == ["identity", "vflip", "hflip",
                                                                                  "vhflip"]
                assert payload["branch_inputs"] == {"image": ["clinic"], "meta": ["meta"], "fusion": ["clinic", "meta"]}
                assert payload["config"]["model"]["name"] == "jif_cat" and "name: jif_cat" in cfg
                vec = MetadataVectorizer.from_state(payload["metadata"])
                assert vec.dim == payload["meta_dim"] == 81
            else:
                assert list(payload["tasks"]) == [t.name for t in DERM7PT_TASKS]
                assert payload["image_keys"] == ["derm", "clinic"] and payload["search"] == "scheme1"
                assert payload["branch_inputs"] == {"derm": ["derm"], "clinic": ["clinic"],
                                                    "fusion": ["derm", "clinic"]}
                assert payload["metadata"]["fields"][0]["name"] == "level_of_diagnostic_difficulty"


def test_vectorizer_state_round_trips(pad_root, tmp_path):
    df = pd.read_csv(pad_root / "metadata.csv")
    train_rows, rows = df.iloc[:150], df.iloc[150:].copy()
    rows.loc[rows.index[0], "region"] = "KNEE"   # outside the fitted vocabulary
    for vec in (build_vectorizer("pad_ufes", "custom", fields=["age", "region", "smoke", "diameter_1"],
                                 scale_numeric=True),
                build_vectorizer("pad_ufes", "m81")):
        vec.fit(train_rows)
        torch.save(vec.state_dict(), tmp_path / "state.pt")
        restored = MetadataVectorizer.from_state(torch.load(tmp_path / "state.pt", weights_only=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            expected, got = vec.transform(rows), restored.transform(rows)
        np.testing.assert_array_equal(got, expected)
        assert restored.columns == vec.columns and restored.empty_in_fit == vec.empty_in_fit
        assert sum(issubclass(w.category, UnseenCategoryWarning) for w in caught) == 2   # one per vectorizer
    assert vec.empty_in_fit["smoke"] == int(train_rows["smoke"].isna().sum()) > 0


# ---------------------------------------------------------------------------------------------- branch inputs
def _inputs(n=2, size=32, meta_dim=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": {k: torch.randn(n, 3, size, size, generator=g) for k in ("derm", "clinic")},
            "meta": torch.rand(n, meta_dim, generator=g)}


@pytest.mark.parametrize("net", [
    {"arch": "two_image"}, {"arch": "two_image", "block": "aab", "fusion_input": "derm_only"},
    {"arch": "two_image", "block": "bab"}, {"arch": "two_image", "block": "self"},
    {"arch": "two_image", "shared_encoder": True, "block": "sca"},
    {"arch": "two_image", "shared_encoder": True, "block": "sca_self"}, {"arch": "two_image", "heads": "fusion"},
    {"arch": "two_image", "fusion_input": "sum", "meta_fusion": "cat", "meta_fusion_options": {"reducer": 0}},
    {"arch": "jif", "fusion": "cat", "meta_input": "raw"}, {"arch": "jf", "fusion": "mmfa"},
    {"arch": "image_only", "image_key": "clinic"}, {"arch": "meta_only"},
], ids=lambda n: "-".join(str(v) for k, v in n.items() if k != "meta_fusion_options"))
def test_branch_inputs_are_exactly_what_each_branch_reads(net):
    """Changing an input changes exactly the branches that declare it (eval mode: cases are independent)."""
    info = DataInfo("derm7pt", DERM7PT_TASKS[:2], ("derm", "clinic"), 20)
    torch.manual_seed(0)
    model = build_network(net, {"name": "test_resnet", "pretrained": False}, info).eval()
    declared = branch_inputs(net, info)
    assert list(declared) == list(model.branches)
    base = _inputs()
    with torch.no_grad():
        ref = model(base)["logits"]
        for name in ("derm", "clinic", "meta"):
            other = _inputs(seed=1)
            changed = {"images": dict(base["images"]), "meta": base["meta"]}
            if name == "meta":
                changed["meta"] = other["meta"]
            else:
                changed["images"][name] = other["images"][name]
            out = model(changed)["logits"]
            for b, need in declared.items():
                moved = any(not torch.allclose(out[b][t], ref[b][t], atol=1e-6) for t in ref[b])
                assert moved == (name in need), (b, name, need)


# ---------------------------------------------------------------------------------------------- predictions
def test_jif_predictions_of_the_test_cases_equal_the_saved_ones(jif_run, pad_root, tmp_path):
    csv = _test_rows(jif_run, pad_root / "metadata.csv", "img_id", tmp_path / "test.csv")
    frame = predict(jif_run, [pad_root / "images"], csv, device="cpu", branches=True)
    saved = _saved(jif_run)
    assert list(frame["case_id"]) == list(saved.index)
    assert (frame["output"] == "all").all() and (frame["missing"] == "").all()
    np.testing.assert_allclose(_probs(frame, "output", "diagnostic"), combine(saved, "all")["diagnostic"], atol=1e-5)
    for b in ("image", "meta", "fusion"):
        np.testing.assert_allclose(_probs(frame, b, "diagnostic"), branch_probs(saved, b)["diagnostic"], atol=1e-5)
    classes = np.array(PAD_UFES_TASKS[0].classes)
    assert list(frame["pred/diagnostic"]) == list(classes[_probs(frame, "output", "diagnostic").argmax(1)])
    one_view = predict(jif_run, [pad_root / "images"], csv, device="cpu", tta="none")   # the run used four views
    assert np.abs(_probs(one_view, "output", "diagnostic") - _probs(frame, "output", "diagnostic")).max() > 1e-4


def test_two_image_predictions_equal_the_saved_ones_with_the_searched_weights(two_run, derm7pt_root, tmp_path):
    metrics = json.loads((two_run / "metrics.json").read_text())
    weights = metrics["search"]["weights"]
    csv = _test_rows(two_run, derm7pt_root / "meta" / "meta.csv", "case_num", tmp_path / "test.csv")
    frame = predict(two_run, [derm7pt_root / "images"], csv, device="cpu", branches=True)
    saved = _saved(two_run)
    assert list(frame["case_id"]) == list(saved.index) and (frame["output"] == "searched").all()
    searched = combine(saved, weights)
    for t in (t.name for t in DERM7PT_TASKS):
        np.testing.assert_allclose(_probs(frame, "output", t), searched[t], atol=1e-5)
        for b in ("derm", "clinic", "fusion"):
            np.testing.assert_allclose(_probs(frame, b, t), branch_probs(saved, b)[t], atol=1e-5)


def test_two_image_case_without_its_clinical_image_is_predicted_by_the_derm_branch(two_run, derm7pt_root, tmp_path):
    csv = _test_rows(two_run, derm7pt_root / "meta" / "meta.csv", "case_num", tmp_path / "test.csv")
    df = pd.read_csv(csv)
    df.loc[0, "clinic"] = None                       # no clinical image for the first case
    df.loc[1, "clinic"] = "nowhere/missing.jpg"      # one that is not among the given images
    df.to_csv(csv, index=False)
    frame = predict(two_run, [derm7pt_root / "images"], csv, device="cpu")
    saved = _saved(two_run)
    assert list(frame["output"][:2]) == ["derm", "derm"] and (frame["output"][2:] == "searched").all()
    assert frame["missing"][0].startswith("clinic") and "not among --images" in frame["missing"][1]
    for t in (t.name for t in DERM7PT_TASKS):
        np.testing.assert_allclose(_probs(frame, "output", t)[:2], branch_probs(saved, "derm")[t][:2], atol=1e-5)


def test_jif_without_a_metadata_column_predicts_from_the_image_branch(jif_run, pad_root, tmp_path):
    csv = _test_rows(jif_run, pad_root / "metadata.csv", "img_id", tmp_path / "test.csv")
    pd.read_csv(csv).drop(columns=["region"]).to_csv(csv, index=False)
    frame = predict(jif_run, [pad_root / "images"], csv, device="cpu")
    assert (frame["output"] == "image").all()
    assert frame["missing"].str.contains("meta").all() and frame["missing"].str.contains("region").all()
    np.testing.assert_allclose(_probs(frame, "output", "diagnostic"),
                               branch_probs(_saved(jif_run), "image")["diagnostic"], atol=1e-5)


def test_an_empty_field_is_missing_only_where_training_never_left_it_empty(jif_run, pad_root, tmp_path):
    pred = load_predictor(jif_run)
    assert pred.vectorizer.empty_in_fit["age"] == 0 and pred.vectorizer.empty_in_fit["smoke"] > 0
    csv = _test_rows(jif_run, pad_root / "metadata.csv", "img_id", tmp_path / "test.csv")
    df = pd.read_csv(csv)
    df.loc[0, "age"] = None     # never empty in training: the metadata branches cannot be used
    df.loc[1, "smoke"] = None   # empty in training rows too: encoded as the model learned it
    df.to_csv(csv, index=False)
    frame = predict(pred, [pad_root / "images"], csv, device="cpu")
    assert list(frame["output"][:2]) == ["image", "all"] and "age" in frame["missing"][0]
    assert frame["missing"][1] == ""


def test_jf_without_a_metadata_column_is_an_error_naming_the_field(jf_run, pad_root, tmp_path):
    csv = _test_rows(jf_run, pad_root / "metadata.csv", "img_id", tmp_path / "test.csv")
    pd.read_csv(csv).drop(columns=["age"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"test\.csv, line 2 .*no column \['age'\].*needs \['clinic', 'meta'\]"):
        predict(jf_run, [pad_root / "images"], csv, device="cpu")
    with pytest.raises(DataError, match="no --metadata"):
        predict(jf_run, [pad_root / "images"], None, device="cpu")


def test_unseen_category_is_encoded_as_zeros_and_noted(jif_run, pad_root, tmp_path):
    csv = _test_rows(jif_run, pad_root / "metadata.csv", "img_id", tmp_path / "test.csv")
    df = pd.read_csv(csv)
    df.loc[0, "region"] = "KNEE"
    df.to_csv(csv, index=False)
    with pytest.warns(UnseenCategoryWarning, match="test.csv"):
        frame = predict(jif_run, [pad_root / "images"], csv, device="cpu")
    assert "region='KNEE' outside the training vocabulary" in frame["notes"][0] and frame["output"][0] == "all"
    assert (frame["notes"][1:] == "").all()


def test_images_without_metadata_are_one_case_each(jif_run, pad_root):
    saved = _saved(jif_run)
    files = sorted(p for p in (pad_root / "images").rglob("*.png") if p.name in set(saved.index[:3]))
    frame = predict(jif_run, files, None, device="cpu", tta="none")
    assert sorted(frame["case_id"]) == sorted(p.name for p in files)
    assert (frame["output"] == "image").all() and (frame["missing"] == "meta (no --metadata)").all()
    assert (frame["notes"] == "").all()


def test_bad_images_are_errors_naming_the_file(jif_run, pad_root, tmp_path):
    with pytest.raises(DataError, match="nowhere/PAT_1.png: no such file"):
        predict(jif_run, [tmp_path / "nowhere" / "PAT_1.png"], None, device="cpu")
    csv = _test_rows(jif_run, pad_root / "metadata.csv", "img_id", tmp_path / "test.csv")
    df = pd.read_csv(csv)
    broken = tmp_path / "imgs" / df.loc[2, "img_id"]
    broken.parent.mkdir()
    broken.write_bytes(b"not a png")
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match=rf"{broken}: cannot read the clinic image \(case {broken.name}, test.csv "
                                        r"line 4\)"):
        predict(jif_run, [broken], csv, device="cpu")
    df.iloc[:2].to_csv(csv, index=False)   # the file's row is gone: a named image must match a row
    with pytest.raises(DataError, match=rf"--images {broken}: matches no row of .*test.csv"):
        predict(jif_run, [broken], csv, device="cpu")


def test_cli_predicts_one_case_into_a_file(jif_run, pad_root, tmp_path, capsys):
    csv = _test_rows(jif_run, pad_root / "metadata.csv", "img_id", tmp_path / "test.csv")
    one = pd.read_csv(csv).iloc[:1]
    one.to_csv(tmp_path / "one.csv", index=False)
    image = next((pad_root / "images").rglob(one["img_id"][0]))
    best = Path(json.loads((jif_run / "metrics.json").read_text())["best_checkpoint"]).name
    out = tmp_path / "out" / "pred.parquet"
    done = python("predict.py", jif_run / "checkpoints" / best, "--images", image, "--metadata", tmp_path / "one.csv",
                  "--out", out, "--device", "cpu", timeout=300)
    assert done.returncode == 0, done.stderr
    frame = pd.read_parquet(out)
    assert list(frame["case_id"]) == [one["img_id"][0]] and frame["output"][0] == "all"
    np.testing.assert_allclose(_probs(frame, "output", "diagnostic")[0],
                               combine(_saved(jif_run).loc[[one["img_id"][0]]], "all")["diagnostic"][0], atol=1e-5)
    from skinlesion.predict import main as predict_main   # the same entry point, in process

    assert predict_main([str(jif_run), "--images", "nowhere.png"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --images nowhere.png: no such file or directory"
