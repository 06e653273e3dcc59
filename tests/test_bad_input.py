"""Bad input gets a clear error naming the file, row, field or option — never a bare library traceback."""
from __future__ import annotations

import shutil
import warnings

import pandas as pd
import pytest

from skinlesion.data.metadata import UnseenCategoryWarning, build_vectorizer
from skinlesion.testing import python, run_record, train


@pytest.fixture
def pad_copy(pad_root, tmp_path):
    dst = tmp_path / "pad"
    shutil.copytree(pad_root, dst)
    return dst


def first_image(root):
    img_id = pd.read_csv(root / "metadata.csv")["img_id"].iloc[0]
    return next(root.glob(f"images/imgs_part_*/{img_id}"))


def test_missing_image_names_case_line_and_path(pad_copy, tmp_path):
    img = first_image(pad_copy)
    img.unlink()
    with pytest.raises(SystemExit, match=rf"case {img.name} \(metadata\.csv line 2\) expects .*{img.name}"):
        train(["data=pad_ufes", f"data.root={pad_copy}"], tmp_path / "run")
    rec = run_record(tmp_path / "run")
    assert rec["status"] == "failed" and "missing image" in rec["error"]


def test_missing_images_can_be_skipped_with_a_count(pad_copy, tmp_path, caplog):
    first_image(pad_copy).unlink()
    run = train(["data=pad_ufes", f"data.root={pad_copy}", "data.missing_images=skip"], tmp_path / "run")
    assert run_record(run)["status"] == "completed"
    assert "1 of 240 case(s) have missing image files" in caplog.text
    folds = pd.read_csv(run / "folds.csv")
    assert len(folds) == 239


def test_corrupt_image_names_the_file(pad_copy, tmp_path):
    img = first_image(pad_copy)
    img.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(SystemExit, match=rf"{img.name}: cannot decode image \(case {img.name}"):
        train(["data=pad_ufes", f"data.root={pad_copy}"], tmp_path / "run")


def test_missing_csv_column_names_file_and_column(pad_copy, tmp_path):
    df = pd.read_csv(pad_copy / "metadata.csv").drop(columns=["diagnostic"])
    df.to_csv(pad_copy / "metadata.csv", index=False)
    with pytest.raises(SystemExit, match=r"metadata\.csv: missing column\(s\) \['diagnostic'\]"):
        train(["data=pad_ufes", f"data.root={pad_copy}"], tmp_path / "run")


def test_unknown_label_names_line_and_value(pad_copy, tmp_path):
    df = pd.read_csv(pad_copy / "metadata.csv")
    df.loc[4, "diagnostic"] = "XYZ"
    df.to_csv(pad_copy / "metadata.csv", index=False)
    with pytest.raises(SystemExit, match=r"metadata\.csv, line 6, column 'diagnostic': unknown label 'XYZ'"):
        train(["data=pad_ufes", f"data.root={pad_copy}"], tmp_path / "run")


def test_unknown_metadata_category_warns_once_per_column(pad_root):
    df = pd.read_csv(pad_root / "metadata.csv")
    enc = build_vectorizer("pad_ufes", "m81").fit(df)
    df.loc[:3, "region"] = "ELBOW"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = enc.transform(df)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UnseenCategoryWarning)]
    assert len(msgs) == 1 and "region" in msgs[0] and "ELBOW" in msgs[0]
    region = [i for i, c in enumerate(enc.columns) if c.startswith("region=")]
    assert x[:4, region].sum() == 0


def test_model_needing_a_modality_the_dataset_lacks_fails_at_start(pad_root, tmp_path):
    with pytest.raises(SystemExit, match=r"needs image modality \['derm'\].*'pad_ufes' provides \['clinic'\]"):
        train(["data=pad_ufes", f"data.root={pad_root}", "model.net.image_key=derm"], tmp_path / "a")
    with pytest.raises(SystemExit, match=r"model 'meta_only' needs metadata .*data\.meta is null"):
        train(["data=pad_ufes", f"data.root={pad_root}", "model=meta_only", "data.meta=null"], tmp_path / "b")


def test_metadata_holding_the_targets_is_refused(roots, tmp_path):
    with pytest.raises(SystemExit, match=r"encodes the labels of task\(s\) \['PN', 'STR'"):
        train(["data=derm7pt", f"data.root={roots['derm7pt']}", "model=jif_cat", "data.meta=m14",
               "backbone=test_efficientnet"], tmp_path / "a")
    # the rule follows the fields, so a custom field list that names a criterion is refused as well
    with pytest.raises(SystemExit, match=r"encodes the labels of task\(s\) \['PN'\]"):
        train(["data=derm7pt", f"data.root={roots['derm7pt']}", "model=meta_only",
               "data.meta_fields=[pigment_network,sex]"], tmp_path / "b")


def test_unreadable_root_cli_prints_one_line_no_traceback(tmp_path):
    proc = python("train.py", f"data.root={tmp_path}/nope", "backbone=test_resnet", f"hydra.run.dir={tmp_path}/run",
                  timeout=120)
    assert proc.returncode == 1
    assert f"data.root={tmp_path}/nope: not a readable directory" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_bad_fold_and_unknown_backbone_are_config_errors(pad_root, tmp_path):
    with pytest.raises(SystemExit, match=r"data\.fold=7 must be in 0\.\.4"):
        train(["data=pad_ufes", f"data.root={pad_root}", "data.fold=7"], tmp_path / "a")
    with pytest.raises(SystemExit, match=r"backbone\.name='resnet5O' is not a timm model"):
        train(["data=pad_ufes", f"data.root={pad_root}", "backbone.name=resnet5O"], tmp_path / "b")
    # caught by the config check before anything is written, or inside Hydra's instantiate of the DataModule:
    # either way the project's one-line message, not Hydra's wrapper
    with pytest.raises(SystemExit, match=r"^error: data\.normalize='bgr': expected [^\n]*'imagenet'[^\n]*'raw_bgr'$"):
        train(["data=pad_ufes", f"data.root={pad_root}", "data.normalize=bgr"], tmp_path / "c")
    if (tmp_path / "c" / "run.json").exists():
        assert run_record(tmp_path / "c")["error"].startswith("data.normalize='bgr': expected")
