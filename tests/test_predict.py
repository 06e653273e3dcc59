"""Predicting new cases (``python predict.py RUN_DIR --root DIR``): checkpoints carry what inference needs, a run's
own test cases come out as its saved predictions, and missing inputs fall back to the branches that do not need
them (or fail, naming the row and field)."""
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
def _layout_copy(src: Path, dst: Path, csv: str, edit=None) -> Path:
    """A directory in the same official layout: the images linked, the metadata CSV (optionally edited) copied."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.is_dir() and entry.name != Path(csv).parent.name:
            (dst / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
    (dst / csv).parent.mkdir(parents=True, exist_ok=True)
    for f in (src / csv).parent.glob("*.csv"):   # the metadata file and, for derm7pt, the index files beside it
        (dst / csv).parent.joinpath(f.name).write_bytes(f.read_bytes())
    if edit is not None:
        df = pd.read_csv(dst / csv)
        edit(df).to_csv(dst / csv, index=False)
    return dst


def test_jif_predictions_of_the_test_cases_equal_the_saved_ones(jif_run, pad_root):
    frame = predict(jif_run, root=pad_root, split="test", device="cpu")
    saved = _saved(jif_run)
    assert list(frame["case_id"]) == list(saved.index)
    assert (frame["inputs"] == "clinic+meta").all() and (frame["missing"] == "").all()
    np.testing.assert_allclose(_probs(frame, "all", "diagnostic"), combine(saved, "all")["diagnostic"], atol=1e-5)
    for b in ("image", "meta", "fusion"):   # the saved predictions' columns, names and class order
        cols = [c for c in saved.columns if c.startswith(f"prob/{b}/")]
        np.testing.assert_allclose(frame[cols].to_numpy(float), saved[cols].to_numpy(float), atol=1e-5)
    one_view = predict(jif_run, root=pad_root, split="test", device="cpu", tta="none")   # the run used four views
    assert np.abs(_probs(one_view, "all", "diagnostic") - _probs(frame, "all", "diagnostic")).max() > 1e-4
    every = predict(jif_run, root=pad_root, device="cpu", tta="none")                   # no --split: every case
    assert len(every) == len(pd.read_csv(pad_root / "metadata.csv"))


def test_two_image_predictions_equal_the_saved_ones_with_the_searched_weights(two_run, derm7pt_root):
    weights = json.loads((two_run / "metrics.json").read_text())["search"]["weights"]
    frame = predict(two_run, root=derm7pt_root, split="test", device="cpu")
    saved = _saved(two_run)
    assert list(frame["case_id"]) == list(saved.index) and (frame["inputs"] == "clinic+derm").all()
    searched = combine(saved, weights)
    for t in (t.name for t in DERM7PT_TASKS):
        np.testing.assert_allclose(_probs(frame, "searched", t), searched[t], atol=1e-5)
        for b in ("derm", "clinic", "fusion"):
            np.testing.assert_allclose(_probs(frame, b, t), branch_probs(saved, b)[t], atol=1e-5)


def test_a_field_the_network_never_reads_changes_nothing(two_run, derm7pt_root, tmp_path):
    """The two-image network reads no metadata: a CSV without the `sex` column and with an empty `location` cell
    is no missing input; every case gets the run's searched weighting, as saved."""
    rows = pd.read_csv(derm7pt_root / "meta" / "test_indexes.csv")["indexes"]

    def no_sex(df):
        df.loc[int(rows.iloc[0]), "location"] = None
        return df.drop(columns=["sex"])

    root = _layout_copy(derm7pt_root, tmp_path / "d7", "meta/meta.csv", no_sex)
    frame = predict(two_run, root=root, split="test", device="cpu")
    assert (frame["missing"] == "").all() and (frame["inputs"] == "clinic+derm").all()
    searched = combine(_saved(two_run), json.loads((two_run / "metrics.json").read_text())["search"]["weights"])
    for t in (t.name for t in DERM7PT_TASKS):
        assert np.abs(_probs(frame, "searched", t) - searched[t]).max() < 1e-6


def test_two_image_case_without_its_clinical_image_is_predicted_by_the_derm_head(two_run, derm7pt_root, tmp_path):
    rows = pd.read_csv(derm7pt_root / "meta" / "test_indexes.csv")["indexes"]
    first = int(rows.iloc[0])

    def no_clinic(df):
        df.loc[first, "clinic"] = "nowhere/missing.jpg"   # the case's clinical photograph is not there
        return df

    root = _layout_copy(derm7pt_root, tmp_path / "d7", "meta/meta.csv", no_clinic)
    frame = predict(two_run, root=root, split="test", device="cpu")
    saved = _saved(two_run)
    case = str(pd.read_csv(root / "meta" / "meta.csv")["case_num"][first])
    i = list(frame["case_id"]).index(case)
    assert frame["inputs"][i] == "derm" and (frame["inputs"].drop(index=i) == "clinic+derm").all()
    assert frame["missing"][i].startswith("clinic") and f"no such image file ({root / 'images' / 'nowhere' / 'missing.jpg'})" in frame["missing"][i]
    for t in (t.name for t in DERM7PT_TASKS):
        np.testing.assert_allclose(_probs(frame, "searched", t)[i], branch_probs(saved, "derm")[t][i], atol=1e-5)
        assert np.isnan(_probs(frame, "clinic", t)[i]).all() and np.isnan(_probs(frame, "fusion", t)[i]).all()


def test_jif_without_its_metadata_columns_predicts_from_the_image_branch(jif_run, pad_root, tmp_path, capsys):
    fields = load_predictor(jif_run).vectorizer.field_names
    root = _layout_copy(pad_root, tmp_path / "pad", "metadata.csv", lambda df: df.drop(columns=fields))
    frame = predict(jif_run, root=root, split="test", device="cpu")
    saved = _saved(jif_run)
    assert (frame["inputs"] == "clinic").all() and frame["missing"].str.startswith("meta (no column").all()
    np.testing.assert_allclose(_probs(frame, "all", "diagnostic"), branch_probs(saved, "image")["diagnostic"],
                               atol=1e-5)
    np.testing.assert_allclose(_probs(frame, "image", "diagnostic"), branch_probs(saved, "image")["diagnostic"],
                               atol=1e-5)
    assert np.isnan(_probs(frame, "meta", "diagnostic")).all()
    from skinlesion.predict import main   # the command's summary counts the rows that did without an input
    out = tmp_path / "pred.csv"
    assert main([str(jif_run), "--root", str(root), "--split", "test", "--out", str(out), "--device", "cpu"]) == 0
    assert (f"{len(frame)} case(s) -> {out}; {len(frame)} predicted with an input missing (see 'inputs' and "
            "'missing')") in capsys.readouterr().err.strip().splitlines()


def test_an_empty_field_is_missing_only_where_training_never_left_it_empty(jif_run, pad_root, tmp_path):
    pred = load_predictor(jif_run)
    assert pred.vectorizer.empty_in_fit["age"] == 0 and pred.vectorizer.empty_in_fit["smoke"] > 0
    csv = _test_rows(jif_run, pad_root / "metadata.csv", "img_id", tmp_path / "test.csv")
    df = pd.read_csv(csv)
    df.loc[0, "age"] = None     # never empty in training: the metadata branches cannot be used
    df.loc[1, "smoke"] = None   # empty in training rows too: encoded as the model learned it
    df.to_csv(csv, index=False)
    frame = predict(pred, [pad_root / "images"], csv, device="cpu")
    assert list(frame["inputs"][:2]) == ["clinic", "clinic+meta"] and "age" in frame["missing"][0]
    assert frame["missing"][1] == ""


def test_jf_without_metadata_and_cases_without_any_input_end_in_one_line(jf_run, jif_run, pad_root, tmp_path,
                                                                         capsys):
    from skinlesion.predict import main as predict_main

    root = _layout_copy(pad_root, tmp_path / "pad", "metadata.csv", lambda df: df.drop(columns=["age"]))
    with pytest.raises(DataError, match=r"metadata\.csv, line 2 .*no column \['age'\].*no output of this model can "
                                        r"do without it \(fusion needs clinic\+meta\)"):
        predict(jf_run, root=root, device="cpu")
    assert predict_main([str(jf_run), "--root", str(root), "--out", str(tmp_path / "jf.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no column ['age']" in err[-1] and not (tmp_path / "jf.csv").exists()

    def nothing_for_two(df):   # no image file and no metadata for the first two cases
        df.loc[:1, "img_id"] = "absent.png"
        df.loc[:1, "age"] = None
        return df

    root2 = _layout_copy(pad_root, tmp_path / "pad2", "metadata.csv", nothing_for_two)
    assert predict_main([str(jif_run), "--root", str(root2), "--tta", "none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "line 2 (case absent.png)" in err[-1] and "2 case(s)" in err[-1]
    out = tmp_path / "skipped.csv"
    args = [str(jif_run), "--root", str(root2), "--tta", "none", "--skip-unusable", "--out", str(out)]
    assert predict_main(args) == 0
    assert capsys.readouterr().err.strip().splitlines()[0].endswith("2 skipped: no output can predict them")
    assert len(pd.read_csv(out)) == len(pd.read_csv(root2 / "metadata.csv")) - 2


def test_unseen_category_is_encoded_as_zeros_and_noted(jif_run, pad_root, tmp_path):
    csv = _test_rows(jif_run, pad_root / "metadata.csv", "img_id", tmp_path / "test.csv")
    df = pd.read_csv(csv)
    df.loc[0, "region"] = "KNEE"
    df.to_csv(csv, index=False)
    with pytest.warns(UnseenCategoryWarning, match="test.csv"):
        frame = predict(jif_run, [pad_root / "images"], csv, device="cpu")
    assert "region='KNEE' outside the training vocabulary" in frame["notes"][0]
    assert frame["inputs"][0] == "clinic+meta" and (frame["notes"][1:] == "").all()


def test_a_case_listed_twice_is_predicted_twice_and_noted(jif_run, pad_root, tmp_path, caplog):
    csv = _test_rows(jif_run, pad_root / "metadata.csv", "img_id", tmp_path / "test.csv")
    df = pd.read_csv(csv)
    pd.concat([df, df.iloc[[1]]]).to_csv(csv, index=False)           # the case on line 3 again, on the last line
    last = len(df) + 2
    with caplog.at_level("WARNING", logger="skinlesion.predict.inference"):
        frame = predict(jif_run, [pad_root / "images"], csv, device="cpu", tta="none")
    assert len(frame) == len(df) + 1 and list(frame["case_id"]) == [*df["img_id"], df["img_id"][1]]
    assert frame["notes"][1] == f"case id also listed on line {last}: predicted once per row"
    assert frame["notes"].iloc[-1] == "case id also listed on line 3: predicted once per row"
    assert (frame["notes"].drop(index=[1, len(df)]) == "").all()
    probs = frame[[c for c in frame.columns if c.startswith("prob/")]].to_numpy(float)
    np.testing.assert_allclose(probs[1], probs[-1], atol=1e-6)       # the same case, the same answer
    assert any(f"{csv}: 1 case id(s) are listed more than once" in r.getMessage() for r in caplog.records)


def test_images_without_metadata_are_one_case_each(jif_run, pad_root):
    saved = _saved(jif_run)
    files = sorted(p for p in (pad_root / "images").rglob("*.png") if p.name in set(saved.index[:3]))
    frame = predict(jif_run, files, None, device="cpu", tta="none")
    assert sorted(frame["case_id"]) == sorted(p.name for p in files)
    assert (frame["inputs"] == "clinic").all() and (frame["missing"] == "meta (no --metadata)").all()
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


def test_prediction_needs_only_the_run_directory(pad_root, tmp_path):
    """Everything prediction needs travels with the run: after its training data folder is renamed, the run still
    predicts (from the moved folder, here) exactly what it saved."""
    import shutil

    data = shutil.copytree(pad_root, tmp_path / "pad-ufes-20")
    run = train(["data=pad_ufes", f"data.root={data}", "model=jif_cat", "trainer.limit_train_batches=1", "tta=none"],
                tmp_path / "run")
    moved = data.rename(tmp_path / "moved")
    frame = predict(run, root=moved, split="test", device="cpu")
    saved = _saved(run)
    np.testing.assert_allclose(_probs(frame, "all", "diagnostic"), combine(saved, "all")["diagnostic"], atol=1e-5)


def test_cli_predicts_the_test_split_into_a_file_and_load_run_gives_the_same_frame(jif_run, pad_root, tmp_path):
    from skinlesion import load_run

    out = tmp_path / "out" / "pred.parquet"
    done = python("predict.py", jif_run, "--root", pad_root, "--split", "test", "--out", out, "--device", "cpu",
                  timeout=300)
    assert done.returncode == 0, done.stderr
    frame = pd.read_parquet(out)
    lines = done.stderr.strip().splitlines()
    assert f"{len(_saved(jif_run))} case(s) -> {out}" in lines
    counts = frame["pred/diagnostic"].value_counts()
    assert lines[-1] == "predicted diagnostic: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    np.testing.assert_allclose(_probs(frame, "all", "diagnostic"), combine(_saved(jif_run), "all")["diagnostic"],
                               atol=1e-5)
    same = load_run(jif_run).predict(root=pad_root, split="test")
    pd.testing.assert_frame_equal(same.reset_index(drop=True), frame, check_dtype=False)


def test_the_predicted_class_is_the_reported_outputs_arg_max(two_run, derm7pt_root):
    frame = predict(two_run, root=derm7pt_root, split="test", device="cpu")
    for task in DERM7PT_TASKS:
        cols = [c for c in frame.columns if c.startswith(f"prob/searched/{task.name}/")]
        expected = [c.rsplit("/", 1)[1] for c in frame[cols].idxmax(axis=1)]
        assert list(frame[f"pred/{task.name}"]) == expected and set(expected) <= set(task.classes)


def test_with_split_an_error_names_the_csv_line_of_the_case(jif_run, pad_root, tmp_path):
    """--split keeps a subset of the CSV's rows; an error still names the row's own line in the file."""
    folds = pd.read_csv(jif_run / "folds.csv", dtype={"case_id": str})
    test_ids = set(folds.loc[folds["partition"] == "test", "case_id"])
    df = pd.read_csv(pad_root / "metadata.csv")
    row = int(next(i for i, v in enumerate(df["img_id"].astype(str)) if v in test_ids and i > 3))

    def bad_age(frame):
        frame["age"] = frame["age"].astype(object)
        frame.loc[row, "age"] = "forty"
        return frame

    root = _layout_copy(pad_root, tmp_path / "pad", "metadata.csv", bad_age)
    with pytest.raises(DataError, match=rf"metadata\.csv, line {row + 2}, column 'age'"):
        predict(jif_run, root=root, split="test", device="cpu")


def test_a_folder_of_another_dataset_is_refused_naming_both(jif_run, derm7pt_root):
    with pytest.raises(DataError, match=r"is a derm7pt folder \(meta/meta\.csv\); the run's model was trained on "
                                        r"pad_ufes, whose folders hold metadata\.csv"):
        predict(jif_run, root=derm7pt_root, device="cpu")


@pytest.mark.parametrize("args,said", [(["--out", "x.xlsx"], "--out x.xlsx: expected a .csv or .parquet file name"),
                                       (["--batch-size", "0"], "argument --batch-size: expected a whole number >= 1"),
                                       (["--num-workers", "-1"], "argument --num-workers: expected a whole number >= 0")])
def test_bad_options_are_refused_before_any_work_in_one_line(jif_run, pad_root, args, said, capsys, monkeypatch):
    import skinlesion.predict.inference as inference
    from skinlesion.predict import main

    monkeypatch.setattr(inference, "load_predictor", lambda *a, **k: pytest.fail("the model was loaded"))
    try:
        code = main([str(jif_run), "--root", str(pad_root), *args])
    except SystemExit as e:   # argparse's own exit for a bad option value
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2) and said in err and "Traceback" not in err


def test_checkpoint_last_of_a_searched_run_says_why_it_reports_another_output(two_run, derm7pt_root, caplog):
    with caplog.at_level("WARNING", logger="skinlesion.predict"):
        frame = predict(two_run, root=derm7pt_root, split="test", device="cpu", which="last")
    said = [r.getMessage() for r in caplog.records if "searched branch weights were found for" in r.getMessage()]
    assert len(said) == 1 and "swa.ckpt, not for last.ckpt" in said[0] and "\n" not in said[0]
    assert not [c for c in frame.columns if c.startswith("prob/searched/")]
    assert [c for c in frame.columns if c.startswith("prob/fusion/")]


def test_prediction_imports_neither_training_nor_load_run():
    """Prediction's rooms sit below training: the payload, the module's construction and checkpoint resolution have
    owners of their own (skinlesion.payload, skinlesion.build, skinlesion.checkpoints)."""
    code = ("import sys, skinlesion.predict, skinlesion.fusionm4net.predict; "
            "print(sorted(m for m in ('skinlesion.train', 'skinlesion.run') if m in sys.modules))")
    done = python("-c", code, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]
