"""Generated datasets in the official layouts: files, CSV quirks, determinism, label cues, complementary cues in
the two derm7pt images, and generated images for the real metadata files of ../shared/data."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skinlesion.data.synthetic import PAD_IMAGE_FOLDERS, generate, main, seven_point_score
from skinlesion.data.tasks import DERM7PT_TASK_COLUMNS, DERM7PT_TASKS, ISIC_CLASSES, PAD_UFES_TASKS
from skinlesion.testing import python

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAD_REAL = DATA / "pad_ufes_20" / "metadata.csv"
ISIC_REAL = DATA / "isic_2019"
D7_REAL = DATA / "derm7pt" / "meta"


def real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data file {path} not available")
    return path


def header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return fh.readline().rstrip("\r\n").split(",")


def pad_images(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for folder in PAD_IMAGE_FOLDERS:
        for p in (root / folder).glob("*.png"):
            found.setdefault(p.name, []).append(p)
    return found


def ridge_bacc(X: np.ndarray, y: np.ndarray, lam: float = 3.0) -> float:
    """Balanced accuracy of a one-vs-rest ridge classifier, trained on even rows and tested on odd rows."""
    X = np.hstack([(X - X.mean(0)) / (X.std(0) + 1e-6), np.ones((len(X), 1))])
    tr, te = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    classes = np.unique(y)
    Y = (y[tr, None] == classes[None]).astype(float) * 2 - 1
    W = np.linalg.solve(X[tr].T @ X[tr] + lam * np.eye(X.shape[1]), X[tr].T @ Y)
    pred = classes[np.argmax(X[te] @ W, 1)]
    return float(np.mean([np.mean(pred[y[te] == c] == c) for c in np.unique(y[te])]))


def pixels(paths, k: int = 16) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((k, k), Image.BILINEAR), dtype=float).ravel()
                     for p in paths]) / 255


@pytest.fixture(scope="module")
def pad(tmp_path_factory):
    return generate("pad_ufes", tmp_path_factory.mktemp("syn") / "pad", n=240, size=32, seed=5, progress=False)


@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    return generate("isic2019", tmp_path_factory.mktemp("syn") / "isic", n=240, size=32, seed=5, progress=False)


@pytest.fixture(scope="module")
def d7(tmp_path_factory):
    return generate("derm7pt", tmp_path_factory.mktemp("syn") / "d7", n=240, size=32, seed=5, progress=False)


# ------------------------------------------------------------------------------------------------ PAD-UFES-20
def test_pad_layout(pad):
    assert header(pad / "metadata.csv") == header(real(PAD_REAL))
    assert "synthetic" in (pad / "README.txt").read_text().lower()
    df = pd.read_csv(pad / "metadata.csv")
    assert len(df) == 240 and df["img_id"].is_unique
    counts = df["diagnostic"].value_counts()
    assert set(counts.index) == set(PAD_UFES_TASKS[0].classes) and counts.min() >= 0.05 * 240
    assert counts.idxmax() in ("BCC", "ACK") and counts.idxmin() == "MEL"      # the real skew survives
    ids = df["img_id"].str.extract(r"^PAT_(\d+)_(\d+)_(\d+)\.png$")
    assert ids.notna().all().all()
    assert (("PAT_" + ids[0]) == df["patient_id"]).all() and (ids[1].astype(int) == df["lesion_id"]).all()
    # same parse as the real file: numeric columns numeric, booleans as True/False text
    assert df["age"].dtype == np.int64 and df["lesion_id"].dtype == np.int64
    assert df["fitspatrick"].dtype == np.float64 and df["diameter_1"].dtype == np.float64
    assert df["biopsed"].dtype == bool
    text = (pad / "metadata.csv").read_text()
    assert ",True," in text and ",False," in text and ",UNK," in text and ".0," in text

    found = pad_images(pad)
    assert all(len(found.get(name, [])) == 1 for name in df["img_id"])
    assert all(any((pad / f).glob("*.png")) for f in PAD_IMAGE_FOLDERS)
    modes = []
    for name in df["img_id"][:60]:
        with Image.open(found[name][0]) as im:
            assert im.size == (32, 32)
            modes.append(im.mode)
    assert set(modes) == {"RGB", "RGBA"}


def test_pad_quirks(pad):
    df = pd.read_csv(pad / "metadata.csv")
    block = ["smoke", "drink", "background_father", "background_mother", "pesticide", "gender",
             "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick",
             "diameter_1", "diameter_2"]
    empty = df[block].isna().all(axis=1)
    assert 0.25 <= empty.mean() <= 0.45
    assert set(df.loc[empty, "diagnostic"]) <= {"ACK", "NEV", "SEK"} and not df.loc[empty, "biopsed"].any()
    assert df.loc[df["diagnostic"].isin(["BCC", "SCC", "MEL"]), "biopsed"].all()
    # several images per lesion, identical apart from img_id; lesion ids reused by other patients
    lesions = df.groupby(["patient_id", "lesion_id"])
    assert (lesions.size() > 1).any()
    assert (lesions[[c for c in df.columns if c != "img_id"]].nunique(dropna=False) <= 1).all().all()
    assert (df.drop_duplicates(["patient_id", "lesion_id"]).groupby("lesion_id")["patient_id"].nunique() > 1).any()
    assert (df[["grew", "changed"]] == "UNK").any().any()
    # label-correlated metadata, as in the real data
    age = df.groupby("diagnostic")["age"].mean()
    assert age["NEV"] < age["SCC"] - 10
    # without UNK in the sample pandas parses the column as bool, as it would the real one
    bleed = (df["bleed"].astype(str) == "True").groupby(df["diagnostic"]).mean()
    assert bleed["BCC"] > bleed["NEV"] + 0.2


# ------------------------------------------------------------------------------------------------ ISIC-2019
def test_isic_layout(isic):
    gt_path, meta_path = isic / "ISIC_2019_Training_GroundTruth.csv", isic / "ISIC_2019_Training_Metadata.csv"
    assert header(gt_path) == header(real(ISIC_REAL / gt_path.name))
    assert header(meta_path) == header(real(ISIC_REAL / meta_path.name))
    for path in (gt_path, meta_path):
        raw = path.read_bytes()
        assert raw.endswith(b"\r\n") and raw.count(b"\n") == raw.count(b"\r\n") == 241
    gt, meta = pd.read_csv(gt_path), pd.read_csv(meta_path)
    assert (gt["image"] == meta["image"]).all() and len(gt) == 240
    assert gt["UNK"].eq(0).all() and (gt[list(ISIC_CLASSES)].sum(axis=1) == 1).all()
    assert set(gt[list(ISIC_CLASSES)].idxmax(axis=1)) == set(ISIC_CLASSES)
    assert ",1.0," in gt_path.read_text() and gt["MEL"].dtype == np.float64
    assert gt["image"].str.endswith("_downsampled").any()
    assert meta[["age_approx", "anatom_site_general", "lesion_id", "sex"]].isna().any().all()
    assert (meta["age_approx"].dropna() % 5 == 0).all() and set(meta["sex"].dropna()) == {"female", "male"}
    assert meta["lesion_id"].dropna().str.match(r"^(HAM|BCN|MSK4)_\d{7}$").all()
    for name in gt["image"]:
        assert (isic / "ISIC_2019_Training_Input" / f"{name}.jpg").is_file()
    with Image.open(isic / "ISIC_2019_Training_Input" / f"{gt['image'][0]}.jpg") as im:
        assert im.size == (32, 32) and im.format == "JPEG"
    age = meta.groupby(gt[list(ISIC_CLASSES)].idxmax(axis=1))["age_approx"].mean()
    assert age["NV"] < age["SCC"]


# ------------------------------------------------------------------------------------------------ derm7pt
def test_derm7pt_layout(d7):
    meta_path = d7 / "meta" / "meta.csv"
    assert header(meta_path) == header(real(D7_REAL / "meta.csv"))
    df = pd.read_csv(meta_path)
    assert len(df) == 240 and df["case_num"].tolist() == list(range(1, 241))
    for task in DERM7PT_TASKS:
        col = df[DERM7PT_TASK_COLUMNS[task.name]]
        assert set(col) <= set(task.raw_to_code)
        assert set(col.map(task.raw_to_code)) == set(range(task.num_classes)), task.name
    codes = {t.name: df[DERM7PT_TASK_COLUMNS[t.name]].map(t.raw_to_code) for t in DERM7PT_TASKS[1:]}
    scores = [seven_point_score({k: v[i] for k, v in codes.items()}) for i in range(len(df))]
    assert df["seven_point_score"].tolist() == scores
    diag = df["diagnosis"].map(DERM7PT_TASKS[0].raw_to_code)
    assert (df.loc[diag.isin([0, 2]), "management"] == "excision").all()
    assert set(df["level_of_diagnostic_difficulty"]) <= {"low", "medium", "high"}
    assert set(df["elevation"]) <= {"flat", "palpable", "nodular"}
    assert set(df["location"]) <= {"back", "lower limbs", "abdomen", "upper limbs", "chest", "head neck", "acral",
                                   "buttocks", "genital areas"}
    assert set(df["sex"]) <= {"female", "male"}
    assert set(df["management"]) <= {"excision", "clinical follow up", "no further examination"}
    # only case_id and notes have gaps; notes explain the clinic == derm cases
    assert df.drop(columns=["case_id", "notes"]).notna().all().all()
    same = df["clinic"] == df["derm"]
    assert same.any() and df.loc[same, "notes"].notna().all() and df["notes"].notna().sum() == same.sum()
    assert df["case_id"].notna().mean() > 0.9

    splits = {s: pd.read_csv(d7 / "meta" / f"{s}_indexes.csv") for s in ("train", "valid", "test")}
    assert all(list(s.columns) == ["indexes"] for s in splits.values())
    idx = {k: set(v["indexes"]) for k, v in splits.items()}
    assert not (idx["train"] & idx["valid"] or idx["train"] & idx["test"] or idx["valid"] & idx["test"])
    assert set().union(*idx.values()) == set(range(240))
    assert 0.35 < len(idx["train"]) / 240 < 0.47 and 0.14 < len(idx["valid"]) / 240 < 0.26
    for s in idx.values():   # stratified: every diagnosis in every split
        assert set(diag.iloc[sorted(s)]) == set(range(5))

    paths = pd.concat([df["clinic"], df["derm"]])
    assert all((d7 / "images" / p).is_file() for p in paths)
    assert paths.str.endswith(".JPG").any() and paths.str.endswith(".jpg").any()
    folder, stem = paths.str.split("/").str[0], paths.str.split("/").str[1]
    assert (folder.str.lower() != stem.str[:3].str.lower()).any()
    row = df[~same].iloc[0]
    with Image.open(d7 / "images" / row["clinic"]) as a, Image.open(d7 / "images" / row["derm"]) as b:
        assert a.size[1] <= 48 and b.size[1] <= 32 and 31 <= b.size[0] <= 48    # mostly 3:2 landscape, as released
        assert np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() > 10


# ------------------------------------------------------------------------------------------------ behaviour
def test_determinism(tmp_path):
    for layout, csvs in (("pad_ufes", ["metadata.csv"]), ("derm7pt", ["meta/meta.csv", "meta/test_indexes.csv"]),
                         ("isic2019", ["ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"])):
        a, b, c = (generate(layout, tmp_path / f"{layout}_{k}", n=30, size=24, seed=s, progress=False)
                   for k, s in (("a", 7), ("b", 7), ("c", 8)))
        for name in csvs:
            assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / csvs[0]).read_bytes() != (c / csvs[0]).read_bytes()
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_label_dependence(pad, isic, d7):
    # lesion colour relative to the surrounding skin separates the diagnoses
    df = pd.read_csv(pad / "metadata.csv")
    found = pad_images(pad)
    feats = []
    for name in df["img_id"]:
        a = np.asarray(Image.open(found[name][0]).convert("RGB"), dtype=float) / 255
        centre, border = a[11:21, 11:21].reshape(-1, 3), np.concatenate([a[:4], a[-4:]]).reshape(-1, 3)
        feats.append(np.concatenate([centre.mean(0) - border.mean(0), centre.std(0)]))
    assert ridge_bacc(np.array(feats), df["diagnostic"].to_numpy()) > 0.35      # chance 1/6

    gt = pd.read_csv(isic / "ISIC_2019_Training_GroundTruth.csv")
    X = pixels([isic / "ISIC_2019_Training_Input" / f"{n}.jpg" for n in gt["image"]])
    assert ridge_bacc(X, gt[list(ISIC_CLASSES)].idxmax(axis=1).to_numpy()) > 0.3   # chance 1/8

    # every derm7pt task, diagnosis and the seven criteria, is visible in the dermoscopic image
    meta = pd.read_csv(d7 / "meta" / "meta.csv")
    X = pixels([d7 / "images" / p for p in meta["derm"]])
    for task in DERM7PT_TASKS:
        y = meta[DERM7PT_TASK_COLUMNS[task.name]].map(task.raw_to_code).to_numpy()
        assert ridge_bacc(X, y) > 1 / task.num_classes + 0.12, task.name


def colour_texture(path: Path) -> np.ndarray:
    """Colour mean/std inside the lesion disc and on the surrounding ring, and the edge energy of each, on the
    image resized to a square as the input pipeline does (derm7pt files are landscape)."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=float) / 255
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]] / a.shape[0] * 2 - 1
    r = np.hypot(xx, yy)
    inner, ring = r < 0.45, (r > 0.6) & (r < 0.95)
    gy, gx = np.gradient(a.mean(-1))
    grad = np.hypot(gx, gy)
    return np.concatenate([a[inner].mean(0), a[inner].std(0), a[ring].mean(0), a[ring].std(0),
                           [grad[inner].mean(), grad[ring].mean()]])


def test_derm7pt_images_carry_complementary_cues(tmp_path):
    """Each image alone leaves the diagnosis ambiguous; both together resolve it (held-out official test split).
    The criteria are dermoscopic: the clinical image alone predicts them worse."""
    root = generate("derm7pt", tmp_path / "d7", n=400, size=32, seed=0, progress=False)
    meta = pd.read_csv(root / "meta" / "meta.csv")
    split = {s: pd.read_csv(root / "meta" / f"{s}_indexes.csv")["indexes"].to_numpy()
             for s in ("train", "valid", "test")}
    train, test = np.concatenate([split["train"], split["valid"]]), split["test"]
    feats = {k: np.stack([colour_texture(root / "images" / p) for p in meta[k]]) for k in ("clinic", "derm")}
    feats["both"] = np.hstack([feats["clinic"], feats["derm"]])

    def bac(task, which):
        y = meta[DERM7PT_TASK_COLUMNS[task.name]].map(task.raw_to_code).to_numpy()
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        clf.fit(feats[which][train], y[train])
        return balanced_accuracy_score(y[test], clf.predict(feats[which][test]))

    diag = {k: bac(DERM7PT_TASKS[0], k) for k in ("clinic", "derm", "both")}
    assert diag["both"] > max(diag["clinic"], diag["derm"]) + 0.08, diag
    assert diag["clinic"] > 0.3 and diag["derm"] > 0.3, diag          # each image still informs (chance 0.2)
    for task in DERM7PT_TASKS[1:]:
        if task.name in ("PN", "STR", "VS"):                           # drawn in the dermoscopic image only
            assert bac(task, "derm") > bac(task, "clinic") + 0.1, task.name


def test_difficulty_blurs_the_classes(tmp_path):
    def fisher(X, y):   # between-class over within-class scatter: lower = classes overlap more
        mu = X.mean(0)
        between = sum((y == c).sum() * ((X[y == c].mean(0) - mu) ** 2).sum() for c in np.unique(y))
        within = sum(((X[y == c] - X[y == c].mean(0)) ** 2).sum() for c in np.unique(y))
        return between / within

    scores = []
    for d in (0.0, 1.0):
        root = generate("isic2019", tmp_path / str(d), n=120, size=24, seed=1, difficulty=d, progress=False)
        gt = pd.read_csv(root / "ISIC_2019_Training_GroundTruth.csv")
        X = pixels([root / "ISIC_2019_Training_Input" / f"{n}.jpg" for n in gt["image"]], k=12)
        scores.append(fisher(X, gt[list(ISIC_CLASSES)].idxmax(axis=1).to_numpy()))
    assert scores[0] > 1.1 * scores[1]


# ------------------------------------------------------------------------------------------------ from_csv
def test_from_csv_real_derm7pt(tmp_path):
    src = real(D7_REAL / "meta.csv")
    root = generate("derm7pt", tmp_path / "d7", size=32, from_csv=src, progress=False)
    for name in ("meta.csv", "train_indexes.csv", "valid_indexes.csv", "test_indexes.csv"):
        assert (root / "meta" / name).read_bytes() == (D7_REAL / name).read_bytes()
    df = pd.read_csv(root / "meta" / "meta.csv")
    paths = set(df["clinic"]) | set(df["derm"])
    assert len(paths) == 2013 and all((root / "images" / p).is_file() for p in paths)
    assert sum(1 for p in (root / "images").rglob("*") if p.is_file()) == 2013
    with Image.open(root / "images" / df["clinic"][0]) as im:
        assert 31 <= min(im.size) and max(im.size) <= 48 and im.mode == "RGB"


def test_from_csv_real_pad(tmp_path):
    src = real(PAD_REAL)
    root = generate("pad_ufes", tmp_path / "pad", size=16, from_csv=src, progress=False)
    assert (root / "metadata.csv").read_bytes() == src.read_bytes()
    df = pd.read_csv(src)
    found = pad_images(root)
    assert len(found) == 2298 and all(len(found.get(n, [])) == 1 for n in df["img_id"])
    assert {Image.open(found[n][0]).mode for n in df["img_id"][:40]} == {"RGB", "RGBA"}


def test_from_csv_isic_subset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"):
        lines = real(ISIC_REAL / name).read_bytes().split(b"\r\n")
        (src / name).write_bytes(b"\r\n".join(lines[:81]) + b"\r\n")     # header + 80 rows, CRLF kept
    root = generate("isic2019", tmp_path / "isic", size=16, from_csv=src / "ISIC_2019_Training_GroundTruth.csv",
                    progress=False)
    for name in ("ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"):
        assert (root / name).read_bytes() == (src / name).read_bytes()
    names = pd.read_csv(src / "ISIC_2019_Training_GroundTruth.csv")["image"]
    assert names.str.endswith("_downsampled").any()
    assert all((root / "ISIC_2019_Training_Input" / f"{n}.jpg").is_file() for n in names)
    # images can also be added beside the source files themselves
    generate("isic2019", src, size=16, from_csv=src / "ISIC_2019_Training_GroundTruth.csv", progress=False)
    assert len(list((src / "ISIC_2019_Training_Input").glob("*.jpg"))) == 80


# ------------------------------------------------------------------------------------------------ errors and CLI
def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        generate("ham10000", tmp_path / "x", n=10, progress=False)
    missing = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        generate("pad_ufes", tmp_path / "x", from_csv=missing, progress=False)
    bad = tmp_path / "metadata.csv"
    pd.DataFrame({"img_id": ["PAT_1_1_1.png"], "region": ["ARM"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"metadata\.csv.*diagnostic"):
        generate("pad_ufes", tmp_path / "x", from_csv=bad, progress=False)
    pd.DataFrame({"img_id": ["PAT_1_1_1.png"], "diagnostic": ["XYZ"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="XYZ"):
        generate("pad_ufes", tmp_path / "x", from_csv=bad, progress=False)
    with pytest.raises(ValueError, match="n cannot"):
        generate("pad_ufes", tmp_path / "x", n=10, from_csv=bad, progress=False)
    with pytest.raises(ValueError, match="too small"):
        generate("isic2019", tmp_path / "x", n=5, progress=False)
    with pytest.raises(ValueError, match="difficulty"):
        generate("derm7pt", tmp_path / "x", n=10, difficulty=1.5, progress=False)


def test_cli(tmp_path, capsys):
    out = tmp_path / "isic"
    assert main(["--layout", "isic2019", "--out", str(out), "--n", "20", "--size", "16", "--seed", "3",
                 "--difficulty", "0.2", "--no-progress"]) == 0
    assert len(list((out / "ISIC_2019_Training_Input").glob("*.jpg"))) == 20
    assert main(["--layout", "nope", "--out", str(tmp_path / "y"), "--no-progress"]) == 2
    assert "layout" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    out = tmp_path / "pad"
    proc = python("-m", "skinlesion.data.synthetic", "--layout", "pad_ufes", "--out", out, "--n", "30", "--size", "16",
                  "--seed", "0", "--no-progress", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and len(pd.read_csv(out / "metadata.csv")) == 30
