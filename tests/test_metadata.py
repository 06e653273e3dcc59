"""Metadata vectorizers on the real official CSVs."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinlesion.data.metadata import (
    DEFAULT_META, FORBIDDEN_FEATURES, META_VARIANTS, MetadataVectorizer, UnseenCategoryWarning, build_vectorizer,
    meta_dim,
)
from skinlesion.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAD_CSV = DATA / "pad_ufes_20" / "metadata.csv"
ISIC_CSV = DATA / "isic_2019" / "ISIC_2019_Training_Metadata.csv"
DERM_CSV = DATA / "derm7pt" / "meta" / "meta.csv"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real dataset CSVs not found at {DATA}")

PAD_PATIENT_FIELDS = ("smoke", "drink", "background_father", "background_mother", "pesticide", "gender",
                      "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system",
                      "fitspatrick")


@pytest.fixture(scope="module")
def pad():
    return pd.read_csv(PAD_CSV)


@pytest.fixture(scope="module")
def isic():
    return pd.read_csv(ISIC_CSV)


@pytest.fixture(scope="module")
def derm():
    return pd.read_csv(DERM_CSV)


def row(enc: MetadataVectorizer, x: np.ndarray, i: int) -> dict[str, float]:
    return dict(zip(enc.columns, x[i].tolist()))


def block(enc: MetadataVectorizer, x: np.ndarray, field: str) -> np.ndarray:
    idx = [j for j, c in enumerate(enc.columns) if c.startswith(field + "=")]
    assert idx, field
    return x[:, idx]


# ---------------------------------------------------------------------------------------------- widths / API
def test_widths_known_without_data():
    assert meta_dim("pad_ufes") == 81
    assert meta_dim("pad_ufes", "m45") == 45
    assert meta_dim("isic2019") == 11
    assert meta_dim("derm7pt") == 20
    assert meta_dim("derm7pt", "m14") == 59
    assert meta_dim("derm7pt", "m20", clean=True) == 14
    assert meta_dim("derm7pt", "m14", clean=True) == 53
    for ds, variant in DEFAULT_META.items():
        assert variant in META_VARIANTS[ds]
        assert build_vectorizer(ds).dim == meta_dim(ds, variant)


def test_unknown_dataset_and_variant_list_choices():
    with pytest.raises(ConfigError, match="pad_ufes"):
        build_vectorizer("ham10000")
    with pytest.raises(ConfigError, match="m81.*m45"):
        build_vectorizer("pad_ufes", "m99")
    with pytest.raises(ConfigError, match="m20.*m14"):
        meta_dim("derm7pt", "m81")
    with pytest.raises(ConfigError, match="derm7pt"):
        build_vectorizer("pad_ufes", clean=True)


def test_pad_m81_frozen_column_order():
    cols = build_vectorizer("pad_ufes").columns
    assert len(cols) == len(set(cols)) == 81
    assert cols[:4] == ["smoke=False", "smoke=True", "drink=False", "drink=True"]
    assert cols[4] == "background_father=POMERANIA"
    # BRASIL and BRAZIL are separate categories (reference width)
    assert {"background_father=BRASIL", "background_father=BRAZIL"} <= set(cols)
    assert cols[28] == "age"
    assert cols[cols.index("skin_cancer_history=True") + 1] == "skin_cancer_history=False"
    assert cols[cols.index("fitspatrick=3"):cols.index("fitspatrick=3") + 6] == [
        "fitspatrick=3", "fitspatrick=1", "fitspatrick=2", "fitspatrick=4", "fitspatrick=5", "fitspatrick=6"]
    assert cols[61:63] == ["diameter_1", "diameter_2"]
    assert cols[-3:] == ["elevation=False", "elevation=True", "elevation=UNK"]


def test_pad_m45_columns():
    m45 = build_vectorizer("pad_ufes", "m45").columns
    m81 = build_vectorizer("pad_ufes").columns
    assert len(m45) == 45 and m45[0] == "age" and m45[1:3] == ["gender=FEMALE", "gender=MALE"]
    assert set(m45) < set(m81)
    assert not any(c.startswith(("smoke", "drink", "background", "pesticide", "has_", "diameter")) for c in m45)


# ---------------------------------------------------------------------------------------------- PAD real CSV
@needs_data
def test_pad_m81_real_rows(pad):
    enc = build_vectorizer("pad_ufes")
    x = enc.transform(pad)
    assert x.shape == (2298, 81) and x.dtype == np.float32
    assert pad.loc[1, "patient_id"] == "PAT_46"
    r = row(enc, x, 1)
    assert r["smoke=False"] == 1 and r["smoke=True"] == 0
    assert r["drink=False"] == 1
    assert r["background_father=POMERANIA"] == 1 and r["background_mother=POMERANIA"] == 1
    assert r["age"] == 55
    assert r["gender=FEMALE"] == 1 and r["gender=MALE"] == 0
    assert r["skin_cancer_history=True"] == 1 and r["cancer_history=True"] == 1
    assert r["fitspatrick=3"] == 1 and sum(v for k, v in r.items() if k.startswith("fitspatrick=")) == 1
    assert r["region=NECK"] == 1
    assert (r["diameter_1"], r["diameter_2"]) == (6.0, 5.0)
    assert r["itch=True"] == 1 and r["hurt=False"] == 1 and r["elevation=True"] == 1
    # 18 one-hot fields, all observed, + age 55 + diameters 6 and 5
    assert x[1].sum() == pytest.approx(18 + 55 + 6 + 5)


@needs_data
def test_pad_all_missing_patient_row_gives_zero_blocks(pad):
    enc = build_vectorizer("pad_ufes")
    x = enc.transform(pad)
    assert pad.loc[0, "patient_id"] == "PAT_1516" and pd.isna(pad.loc[0, "smoke"])
    r = row(enc, x, 0)
    for field in PAD_PATIENT_FIELDS:
        assert block(enc, x, field)[0].sum() == 0, field
    assert (r["diameter_1"], r["diameter_2"]) == (0.0, 0.0)
    assert r["age"] == 8 and r["region=ARM"] == 1 and r["itch=False"] == 1
    # the 804 block-missing rows all have an all-zero smoke block
    assert int((block(enc, x, "smoke").sum(1) == 0).sum()) == 804


@needs_data
def test_pad_one_hot_blocks_and_unk(pad):
    enc = build_vectorizer("pad_ufes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenCategoryWarning)  # the frozen vocab covers every real value
        x = enc.transform(pad)
    for f in enc.fields:
        if not f.numeric:
            b = block(enc, x, f.name)
            assert set(np.unique(b.sum(1))) <= {0.0, 1.0}, f.name
            assert (b.sum(1) == 1).sum() == pad[f.name].notna().sum(), f.name
    assert block(enc, x, "grew")[:, 2].sum() == 402  # grew=UNK
    assert block(enc, x, "background_father")[:, 8].sum() == 3  # BRASIL
    assert block(enc, x, "background_father")[:, 2].sum() == 89  # BRAZIL


@needs_data
def test_pad_m45_matches_m81_columns(pad):
    e81, e45 = build_vectorizer("pad_ufes", "m81"), build_vectorizer("pad_ufes", "m45")
    x81, x45 = e81.transform(pad), e45.transform(pad)
    assert x45.shape == (2298, 45)
    idx = [e81.columns.index(c) for c in e45.columns]
    np.testing.assert_array_equal(x45, x81[:, idx])


@needs_data
def test_pad_encoding_independent_of_parsed_dtypes(pad):
    # the same file read as all-text (fitspatrick "3.0", booleans "False") must encode identically
    as_text = pd.read_csv(PAD_CSV, dtype=str)
    enc = build_vectorizer("pad_ufes")
    np.testing.assert_array_equal(enc.transform(as_text), enc.transform(pad))
    # and a slice without missing values (bool / int dtypes) too
    full = pad[pad["smoke"].notna()].copy()
    full["smoke"] = full["smoke"].astype(bool)
    full["fitspatrick"] = full["fitspatrick"].astype(int)
    np.testing.assert_array_equal(enc.transform(full), enc.transform(pad[pad["smoke"].notna()]))


# ---------------------------------------------------------------------------------------------- unseen values
@needs_data
def test_unseen_category_zero_block_one_warning_per_column(pad):
    enc = build_vectorizer("pad_ufes")
    df = pad.iloc[:40].copy()
    df.loc[df.index[[2, 5, 7]], "region"] = ["MOON", "MOON", "MARS"]
    df.loc[df.index[3], "gender"] = "OTHER"
    df.loc[df.index[4], "gender"] = "OTHER"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        x = enc.transform(df)
    unseen = [w for w in rec if issubclass(w.category, UnseenCategoryWarning)]
    assert len(unseen) == 2
    msgs = sorted(str(w.message) for w in unseen)
    gender_msg, region_msg = msgs
    assert "'gender'" in gender_msg and "OTHER" in gender_msg and "2 row(s)" in gender_msg
    assert "'region'" in region_msg and "MOON" in region_msg and "MARS" in region_msg and "3 row(s)" in region_msg
    assert block(enc, x, "region")[[2, 5, 7]].sum() == 0
    assert block(enc, x, "gender")[[3, 4]].sum() == 0
    # untouched rows and columns are unchanged
    ref = enc.transform(pad.iloc[:40])
    keep = [i for i in range(40) if i not in (2, 3, 4, 5, 7)]
    np.testing.assert_array_equal(x[keep], ref[keep])


@needs_data
def test_unseen_warning_is_per_call(pad):
    enc = build_vectorizer("pad_ufes", "m45")
    df = pad.iloc[:5].copy()
    df["region"] = "MOON"
    with pytest.warns(UnseenCategoryWarning) as rec:
        enc.transform(df)
        enc.transform(df)
    assert len(rec) == 2


# ---------------------------------------------------------------------------------------------- errors
@needs_data
def test_forbidden_field_raises(pad):
    assert "biopsed" in FORBIDDEN_FEATURES["pad_ufes"]
    with pytest.raises(ConfigError, match=r"biopsed.*label proxy.*never be a feature"):
        build_vectorizer("pad_ufes", "custom", fields=["age", "biopsed"])
    with pytest.raises(ConfigError, match="diagnostic"):
        build_vectorizer("pad_ufes", "custom", fields=["diagnostic"])
    with pytest.raises(ConfigError, match="diagnosis"):
        build_vectorizer("derm7pt", "custom", fields=["sex", "diagnosis"])
    with pytest.raises(ConfigError, match="unknown metadata field"):
        build_vectorizer("pad_ufes", "custom", fields=["shoe_size"])


@needs_data
def test_missing_column_names_column_and_file(pad):
    df = pad.drop(columns=["region"])
    with pytest.raises(DataError, match=r"metadata\.csv, line 1 \(header\): missing column\(s\) \['region'\]"):
        build_vectorizer("pad_ufes").transform(df)
    with pytest.raises(DataError, match=r"my_meta\.csv.*region"):
        build_vectorizer("pad_ufes", "m45", source="my_meta.csv").fit(df)


@needs_data
def test_non_numeric_value_in_numeric_column(pad):
    df = pad.iloc[:3].copy()
    df["age"] = ["55", "old", "60"]
    with pytest.raises(DataError, match=r"line 3, column 'age': expected a number or an empty cell, got 'old'"):
        build_vectorizer("pad_ufes").transform(df)


# ---------------------------------------------------------------------------------------------- custom / scaling
@needs_data
def test_custom_fields_learn_vocab_from_training_rows(pad):
    enc = build_vectorizer("pad_ufes", "custom", fields=["region", "age", "gender"])
    with pytest.raises(RuntimeError, match="fit"):
        _ = enc.columns
    train = pad[pad["region"].isin(["FACE", "NOSE", "ARM"])]
    enc.fit(train)
    # vocabularies in first-appearance order over the training rows; missing gender is not a category
    region_seen = list(dict.fromkeys(train["region"]))
    gender_seen = [g for g in dict.fromkeys(train["gender"]) if isinstance(g, str)]
    assert len(region_seen) == 3 and sorted(gender_seen) == ["FEMALE", "MALE"]
    assert enc.columns == ([f"region={r}" for r in region_seen] + ["age"]
                           + [f"gender={g}" for g in gender_seen])
    assert enc.dim == 3 + 1 + 2
    with pytest.warns(UnseenCategoryWarning, match="region") as rec:
        x = enc.transform(pad)
    assert len(rec) == 1
    unseen_rows = ~pad["region"].isin(["FACE", "NOSE", "ARM"]).to_numpy()
    assert x[unseen_rows, :3].sum() == 0
    assert (x[~unseen_rows, :3].sum(1) == 1).all()
    np.testing.assert_array_equal(x[:, 3], pad["age"].to_numpy(dtype=np.float32))


def test_custom_requires_fields_and_fields_require_custom():
    with pytest.raises(ConfigError, match="fields"):
        build_vectorizer("pad_ufes", "custom")
    with pytest.raises(ConfigError, match="custom"):
        build_vectorizer("pad_ufes", "m81", fields=["age"])
    with pytest.raises(ConfigError, match="custom"):
        meta_dim("pad_ufes", "custom")


@needs_data
def test_scale_numeric_uses_training_rows_only(pad):
    train, test = pad.iloc[:1500], pad.iloc[1500:]
    enc = build_vectorizer("pad_ufes", scale_numeric=True)
    with pytest.raises(RuntimeError, match="fit"):
        enc.transform(train)
    enc.fit(train)
    raw = build_vectorizer("pad_ufes")
    num = [enc.columns.index(c) for c in ("age", "diameter_1", "diameter_2")]
    cat = [j for j in range(81) if j not in num]
    xt = enc.transform(train)
    np.testing.assert_allclose(xt[:, num].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(xt[:, num].std(0), 1, atol=1e-4)
    np.testing.assert_array_equal(xt[:, cat], raw.transform(train)[:, cat])
    # test rows are scaled with the training statistics, not their own
    r_train, r_test = raw.transform(train), raw.transform(test)
    mu, sd = r_train[:, num].astype(np.float64).mean(0), r_train[:, num].astype(np.float64).std(0)
    np.testing.assert_allclose(enc.transform(test)[:, num], (r_test[:, num] - mu) / sd, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- ISIC
@needs_data
def test_isic11(isic):
    enc = build_vectorizer("isic2019")
    assert enc.columns == ["age_approx", "sex=female", "sex=male", "anatom_site_general=anterior torso",
                           "anatom_site_general=head/neck", "anatom_site_general=lateral torso",
                           "anatom_site_general=lower extremity", "anatom_site_general=oral/genital",
                           "anatom_site_general=palms/soles", "anatom_site_general=posterior torso",
                           "anatom_site_general=upper extremity"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenCategoryWarning)
        x = enc.transform(isic)
    assert x.shape == (25331, 11) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], [55, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0])  # ISIC_0000000
    # ISIC_0000458: sex and age missing, site anterior torso
    i = int(np.flatnonzero(isic["image"].to_numpy() == "ISIC_0000458")[0])
    assert pd.isna(isic.loc[i, "sex"]) and pd.isna(isic.loc[i, "age_approx"])
    np.testing.assert_array_equal(x[i], [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    # ISIC_0000358: site missing, male, 30
    j = int(np.flatnonzero(isic["image"].to_numpy() == "ISIC_0000358")[0])
    np.testing.assert_array_equal(x[j], [30, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    assert int((x[:, 1:3].sum(1) == 0).sum()) == isic["sex"].isna().sum() == 384
    assert int((x[:, 3:].sum(1) == 0).sum()) == isic["anatom_site_general"].isna().sum() == 2631
    assert int((x[:, 0] == 0).sum()) >= 437


# ---------------------------------------------------------------------------------------------- derm7pt
@needs_data
@pytest.mark.parametrize("variant,clean,width,ones", [
    ("m20", False, 20, 5), ("m20", True, 14, 3), ("m14", False, 59, 13), ("m14", True, 53, 11)])
def test_derm7pt_variants(derm, variant, clean, width, ones):
    enc = build_vectorizer("derm7pt", variant, clean=clean)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenCategoryWarning)
        x = enc.transform(derm)
    assert x.shape == (1011, width) and enc.dim == width == meta_dim("derm7pt", variant, clean)
    assert (x.sum(1) == ones).all()
    assert set(np.unique(x)) == {0.0, 1.0}
    if clean:
        assert not any(c.startswith(("management", "level_of_diagnostic_difficulty")) for c in enc.columns)


@needs_data
def test_derm7pt_fixed_orders_and_first_row(derm):
    e20, e14 = build_vectorizer("derm7pt"), build_vectorizer("derm7pt", "m14")
    assert e20.columns[:3] == ["level_of_diagnostic_difficulty=low", "level_of_diagnostic_difficulty=medium",
                               "level_of_diagnostic_difficulty=high"]
    assert e20.columns[-3:] == ["management=excision", "management=clinical follow up",
                                "management=no further examination"]
    assert e14.columns[28:39] == [f"seven_point_score={i}" for i in range(11)]
    assert e14.columns[39:] == e20.columns
    x20, x14 = e20.transform(derm), e14.transform(derm)
    r = derm.iloc[0]
    on20 = {c for c, v in zip(e20.columns, x20[0]) if v}
    assert on20 == {f"level_of_diagnostic_difficulty={r['level_of_diagnostic_difficulty']}",
                    f"elevation={r['elevation']}", f"location={r['location']}", f"sex={r['sex']}",
                    f"management={r['management']}"}
    on14 = {c for c, v in zip(e14.columns, x14[0]) if v}
    assert f"vascular_structures={r['vascular_structures']}" in on14
    assert f"seven_point_score={r['seven_point_score']}" in on14
    # raw criteria strings are kept apart (not merged into task classes)
    pig = block(e14, x14, "pigmentation")
    assert pig.shape[1] == 5 and (pig.sum(0) > 0).all()


@needs_data
def test_derm7pt_m20_rows_are_the_published_one_hot_blocks(derm):
    """m20 of real rows, written out from the published category orders: difficulty [low, medium, high],
    elevation [flat, palpable, nodular], location [back, lower limbs, abdomen, upper limbs, chest, head neck, acral,
    buttocks, genital areas], sex [female, male], management [excision, clinical follow up, no further
    examination]. A permuted block or category fails here (the stage-2 features and M read these columns)."""
    x = build_vectorizer("derm7pt").transform(derm)
    expected = {   # row 0: medium | nodular | abdomen | female | excision
        0: [0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0],
        # row 1: low | palpable | head neck | female | excision
        1: [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0],
        # row 500: low | nodular | back | female | no further examination
        500: [1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
    }
    for row, vector in expected.items():
        assert x[row].tolist() == vector, row
