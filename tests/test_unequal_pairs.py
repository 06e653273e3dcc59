"""The two images of a derm7pt case may differ in size (768x512 beside 768x511, 767x508, ...; some clinical photos
have another shape altogether). Each image is resized on its own before the geometry both share; training,
evaluation and FusionM4Net run on such pairs with or without the image cache and loader workers; a failure inside
a loader worker reaches the user as one line naming the case and its files."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.data import Derm7ptDataModule
from skinlesion.testing import TINY, run_record, train, unequal_pairs


def _sizes(root, rel: str) -> tuple[int, int]:
    with Image.open(root / "images" / rel) as im:
        return im.size


def _unequal_cases(root) -> pd.DataFrame:
    df = pd.read_csv(root / "meta" / "meta.csv")
    return df[df["case_num"].astype(str).isin(unequal_pairs(root))]


def test_generated_derm7pt_has_the_releases_unequal_pairs(derm7pt_root):
    df = pd.read_csv(derm7pt_root / "meta" / "meta.csv")
    pairs = [(_sizes(derm7pt_root, c), _sizes(derm7pt_root, d)) for c, d in zip(df["clinic"], df["derm"])]
    landscape = (48, 32)                               # 768x512 at the tests' 32-px scale
    assert sum(p == (landscape, landscape) for p in pairs) > 0.75 * len(df)
    unequal = _unequal_cases(derm7pt_root)
    assert 0.05 * len(df) <= len(unequal) <= 0.25 * len(df)
    shapes = [(_sizes(derm7pt_root, c), _sizes(derm7pt_root, d)) for c, d in zip(unequal["clinic"], unequal["derm"])]
    # a pixel apart, and clinical photographs of another shape altogether
    assert any(max(abs(a - b) for a, b in zip(c, d)) == 1 for c, d in shapes)
    assert any(c[0] < c[1] for c, _ in shapes)        # a portrait clinical image beside a landscape one


# ------------------------------------------------------------------------------------------- shared geometry
def _coordinates(width: int, height: int, blue: int) -> np.ndarray:
    """Each pixel holds its relative (x, y) position, scaled to 0..255: after resizing, images of any size agree."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([255 * x / (width - 1), 255 * y / (height - 1), np.full(x.shape, blue)], -1).round().astype(np.uint8)


def test_an_unequal_pair_gets_the_same_flips_rotation_scale_and_shift(derm7pt_root, tmp_path):
    Image.fromarray(_coordinates(48, 32, 200)).save(derm := tmp_path / "derm.png")
    Image.fromarray(_coordinates(47, 31, 7)).save(clinic := tmp_path / "clinic.png")
    dm = Derm7ptDataModule(root=str(derm7pt_root), image_size=32, batch_size=4, num_workers=0, progress=False,
                           augment={"p": 1.0, "brightness_contrast": False})
    dm.setup()
    n = len(dm.table)
    dm.table.images["derm"], dm.table.images["clinic"] = [derm] * n, [clinic] * n
    ds = dm.datasets["train"]
    start = ds.resize(image=_coordinates(48, 32, 200))["image"].transpose(2, 0, 1)
    moved = 0
    for _ in range(60):
        item = ds[0]["images"]
        d, c = item["derm"].numpy().astype(int), item["clinic"].numpy().astype(int)
        assert d.shape == c.shape == (3, 32, 32)
        # the coordinate channels went to the same places in both images: a flip, turn, scale or shift of one
        # image only would move them by tens of grey levels; resizing 47x31 vs 48x32 differs by a few at most
        assert np.abs(d[:2] - c[:2]).max() <= 4
        assert (d[2] == 200).all() and (c[2] == 7).all()
        moved += np.abs(d - start).max() > 16
    assert moved >= 40                                        # geometry was applied, not skipped


# ------------------------------------------------------------------------------------------- whole runs
TWO_IMAGE = [*TINY, "data=derm7pt", "model=two_image", "tta=none", "callbacks.swa=null"]


@pytest.mark.parametrize("cache,workers", [(False, 2), (True, 0)])
def test_a_two_image_model_trains_and_tests_on_unequal_pairs(derm7pt_root, tmp_path, cache, workers):
    out = train([*TWO_IMAGE, f"data.root={derm7pt_root}", f"data.cache.enabled={cache}", "data.cache.size=40",
                 f"data.num_workers={workers}"], tmp_path / "run", tiny=False)
    assert run_record(out)["status"] == "completed"
    test = pd.read_parquet(out / "predictions" / "test.parquet")
    unequal = set(_unequal_cases(derm7pt_root)["case_num"].astype(str))
    assert unequal & set(test["case_id"].astype(str))          # unequal pairs were evaluated ...
    folds = pd.read_csv(out / "folds.csv")
    trained = set(folds.loc[folds["partition"] == "train", "case_id"].astype(str))
    assert unequal & trained                                     # ... and trained on (every case, one epoch)
    assert np.isfinite(test.filter(like="prob/").to_numpy()).all()


# ------------------------------------------------------------------------------------------- worker failures
@pytest.fixture
def d7_copy(derm7pt_root, tmp_path):
    import shutil
    return shutil.copytree(derm7pt_root, tmp_path / "d7")


def _one_line_exit(overrides, out) -> str:
    with pytest.raises(SystemExit) as exc:
        train(overrides, out, tiny=False)
    msg = str(exc.value)
    assert msg.startswith("error: ") and "\n" not in msg and "Traceback" not in msg and "worker" not in msg
    assert run_record(out)["status"] == "failed"
    return msg


def test_an_image_that_fails_to_decode_in_a_worker_ends_in_one_line(d7_copy, tmp_path):
    df = pd.read_csv(d7_copy / "meta" / "meta.csv")
    test_rows = pd.read_csv(d7_copy / "meta" / "test_indexes.csv")["indexes"]
    rel = df.loc[test_rows.iloc[0], "derm"]
    path = d7_copy / "images" / rel
    data = path.read_bytes()
    # header and end marker intact (the set-up check passes), the compressed data cut: decoding fails in the worker
    path.write_bytes(data[: len(data) // 3] + b"\xff\xd9")
    msg = _one_line_exit([*TWO_IMAGE, f"data.root={d7_copy}", "data.num_workers=2"], tmp_path / "run")
    assert "cannot decode image" in msg and rel in msg and f"case {df.loc[test_rows.iloc[0], 'case_num']}" in msg


def test_any_failure_inside_a_worker_names_the_case_and_its_files(derm7pt_root, tmp_path, monkeypatch):
    from skinlesion.data import datamodule

    def broken(self, row):   # as albumentations refusing a pair would, from inside the loader worker
        raise ValueError("Height and Width of image, mask or masks should be equal.\n  You provided ...")

    monkeypatch.setattr(datamodule.CaseDataset, "_images", broken)   # the forked workers inherit it
    msg = _one_line_exit([*TWO_IMAGE, f"data.root={derm7pt_root}", "data.num_workers=2"], tmp_path / "run")
    assert "ValueError: Height and Width of image, mask or masks should be equal. You provided" in msg
    assert "meta.csv line" in msg and ".jpg" in msg.lower()
