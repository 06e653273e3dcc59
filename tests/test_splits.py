"""Fold assignment on the real CSVs."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from skinlesion.data.splits import cv_partition, derm7pt_partition, isic_folds, lesion_key, pad_ufes_folds
from skinlesion.data.tasks import DERM7PT_TASKS, ISIC_CLASSES

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real dataset CSVs not found at {DATA}")

# sha256 of the fold CSVs written below, under scikit-learn 1.9.1 (the pinned version). A change means the
# assignment changed: regenerate deliberately, never silently.
PAD_FOLDS_SHA256 = "df7d93525a966a502543ae36d1574a7e41f99987c3d6bb4b0cc0e61bb5ade54b"
PAD_GROUPED_FOLDS_SHA256 = "f8f79573542b3c32527329f09f1e3b9113e63895534aad865620725faa0d4314"
ISIC_FOLDS_SHA256 = "a25775eba7aad49e9803e0eb0adc295e055964989d451a4fd1d01c4a9b314544"


@pytest.fixture(scope="module")
def pad():
    return pd.read_csv(DATA / "pad_ufes_20" / "metadata.csv")


@pytest.fixture(scope="module")
def pad_folds(pad):
    return pad_ufes_folds(pad["diagnostic"].to_numpy())


@pytest.fixture(scope="module")
def pad_grouped(pad):
    return pad_ufes_folds(pad["diagnostic"].to_numpy(), groups=lesion_key(pad))


@pytest.fixture(scope="module")
def isic_labels():
    gt = pd.read_csv(DATA / "isic_2019" / "ISIC_2019_Training_GroundTruth.csv")
    assert (gt["UNK"] == 0).all()
    onehot = gt[list(ISIC_CLASSES)].to_numpy()
    assert (onehot.sum(1) == 1).all()
    return gt["image"].to_numpy(), onehot.argmax(1)


def fold_csv(ids, folds) -> bytes:
    return pd.DataFrame({"id": ids, "fold": folds}).to_csv(index=False, lineterminator="\n").encode()


# ---------------------------------------------------------------------------------------------- PAD
def test_pad_fold_sizes(pad_folds):
    assert pad_folds.shape == (2298,) and pad_folds.dtype.kind == "i"
    assert set(np.unique(pad_folds)) == {-1, 0, 1, 2, 3, 4}
    assert int((pad_folds == -1).sum()) == 383
    for k in range(5):
        assert abs(int((pad_folds == k).sum()) - 383) <= 1


def test_pad_test_partition_is_sixth_split(pad, pad_folds):
    y = pad["diagnostic"].to_numpy()
    splits = list(StratifiedKFold(6, shuffle=True, random_state=8).split(np.zeros(len(y)), y))
    np.testing.assert_array_equal(np.flatnonzero(pad_folds == -1), np.sort(splits[5][1]))
    rest = np.sort(np.concatenate([s[1] for s in splits[:5]]))
    inner = StratifiedKFold(5, shuffle=True, random_state=8).split(np.zeros(len(rest)), y[rest])
    for k, (_, held) in enumerate(inner):
        np.testing.assert_array_equal(np.flatnonzero(pad_folds == k), rest[np.sort(held)])


def test_pad_stratified(pad, pad_folds):
    y = pad["diagnostic"].to_numpy()
    rest = pad_folds >= 0
    for c in np.unique(y):
        n_c = int((y == c).sum())
        assert abs(int(((pad_folds == -1) & (y == c)).sum()) - n_c / 6) <= 2, c
        n_rest = int((rest & (y == c)).sum())
        for k in range(5):
            assert abs(int(((pad_folds == k) & (y == c)).sum()) - n_rest / 5) <= 2, (c, k)


def test_pad_deterministic_and_byte_identical(pad, pad_folds, tmp_path):
    again = pad_ufes_folds(pad["diagnostic"].to_numpy())
    np.testing.assert_array_equal(pad_folds, again)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_bytes(fold_csv(pad["img_id"], pad_folds))
    b.write_bytes(fold_csv(pad["img_id"], again))
    assert a.read_bytes() == b.read_bytes()
    assert hashlib.sha256(a.read_bytes()).hexdigest() == PAD_FOLDS_SHA256
    assert not np.array_equal(pad_ufes_folds(pad["diagnostic"].to_numpy(), seed=9), pad_folds)


def test_pad_lesion_grouped(pad, pad_grouped):
    keys = lesion_key(pad)
    assert keys[1] == "PAT_46/881"
    assert len(set(keys)) == 1891
    per_key = pd.Series(pad_grouped).groupby(keys).nunique()
    assert (per_key == 1).all()  # no lesion in two folds, the test partition included
    sizes = np.bincount(pad_grouped + 1)
    assert len(sizes) == 6 and all(abs(s - 383) <= 15 for s in sizes)
    assert hashlib.sha256(fold_csv(pad["img_id"], pad_grouped)).hexdigest() == PAD_GROUPED_FOLDS_SHA256
    # lesion_id alone is reused across patients, so the key must include patient_id
    assert pad.groupby("lesion_id")["patient_id"].nunique().max() > 1


def test_pad_grouped_handles_missing_group(pad):
    y = pad["diagnostic"].to_numpy()
    groups = lesion_key(pad).astype(object)
    groups[:10] = None  # rows without a key become singletons rather than one shared group
    folds = pad_ufes_folds(y, groups=groups)
    assert len(np.unique(folds)) == 6


def test_lesion_key_needs_columns(pad):
    with pytest.raises(ValueError, match="patient_id"):
        lesion_key(pad.drop(columns=["patient_id"]))


# ---------------------------------------------------------------------------------------------- ISIC
def test_isic_folds(isic_labels):
    images, y = isic_labels
    folds = isic_folds(y)
    sizes = np.bincount(folds)
    assert len(sizes) == 5 and sizes.sum() == 25331 and all(abs(s - 5066) <= 1 for s in sizes)
    for c in range(8):
        n_c = int((y == c).sum())
        for k in range(5):
            assert abs(int(((folds == k) & (y == c)).sum()) - n_c / 5) <= 2
    np.testing.assert_array_equal(folds, isic_folds(y, seed=32))
    assert hashlib.sha256(fold_csv(images, folds)).hexdigest() == ISIC_FOLDS_SHA256


def test_isic_grouped_by_lesion(isic_labels):
    _, y = isic_labels
    lesion = pd.read_csv(DATA / "isic_2019" / "ISIC_2019_Training_Metadata.csv")["lesion_id"]
    folds = isic_folds(y, groups=lesion.to_numpy())
    known = lesion.notna().to_numpy()
    assert (pd.Series(folds[known]).groupby(lesion[known].to_numpy()).nunique() == 1).all()
    assert all(abs(s - 5066) <= 100 for s in np.bincount(folds))


# ---------------------------------------------------------------------------------------------- cv_partition
def test_cv_partition(pad_folds):
    part = cv_partition(pad_folds, 2)
    assert int((part == "test").sum()) == 383
    assert ((part == "val") == (pad_folds == 2)).all()
    assert int((part == "train").sum()) == int(((pad_folds >= 0) & (pad_folds != 2)).sum())
    for bad in (5, -1):
        with pytest.raises(ValueError, match=rf"data\.fold={bad} must be in 0\.\.4"):
            cv_partition(pad_folds, bad)
    isic_like = np.arange(20) % 5
    assert not (cv_partition(isic_like, 0) == "test").any()
    with pytest.raises(ValueError, match="expected"):
        cv_partition(np.array([0, 1, 7]), 0)


# ---------------------------------------------------------------------------------------------- derm7pt
@pytest.fixture(scope="module")
def derm_index():
    meta = DATA / "derm7pt" / "meta"
    df = pd.read_csv(meta / "meta.csv")
    idx = [pd.read_csv(meta / f"{p}_indexes.csv")["indexes"].to_numpy() for p in ("train", "valid", "test")]
    return df, idx


def test_derm7pt_partition_real(derm_index):
    df, (tr, va, te) = derm_index
    part = derm7pt_partition(len(df), tr, va, te)
    assert [int((part == p).sum()) for p in ("train", "val", "test")] == [413, 203, 395]
    assert (part[tr] == "train").all() and (part[te] == "test").all()
    # the published DIAG counts per split confirm the indexes are 0-based row positions
    diag = DERM7PT_TASKS[0]
    codes = df["diagnosis"].map(diag.raw_to_code).to_numpy()
    counts = {p: np.bincount(codes[part == p], minlength=5).tolist() for p in ("train", "val", "test")}
    # classes BCC, NEV, MEL, MISC, SK
    assert counts == {"train": [19, 256, 90, 32, 16], "val": [7, 100, 61, 25, 10], "test": [16, 219, 101, 40, 19]}


def test_derm7pt_partition_errors(derm_index):
    df, (tr, va, te) = derm_index
    n = len(df)
    with pytest.raises(ValueError, match=r"valid_indexes\.csv.*disjoint"):
        derm7pt_partition(n, tr, np.append(va, tr[0]), te)
    with pytest.raises(ValueError, match=r"test_indexes\.csv.*out of range"):
        derm7pt_partition(n, tr, va, np.append(te, n))
    with pytest.raises(ValueError, match=r"train_indexes\.csv.*out of range"):
        derm7pt_partition(n, np.append(tr, -1), va, te)
    with pytest.raises(ValueError, match=r"cover"):
        derm7pt_partition(n, tr[1:], va, te)
    with pytest.raises(ValueError, match=r"train_indexes\.csv.*more than once"):
        derm7pt_partition(n, np.append(tr, tr[0]), va, te)
    with pytest.raises(ValueError, match=r"my/root/test_indexes\.csv"):
        derm7pt_partition(n, tr, va, np.append(te, n + 5), source="my/root/")
