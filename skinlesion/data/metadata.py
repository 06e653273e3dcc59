"""Metadata vectorizers: raw official CSV columns -> float32 feature matrix.

A :class:`MetadataVectorizer` turns CSV rows into the vectors a model's metadata encoder reads. It is a list of
fields, each either *numeric* (one output column, missing -> 0) or *categorical*
(one-hot over a vocabulary; a missing value gives an all-zero block). The fixed variants freeze their column
lists as constants, so the width never depends on which values a fold happens to contain.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from numbers import Number

import numpy as np
import pandas as pd

from skinlesion.errors import ConfigError, DataError


class UnseenCategoryWarning(UserWarning):
    """A categorical value outside the vectorizer's vocabulary was encoded as an all-zero block."""


@dataclass(frozen=True)
class Field:
    name: str
    vocab: tuple[str, ...] | None = None  # None = numeric

    @property
    def numeric(self) -> bool:
        return self.vocab is None

    @property
    def columns(self) -> list[str]:
        if self.vocab is None:
            return [self.name]
        return [f"{self.name}={v}" for v in self.vocab]


# ---------------------------------------------------------------------------------------------- PAD-UFES-20
_FT = ("False", "True")
_TF = ("True", "False")
_FTU = ("False", "True", "UNK")
_PAD_VOCAB: dict[str, tuple[str, ...] | None] = {
    "smoke": _FT,
    "drink": _FT,
    # first appearance in the CSV; BRASIL and BRAZIL stay apart to reproduce the reference width
    "background_father": ("POMERANIA", "GERMANY", "BRAZIL", "NETHERLANDS", "ITALY", "POLAND", "UNK", "PORTUGAL",
                          "BRASIL", "CZECH", "AUSTRIA", "SPAIN", "ISRAEL"),
    "background_mother": ("POMERANIA", "ITALY", "GERMANY", "BRAZIL", "UNK", "POLAND", "NORWAY", "PORTUGAL",
                          "NETHERLANDS", "FRANCE", "SPAIN"),
    "age": None,
    "pesticide": _FT,
    "gender": ("FEMALE", "MALE"),
    "skin_cancer_history": _TF,
    "cancer_history": _TF,
    "has_piped_water": _TF,
    "has_sewage_system": _TF,
    "fitspatrick": ("3", "1", "2", "4", "5", "6"),
    "region": ("ARM", "NECK", "FACE", "HAND", "FOREARM", "CHEST", "NOSE", "THIGH", "SCALP", "EAR", "BACK", "FOOT",
               "ABDOMEN", "LIP"),
    "diameter_1": None,
    "diameter_2": None,
    "itch": _FTU,
    "grew": _FTU,
    "hurt": _FTU,
    "changed": _FTU,
    "bleed": _FTU,
    "elevation": _FTU,
}
_PAD_SYMPTOMS = ("itch", "grew", "hurt", "changed", "bleed", "elevation")
PAD_M81_FIELDS = tuple(Field(n, v) for n, v in _PAD_VOCAB.items())
PAD_M45_FIELDS = tuple(Field(n, _PAD_VOCAB[n]) for n in (
    "age", "gender", "skin_cancer_history", "cancer_history", "fitspatrick", "region", *_PAD_SYMPTOMS))
PAD_NUMERIC = ("age", "diameter_1", "diameter_2")

# ---------------------------------------------------------------------------------------------- ISIC-2019
ISIC11_FIELDS = (
    Field("age_approx"),
    Field("sex", ("female", "male")),
    Field("anatom_site_general", ("anterior torso", "head/neck", "lateral torso", "lower extremity", "oral/genital",
                                  "palms/soles", "posterior torso", "upper extremity")),
)
ISIC_NUMERIC = ("age_approx",)

# ---------------------------------------------------------------------------------------------- derm7pt
_DERM_DIFFICULTY = Field("level_of_diagnostic_difficulty", ("low", "medium", "high"))
_DERM_MANAGEMENT = Field("management", ("excision", "clinical follow up", "no further examination"))
_DERM_ELEVATION = Field("elevation", ("flat", "palpable", "nodular"))
_DERM_LOCATION = Field("location", ("back", "lower limbs", "abdomen", "upper limbs", "chest", "head neck", "acral",
                                    "buttocks", "genital areas"))
_DERM_SEX = Field("sex", ("female", "male"))
DERM_M20_FIELDS = (_DERM_DIFFICULTY, _DERM_ELEVATION, _DERM_LOCATION, _DERM_SEX, _DERM_MANAGEMENT)
# the seven criteria over their raw CSV strings (not the merged task classes)
DERM_CRITERIA_FIELDS = (
    Field("pigment_network", ("absent", "typical", "atypical")),
    Field("streaks", ("absent", "regular", "irregular")),
    Field("pigmentation", ("absent", "diffuse regular", "localized regular", "diffuse irregular",
                           "localized irregular")),
    Field("regression_structures", ("absent", "blue areas", "white areas", "combinations")),
    Field("dots_and_globules", ("absent", "regular", "irregular")),
    Field("blue_whitish_veil", ("absent", "present")),
    Field("vascular_structures", ("absent", "arborizing", "comma", "hairpin", "within regression", "wreath",
                                  "dotted", "linear irregular")),
)
DERM_M14_FIELDS = (*DERM_CRITERIA_FIELDS, Field("seven_point_score", tuple(str(i) for i in range(11))),
                   *DERM_M20_FIELDS)
_DERM_CLEAN_DROP = ("management", "level_of_diagnostic_difficulty")

# ---------------------------------------------------------------------------------------------- registry
META_VARIANTS = {"pad_ufes": ("m81", "m45"), "isic2019": ("isic11",), "derm7pt": ("m20", "m14")}
DEFAULT_META = {"pad_ufes": "m81", "isic2019": "isic11", "derm7pt": "m20"}
CUSTOM = "custom"

_FIXED_FIELDS = {
    ("pad_ufes", "m81"): PAD_M81_FIELDS,
    ("pad_ufes", "m45"): PAD_M45_FIELDS,
    ("isic2019", "isic11"): ISIC11_FIELDS,
    ("derm7pt", "m20"): DERM_M20_FIELDS,
    ("derm7pt", "m14"): DERM_M14_FIELDS,
}
# fields a custom field list may use, and which of them are numeric
ALLOWED_FIELDS = {
    "pad_ufes": tuple(_PAD_VOCAB),
    "isic2019": ("age_approx", "anatom_site_general", "sex"),
    "derm7pt": tuple(f.name for f in DERM_M14_FIELDS),
}
NUMERIC_FIELDS = {"pad_ufes": PAD_NUMERIC, "isic2019": ISIC_NUMERIC, "derm7pt": ()}
DEFAULT_SOURCE = {"pad_ufes": "metadata.csv", "isic2019": "ISIC_2019_Training_Metadata.csv",
                  "derm7pt": "meta/meta.csv"}

_ISIC_LABELS = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
# Why each one is banned: labels, label proxies and identifiers would leak the target or memorise cases.
_FORBIDDEN_REASONS = {
    "pad_ufes": {
        "biopsed": "a label proxy (True for every BCC, SCC and MEL)",
        "diagnostic": "the label",
        "img_id": "an identifier",
        "patient_id": "an identifier",
        "lesion_id": "an identifier",
    },
    "isic2019": {"image": "an identifier", "lesion_id": "an identifier",
                 **{c: "a label column" for c in _ISIC_LABELS}},
    "derm7pt": {
        "diagnosis": "the label",
        "case_num": "an identifier",
        "case_id": "an identifier",
        "clinic": "an image path",
        "derm": "an image path",
        "notes": "free text that describes the case",
    },
}
FORBIDDEN_FEATURES = {ds: set(reasons) for ds, reasons in _FORBIDDEN_REASONS.items()}

_EXPECTED_WIDTH = {("pad_ufes", "m81"): 81, ("pad_ufes", "m45"): 45, ("isic2019", "isic11"): 11,
                   ("derm7pt", "m20"): 20, ("derm7pt", "m14"): 59}
for _key, _fields in _FIXED_FIELDS.items():
    _width = sum(len(f.columns) for f in _fields)
    # explicit raise rather than assert so the check survives `python -O`
    if _width != _EXPECTED_WIDTH[_key]:
        raise RuntimeError(f"metadata variant {_key} has width {_width}, expected {_EXPECTED_WIDTH[_key]}")


# ---------------------------------------------------------------------------------------------- encoding
def _norm_value(v) -> str | None:
    """One raw cell -> canonical category string, or None when missing.

    pandas parses the same CSV field as bool, 'True' string, float 3.0 or int 3 depending on which other rows
    are empty, so every form is mapped to one spelling.
    """
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, Number):
        f = float(v)
        if math.isnan(f):
            return None
        return str(int(f)) if f.is_integer() else repr(f)
    s = str(v).strip()
    if s == "" or s.lower() == "nan":
        return None
    try:  # "3.0" (a float column saved as text) must still match category "3"
        f = float(s)
    except ValueError:
        return s
    if s.lower() in ("inf", "-inf", "infinity", "-infinity"):
        return s
    return str(int(f)) if f.is_integer() else s


def _csv_line(df: pd.DataFrame, i: int) -> int | str:
    """CSV line of row position ``i``: frames read from a CSV keep its row numbers as index (header = line 1)."""
    label = df.index[i]
    return int(label) + 2 if isinstance(label, (int, np.integer)) else f"? (row {label!r})"


def _normalise(series: pd.Series) -> list[str | None]:
    return [_norm_value(v) for v in series.tolist()]


def _check_dataset(dataset: str) -> None:
    if dataset not in META_VARIANTS:
        raise ConfigError(f"unknown dataset '{dataset}'; expected one of {sorted(META_VARIANTS)}")


def _check_forbidden(dataset: str, names) -> None:
    reasons = _FORBIDDEN_REASONS[dataset]
    for name in names:
        if name in reasons:
            raise ConfigError(f"metadata field '{name}' is {reasons[name]} and must never be a feature "
                             f"(dataset '{dataset}')")


class MetadataVectorizer:
    """Turn the metadata columns of one dataset's CSV rows into a float32 matrix.

    ``fit`` learns only what must be learned from training rows: the numeric mean/std when
    ``scale_numeric=True``, and the vocabularies of a custom field list. Fixed variants need no fit unless
    scaling is requested.
    """

    def __init__(self, dataset: str, variant: str, fields: tuple[Field, ...], *, scale_numeric: bool = False,
                 source: str = "metadata.csv", learn_vocab: bool = False):
        self.dataset = dataset
        self.variant = variant
        self.source = source
        self.scale_numeric = scale_numeric
        self._fields = tuple(fields)
        self._learn_vocab = learn_vocab
        self._fitted = False
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None
        self._empty_in_fit: dict[str, int] | None = None   # per field, the training rows with an empty cell

    # -- shape ---------------------------------------------------------------------------------------------
    @property
    def fields(self) -> tuple[Field, ...]:
        self._require_vocab()
        return self._fields

    @property
    def columns(self) -> list[str]:
        self._require_vocab()
        return [c for f in self._fields for c in f.columns]

    @property
    def dim(self) -> int:
        return len(self.columns)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self._fields]

    def _require_vocab(self) -> None:
        if self._learn_vocab and not self._fitted:
            raise RuntimeError(f"the '{self.variant}' {self.dataset} metadata vectorizer learns its categories in "
                               f"fit(); call fit(df_train) before using its columns or transform()")

    def __repr__(self) -> str:
        dim = self.dim if (self._fitted or not self._learn_vocab) else "?"
        return (f"MetadataVectorizer(dataset={self.dataset!r}, variant={self.variant!r}, dim={dim}, "
                f"scale_numeric={self.scale_numeric})")

    # -- fit / transform -----------------------------------------------------------------------------------
    def _check_columns(self, df: pd.DataFrame) -> None:
        missing = [f.name for f in self._fields if f.name not in df.columns]
        if missing:
            raise DataError(f"{self.source}, line 1 (header): missing column(s) {missing} read by the "
                            f"{self.dataset} '{self.variant}' metadata; expected a header with "
                            f"{self.field_names}")

    def check(self, df: pd.DataFrame) -> None:
        """Fail on the first problem in ``df`` (a missing column, a non-numeric value in a numeric column),
        naming the file, CSV line and column; rows keep the CSV's index, so line = index + 2."""
        self._check_columns(df)
        for f in self._fields:
            if f.numeric:
                self._numeric_values(df, f.name)

    def fit(self, df_train: pd.DataFrame) -> "MetadataVectorizer":
        self._check_columns(df_train)
        if self._learn_vocab:
            learned = []
            for f in self._fields:
                if f.numeric:
                    learned.append(f)
                    continue
                # first appearance in the training rows; missing values are not a category
                vocab = tuple(dict.fromkeys(v for v in _normalise(df_train[f.name]) if v is not None))
                learned.append(Field(f.name, vocab))
            self._fields = tuple(learned)
        self._fitted = True
        # which fields the model saw empty while training (an empty cell there is an input it learned, not a gap)
        self._empty_in_fit = {f.name: sum(v is None for v in _normalise(df_train[f.name])) for f in self._fields}
        if self.scale_numeric:
            num = self._numeric_block(df_train)
            self._mean = num.mean(axis=0) if len(num) else np.zeros(num.shape[1])
            std = num.std(axis=0) if len(num) else np.ones(num.shape[1])
            # a constant column would divide by zero; leave it centred only
            self._std = np.where(std > 0, std, 1.0)
        return self

    def _numeric_values(self, df: pd.DataFrame, name: str) -> np.ndarray:
        raw = df[name]
        vals = pd.to_numeric(raw, errors="coerce")
        bad = (vals.isna() & ~raw.isna()) | np.isinf(vals)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{self.source}, line {_csv_line(df, i)}, column '{name}': expected a number or an "
                            f"empty cell, got {raw.iloc[i]!r} ({int(bad.sum())} row(s) affected)")
        # missing numeric values become 0 (faithful to the reference encoding; no imputation)
        return vals.fillna(0).to_numpy(dtype=np.float64)

    def _numeric_block(self, df: pd.DataFrame) -> np.ndarray:
        cols = [self._numeric_values(df, f.name) for f in self._fields if f.numeric]
        if not cols:
            return np.zeros((len(df), 0))
        return np.stack(cols, axis=1)

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        self._require_vocab()
        if self.scale_numeric and self._mean is None:
            raise RuntimeError("scale_numeric=True: call fit(df_train) before transform()")
        self._check_columns(df)
        n = len(df)
        out = np.zeros((n, self.dim), dtype=np.float32)
        num_k = 0
        col = 0
        for f in self._fields:
            if f.numeric:
                v = self._numeric_values(df, f.name)
                if self.scale_numeric:
                    v = (v - self._mean[num_k]) / self._std[num_k]
                out[:, col] = v
                num_k += 1
                col += 1
                continue
            index = {v: i for i, v in enumerate(f.vocab)}
            unseen: dict[str, int] = {}
            for r, v in enumerate(_normalise(df[f.name])):
                if v is None:
                    continue
                i = index.get(v)
                if i is None:
                    unseen[v] = unseen.get(v, 0) + 1
                else:
                    out[r, col + i] = 1.0
            if unseen:
                # one warning per column per call, so a new value in a test fold is visible but not noisy
                warnings.warn(
                    f"{self.dataset} metadata ({self.variant}): column '{f.name}' in {self.source} has "
                    f"{sum(unseen.values())} row(s) with value(s) outside its vocabulary "
                    f"{sorted(unseen)}; encoded as an all-zero block", UnseenCategoryWarning, stacklevel=2)
            col += len(f.vocab)
        return out

    def fit_transform(self, df_train: pd.DataFrame) -> np.ndarray:
        return self.fit(df_train).transform(df_train)

    # -- saved state ---------------------------------------------------------------------------------------
    @property
    def empty_in_fit(self) -> dict[str, int] | None:
        """Per field, how many training rows had an empty cell (None before ``fit``)."""
        return None if self._empty_in_fit is None else dict(self._empty_in_fit)

    def state_dict(self) -> dict:
        """Everything :meth:`from_state` needs to transform rows exactly as this (fitted) vectorizer does, as plain
        Python values (a checkpoint loads it with ``torch.load(..., weights_only=True)``)."""
        return {"dataset": self.dataset, "variant": self.variant, "source": self.source,
                "scale_numeric": self.scale_numeric, "learn_vocab": self._learn_vocab, "fitted": self._fitted,
                "fields": [{"name": f.name, "vocab": None if f.vocab is None else list(f.vocab)} for f in self._fields],
                "mean": None if self._mean is None else [float(v) for v in self._mean],
                "std": None if self._std is None else [float(v) for v in self._std],
                "empty_in_fit": self.empty_in_fit}

    @classmethod
    def from_state(cls, state: dict) -> "MetadataVectorizer":
        """The vectorizer saved by :meth:`state_dict`, fitted state included (nothing is refitted)."""
        fields = tuple(Field(f["name"], None if f["vocab"] is None else tuple(f["vocab"])) for f in state["fields"])
        vec = cls(state["dataset"], state["variant"], fields, scale_numeric=state["scale_numeric"],
                  source=state["source"], learn_vocab=state["learn_vocab"])
        vec._fitted = bool(state["fitted"])
        vec._mean = None if state["mean"] is None else np.asarray(state["mean"], dtype=np.float64)
        vec._std = None if state["std"] is None else np.asarray(state["std"], dtype=np.float64)
        vec._empty_in_fit = None if state.get("empty_in_fit") is None else dict(state["empty_in_fit"])
        return vec


# ---------------------------------------------------------------------------------------------- factories
def _resolve(dataset: str, variant: str | None, clean: bool) -> tuple[str, tuple[Field, ...]]:
    _check_dataset(dataset)
    variant = DEFAULT_META[dataset] if variant is None else variant
    if variant not in META_VARIANTS[dataset]:
        raise ConfigError(f"unknown metadata variant '{variant}' for dataset '{dataset}'; expected one of "
                         f"{list(META_VARIANTS[dataset]) + [CUSTOM]}")
    if clean and dataset != "derm7pt":
        raise ConfigError(f"clean=True (drop management and difficulty) applies only to derm7pt, not '{dataset}'")
    fields = _FIXED_FIELDS[(dataset, variant)]
    if clean:
        fields = tuple(f for f in fields if f.name not in _DERM_CLEAN_DROP)
    return variant, fields


def build_vectorizer(dataset: str, variant: str | None = None, clean: bool = False,
                       scale_numeric: bool = False, source: str | None = None,
                       fields: list[str] | None = None) -> MetadataVectorizer:
    """The metadata vectorizer of ``dataset``.

    ``variant``: None (dataset default), a name from :data:`META_VARIANTS`, or ``"custom"`` with ``fields``
    (vocabularies then learned in ``fit``). ``source`` is the file name used in error messages (defaults to
    the dataset's official metadata file).
    """
    _check_dataset(dataset)
    source = DEFAULT_SOURCE[dataset] if source is None else source
    if variant == CUSTOM:
        if not fields:
            raise ConfigError("variant='custom' needs a non-empty `fields` list")
        fields = list(fields)
        _check_forbidden(dataset, fields)
        unknown = [f for f in fields if f not in ALLOWED_FIELDS[dataset]]
        if unknown:
            raise ConfigError(f"unknown metadata field(s) {unknown} for dataset '{dataset}'; expected a subset "
                             f"of {list(ALLOWED_FIELDS[dataset])}")
        dup = sorted({f for f in fields if fields.count(f) > 1})
        if dup:
            raise ConfigError(f"metadata field(s) {dup} listed more than once")
        if clean:
            raise ConfigError("clean=True applies to the fixed derm7pt variants; list the fields to keep instead")
        # vocab () is a placeholder replaced in fit
        spec = tuple(Field(f) if f in NUMERIC_FIELDS[dataset] else Field(f, ()) for f in fields)
        return MetadataVectorizer(dataset, CUSTOM, spec, scale_numeric=scale_numeric, source=source, learn_vocab=True)
    if fields is not None:
        raise ConfigError(f"`fields` is only used with variant='custom' (got variant={variant!r})")
    variant, spec = _resolve(dataset, variant, clean)
    name = f"{variant}-clean" if clean else variant
    return MetadataVectorizer(dataset, name, spec, scale_numeric=scale_numeric, source=source)


def meta_dim(dataset: str, variant: str | None = None, clean: bool = False) -> int:
    """Width of a fixed metadata variant, without reading any data."""
    if variant == CUSTOM:
        raise ConfigError("the width of a 'custom' metadata vectorizer depends on its training rows; "
                         "use build_vectorizer(...).fit(df).dim")
    _, spec = _resolve(dataset, variant, clean)
    return sum(len(f.columns) for f in spec)

