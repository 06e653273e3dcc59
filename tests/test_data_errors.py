"""Bad data fails while the DataModule is set up, in one line naming file, CSV line, column and expectation."""
from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

from skinlesion.data import Isic2019DataModule, PadUfes20DataModule
from skinlesion.errors import ConfigError, DataError
from skinlesion.testing import run_record, train

FAST = {"image_size": 32, "batch_size": 16, "num_workers": 0, "progress": False}


@pytest.fixture
def pad_copy(pad_root, tmp_path):
    return shutil.copytree(pad_root, tmp_path / "pad")


def _edit_csv(root, edit) -> pd.DataFrame:
    df = pd.read_csv(root / "metadata.csv")
    df = edit(df)
    df.to_csv(root / "metadata.csv", index=False)
    return df


def _one_line_exit(overrides, out) -> str:
    with pytest.raises(SystemExit) as exc:
        train(overrides, out)
    msg = str(exc.value)
    assert msg.startswith("error: ") and "\n" not in msg and "Traceback" not in msg
    return msg


# ------------------------------------------------------------------------------------------------ metadata
def test_missing_metadata_column(pad_copy, tmp_path):
    _edit_csv(pad_copy, lambda df: df.drop(columns=["age"]))
    expected = r"metadata\.csv, line 1 \(header\): missing column\(s\) \['age'\] read by the pad_ufes 'm81' metadata"
    dm = PadUfes20DataModule(root=str(pad_copy), **FAST)
    with pytest.raises(DataError, match=expected):
        dm.setup()
    msg = _one_line_exit(["data=pad_ufes", f"data.root={pad_copy}"], tmp_path / "run")
    assert re.search(expected, msg) and str(pad_copy / "metadata.csv") in msg
    assert run_record(tmp_path / "run")["status"] == "failed"


def test_non_numeric_age_names_line_and_value(pad_copy, tmp_path):
    def edit(df):
        df["age"] = df["age"].astype(object)
        df.loc[6, "age"] = "sixty"         # CSV line 8 (header is line 1)
        df.loc[30, "age"] = "n/a years"
        return df
    _edit_csv(pad_copy, edit)
    expected = (r"metadata\.csv, line 8, column 'age': expected a number or an empty cell, got 'sixty' "
                r"\(2 row\(s\) affected\)")
    with pytest.raises(DataError, match=expected):
        PadUfes20DataModule(root=str(pad_copy), **FAST).setup()
    assert re.search(expected, _one_line_exit(["data=pad_ufes", f"data.root={pad_copy}"], tmp_path / "run"))


def test_unknown_meta_field_fails_before_reading_files(pad_root, tmp_path):
    expected = (r"data\.meta_fields=\['age', 'shoe_size'\]: unknown metadata field\(s\) \['shoe_size'\] for "
                r"dataset 'pad_ufes'; expected a subset of \['smoke', 'drink'")
    with pytest.raises(ConfigError, match=expected):
        PadUfes20DataModule(root="/nonexistent", meta_fields=["age", "shoe_size"])   # no file is read
    msg = _one_line_exit(["data=pad_ufes", f"data.root={pad_root}", "data.meta_fields=[age,shoe_size]"],
                         tmp_path / "run")
    assert re.search(expected, msg)


def test_label_column_as_meta_field_is_a_config_error(pad_root):
    with pytest.raises(ConfigError, match=r"data\.meta_fields=\['biopsed'\]: .*label proxy"):
        PadUfes20DataModule(root=str(pad_root), meta_fields=["biopsed"])


def test_unknown_task_and_variant_are_config_errors(pad_root):
    with pytest.raises(ConfigError, match=r"data\.tasks: unknown task\(s\) \['DIAG'\]"):
        PadUfes20DataModule(root=str(pad_root), tasks=["DIAG"])
    with pytest.raises(ConfigError, match=r"data\.meta=m99: unknown metadata variant 'm99'.*\['m81', 'm45'"):
        PadUfes20DataModule(root=str(pad_root), meta="m99")


# ------------------------------------------------------------------------------------------------ images
def _first_image(root):
    img_id = pd.read_csv(root / "metadata.csv")["img_id"].iloc[3]     # CSV line 5
    return next(root.glob(f"images/imgs_part_*/{img_id}"))


@pytest.mark.parametrize("damage", ["garbage", "png_header_cut", "png_data_cut"])
def test_corrupt_image_fails_in_setup(pad_copy, damage):
    img = _first_image(pad_copy)
    data = img.read_bytes()
    img.write_bytes({"garbage": b"this is not an image at all" * 20,
                     "png_header_cut": data[:20],
                     "png_data_cut": data[:len(data) // 2]}[damage])
    dm = PadUfes20DataModule(root=str(pad_copy), **FAST)     # construction reads nothing
    with pytest.raises(DataError) as exc:
        dm.setup()
    msg = str(exc.value)
    assert msg.startswith(f"{img}: cannot decode image (case {img.name}, metadata.csv line 5)")
    assert "1 of 240 image file(s)" in msg and "\n" not in msg
    assert dm.table is None                                    # nothing half set up


def test_truncated_jpeg_fails_in_setup(isic_root, tmp_path):
    root = shutil.copytree(isic_root, tmp_path / "isic")
    name = pd.read_csv(root / "ISIC_2019_Training_Metadata.csv")["image"].iloc[0]
    img = root / "ISIC_2019_Training_Input" / f"{name}.jpg"
    img.write_bytes(img.read_bytes()[:-40])
    with pytest.raises(DataError, match=rf"{name}\.jpg: cannot decode image \(case {name}, "
                                        r"ISIC_2019_Training_Metadata\.csv line 2\): truncated JPEG"):
        Isic2019DataModule(root=str(root), **FAST).setup()


def test_corrupt_image_stops_the_run_before_training(pad_copy, tmp_path):
    _first_image(pad_copy).write_bytes(b"\x89PNG\r\n\x1a\n")
    msg = _one_line_exit(["data=pad_ufes", f"data.root={pad_copy}"], tmp_path / "run")
    assert "cannot decode image" in msg and "metadata.csv line 5" in msg
    assert not list((tmp_path / "run").rglob("*.ckpt")) and not (tmp_path / "run" / "folds.csv").exists()


def test_image_check_progress_bar_follows_the_switch(pad_root, capsys):
    PadUfes20DataModule(root=str(pad_root), **{**FAST, "progress": True}).setup()
    assert "checking images" in capsys.readouterr().err
    PadUfes20DataModule(root=str(pad_root), **FAST).setup()
    assert "checking images" not in capsys.readouterr().err
