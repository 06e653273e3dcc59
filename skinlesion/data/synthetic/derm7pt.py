"""derm7pt release_v0 layout: ``meta/meta.csv`` with the seven-point criteria drawn given the diagnosis, the
official index files, and a clinical and a dermoscopic JPEG per case under the release's odd folder names.

The two images of a case carry complementary cues, as the two modalities do: the dermoscopic image shows every
seven-point criterion (a marker per criterion), the clinical image only the two visible to the naked eye
(pigmentation, blue-whitish veil), faintly. For the diagnosis, each image shows a lesion appearance shared by
two diagnoses, paired differently in the two images, so that either image alone leaves pairs of diagnoses
apart only through the criteria, and the two together single out the diagnosis.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data import derm7pt as reader
from skinlesion.data.metadata import DERM_M20_FIELDS
from skinlesion.data.synthetic.csv_files import check_values, copy, read_source, write_csv
from skinlesion.data.synthetic.lesion_images import LOOKS, ImageJob
from skinlesion.data.synthetic.sampling import check_n, class_counts, pick, shuffled_labels
from skinlesion.data.tasks import DERM7PT_TASK_COLUMNS, DERM7PT_TASKS

_DIAG = DERM7PT_TASKS[0]
_VOCAB = {f.name: f.vocab for f in DERM_M20_FIELDS}
_SPLIT_FILES = tuple(reader.INDEX_FILES.values())      # train, valid, test

_CRITERIA = DERM7PT_TASKS[1:]
_DIAG_PRIOR = {"BCC": 42, "NEV": 575, "MEL": 252, "MISC": 97, "SK": 45}
_DIAG_RAW = {   # sub-diagnosis frequencies within each class (real counts)
    "BCC": {"basal cell carcinoma": 1},
    "NEV": {"clark nevus": 399, "reed or spitz nevus": 79, "dermal nevus": 33, "blue nevus": 28,
            "congenital nevus": 17, "combined nevus": 13, "recurrent nevus": 6},
    "MEL": {"melanoma (less than 0.76 mm)": 102, "melanoma (in situ)": 64, "melanoma (0.76 to 1.5 mm)": 53,
            "melanoma (more than 1.5 mm)": 28, "melanoma metastasis": 4, "melanoma": 1},
    "MISC": {"vascular lesion": 29, "lentigo": 24, "dermatofibroma": 20, "melanosis": 16, "miscellaneous": 8},
    "SK": {"seborrheic keratosis": 1},
}
# P(criterion code | diagnosis), rounded from the real meta.csv; rows BCC, NEV, MEL, MISC, SK
_CRITERIA_P = {
    "PN": ((0.93, 0.05, 0.02), (0.34, 0.53, 0.13), (0.32, 0.13, 0.55), (0.54, 0.38, 0.08), (0.73, 0.16, 0.11)),
    "STR": ((0.93, 0.01, 0.06), (0.70, 0.16, 0.14), (0.37, 0.03, 0.60), (0.81, 0.11, 0.08), (0.91, 0.02, 0.07)),
    "PIG": ((0.69, 0.01, 0.30), (0.65, 0.14, 0.21), (0.43, 0.01, 0.56), (0.67, 0.22, 0.11), (0.22, 0.33, 0.45)),
    "RS": ((0.83, 0.17), (0.79, 0.21), (0.56, 0.44), (0.90, 0.10), (0.93, 0.07)),
    "DaG": ((0.45, 0.03, 0.52), (0.20, 0.51, 0.29), (0.08, 0.04, 0.88), (0.56, 0.20, 0.24), (0.49, 0.27, 0.24)),
    "BWV": ((0.79, 0.21), (0.89, 0.11), (0.52, 0.48), (0.99, 0.01), (0.96, 0.04)),
    "VS": ((0.36, 0.62, 0.02), (0.90, 0.07, 0.03), (0.69, 0.13, 0.18), (0.86, 0.10, 0.04), (0.78, 0.18, 0.04)),
}
_RAW_WEIGHT = {   # raw-string frequencies within a merged code (real counts)
    "diffuse regular": 115, "localized regular": 3, "diffuse irregular": 265, "localized irregular": 40,
    "blue areas": 116, "combinations": 99, "white areas": 38,
    "within regression": 46, "arborizing": 31, "comma": 23, "hairpin": 15, "wreath": 2,
    "dotted": 53, "linear irregular": 18,
}
# per diagnosis, in the metadata vocabularies' orders: difficulty, elevation, location, P(male), management
_META_P = {
    "BCC": ((0.33, 0.38, 0.29), (0.0, 0.64, 0.36), (0.43, 0.02, 0.02, 0.10, 0.02, 0.40, 0.005, 0.005, 0.0),
            0.43, (1.0, 0.0, 0.0)),
    "NEV": ((0.33, 0.42, 0.25), (0.56, 0.39, 0.05), (0.31, 0.19, 0.16, 0.10, 0.10, 0.03, 0.09, 0.03, 0.002),
            0.50, (0.48, 0.47, 0.05)),
    "MEL": ((0.46, 0.25, 0.29), (0.29, 0.49, 0.22), (0.27, 0.29, 0.07, 0.13, 0.12, 0.09, 0.01, 0.01, 0.002),
            0.46, (1.0, 0.0, 0.0)),
    "MISC": ((0.56, 0.26, 0.19), (0.51, 0.36, 0.13), (0.06, 0.20, 0.05, 0.26, 0.05, 0.23, 0.07, 0.01, 0.07),
             0.41, (0.24, 0.25, 0.52)),
    "SK": ((0.27, 0.51, 0.22), (0.07, 0.73, 0.20), (0.27, 0.005, 0.24, 0.11, 0.13, 0.24, 0.005, 0.005, 0.0),
           0.62, (0.22, 0.09, 0.69)),
}


def seven_point_score(criteria: dict[str, int]) -> int:
    """7-point checklist from merged criterion codes: 2 points for each major criterion (atypical network,
    blue-whitish veil, atypical vascular pattern), 1 for each minor one (irregular streaks, irregular
    pigmentation, irregular dots/globules, regression structures)."""
    return (2 * (criteria["PN"] == 2) + 2 * (criteria["BWV"] == 1) + 2 * (criteria["VS"] == 2)
            + (criteria["STR"] == 2) + (criteria["PIG"] == 2) + (criteria["DaG"] == 2) + (criteria["RS"] == 1))


def _raw_for(rng: np.random.Generator, task, code: int, diag: str | None = None) -> str:
    options = [s for s, c in task.raw_to_code.items() if c == code]
    if task.name == "VS" and code == 1 and diag == "BCC" and rng.random() < 0.85:
        return "arborizing"     # BCC's typical vessels
    return pick(rng, options, [_RAW_WEIGHT.get(s, 1) for s in options])


def _folders(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """(folder, file prefix) pairs in the release's style; some prefixes differ from their folder's name."""
    out, seen = [], set()
    alphabet = "abcdefghilmnz123"
    while len(out) < count:
        first, second = pick(rng, "AFGN", (1, 1, 1, 1)), alphabet[int(rng.integers(len(alphabet)))]
        name = f"{first}{second}l"
        name = name.upper() if rng.random() < 0.4 and second.isalpha() else name
        if name.lower() in seen:
            if len(seen) > 4 * len(alphabet) - 4:     # name space exhausted: number the rest
                name = f"{first}{len(out)}l"
            else:
                continue
        seen.add(name.lower())
        prefix = name
        if rng.random() < 0.15:     # e.g. folder 'A2l' holding 'Abl196.jpg'
            letters = [ch for ch in "abcdefg" if ch != name[1].lower()]
            prefix = f"{name[0]}{letters[int(rng.integers(len(letters)))]}l"
        out.append((name, prefix))
    if count >= 2 and all(f == p for f, p in out):     # keep the quirk visible in small sets
        name = out[-1][0]
        out[-1] = (name, f"{name[0]}{'x' if name[1].lower() != 'x' else 'y'}l")
    return out


def _path(rng: np.random.Generator, folder: str, prefix: str, number: int) -> str:
    upper = rng.random() < 0.063     # '.JPG' files carry an upper-case name, as in the release
    stem = prefix.upper() if upper else prefix[0].upper() + prefix[1:].lower()
    suffix = "bis" if rng.random() < 0.005 else ""
    return f"{folder}/{stem}{number:03d}{suffix}.{'JPG' if upper else 'jpg'}"


def _rows(rng: np.random.Generator, n: int) -> tuple[list[list[str]], dict[str, list[int]]]:
    diag_code = {name: i for i, name in enumerate(_DIAG.classes)}
    diags = shuffled_labels(rng, class_counts(_DIAG_PRIOR, n))
    raw_diag = [pick(rng, list(_DIAG_RAW[d]), list(_DIAG_RAW[d].values())) for d in diags]
    codes = {t.name: [int(pick(rng, range(t.num_classes), _CRITERIA_P[t.name][diag_code[d]])) for d in diags]
             for t in _CRITERIA}
    # every criterion class must occur: move a case from a class that has spare members
    for t in _CRITERIA:
        col = codes[t.name]
        for missing in range(t.num_classes):
            counts = np.bincount(col, minlength=t.num_classes)
            if counts[missing]:
                continue
            donors = [i for i, c in enumerate(col) if counts[c] >= 2]
            col[donors[int(rng.integers(len(donors)))]] = missing
    raws = {t.name: [_raw_for(rng, t, codes[t.name][i], diags[i]) for i in range(n)] for t in _CRITERIA}

    folders = _folders(rng, max(1, math.ceil(n / 30)))
    counters = [int(rng.integers(1, 20)) for _ in folders]
    n_same = max(1, round(0.009 * n)) if n >= 20 else 0     # cases whose clinical image is the dermoscopic one
    same = set(rng.choice(n, n_same, replace=False).tolist()) if n_same else set()
    rows = []
    for i in range(n):
        d = diags[i]
        diff_p, elev_p, loc_p, male_p, man_p = _META_P[d]
        f = int(rng.integers(len(folders)))
        folder, prefix = folders[f]
        clinic = _path(rng, folder, prefix, counters[f])
        derm = _path(rng, folder, prefix, counters[f] + 1)
        counters[f] += 2 + int(rng.random() < 0.1)
        notes = ""
        if i in same:
            notes = ("Clinical missing and replaced with derm" if rng.random() < 0.5
                     else f"Replaced clinic {clinic} with derm {derm}")
            clinic = derm
        crit = {t.name: codes[t.name][i] for t in _CRITERIA}
        k = int(rng.integers(1, 400))
        case_id = "" if rng.random() < 0.027 else f"{int(rng.integers(1, 5))}{pick(rng, 'abdlm', (1,) * 5)}{k}{k + 1}{k + 2}"
        rec = {
            "case_num": str(i + 1), "diagnosis": raw_diag[i], "seven_point_score": str(seven_point_score(crit)),
            "level_of_diagnostic_difficulty": pick(rng, _VOCAB["level_of_diagnostic_difficulty"], diff_p),
            "elevation": pick(rng, _VOCAB["elevation"], elev_p), "location": pick(rng, _VOCAB["location"], loc_p),
            "sex": "male" if rng.random() < male_p else "female",
            "management": pick(rng, _VOCAB["management"], man_p),
            "clinic": clinic, "derm": derm, "case_id": case_id, "notes": notes,
        }
        rec.update({DERM7PT_TASK_COLUMNS[t.name]: raws[t.name][i] for t in _CRITERIA})
        rows.append([rec[c] for c in reader.COLUMNS])

    # official split sizes ~41/20/39%, stratified on diagnosis; files hold 0-based row positions
    split: dict[str, list[int]] = {s: [] for s in _SPLIT_FILES}
    for d in _DIAG_PRIOR:
        idx = [i for i in rng.permutation(n).tolist() if diags[i] == d]
        n_tr, n_va = round(0.41 * len(idx)), round(0.20 * len(idx))
        for name, part in zip(_SPLIT_FILES, (idx[:n_tr], idx[n_tr:n_tr + n_va], idx[n_tr + n_va:])):
            split[name] += part
    split = {s: [v[i] for i in rng.permutation(len(v))] for s, v in split.items()}
    return rows, split


# Which lesion appearance each image shows for each diagnosis: pairs of diagnoses share one in each modality,
# paired differently, so (clinical group, dermoscopic group) is unique per diagnosis.
CLINIC_GROUPS = (("NEV", "MEL"), ("BCC", "SK"), ("MISC",))
DERM_GROUPS = (("NEV", "SK"), ("BCC", "MEL"), ("MISC",))
# Criterion markers per image, in canonical criterion order (PN, STR, PIG, RS, DaG, BWV, VS): the dermoscopic
# image shows all seven, the clinical one pigmentation and blue-whitish veil, faintly.
DERM_MARKERS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
CLINIC_MARKERS = (0.0, 0.0, 0.6, 0.0, 0.0, 0.6, 0.0)
# MISC gathers distinct entities; the vascular lesions and dermatofibromas keep their own look in both images.
_RAW_LOOK = {"vascular lesion": "VASC", "dermatofibroma": "DF"}


def _group_looks(groups) -> dict[str, np.ndarray]:
    """Diagnosis -> the look its group shows (the mean of the members' looks)."""
    return {cls: np.mean([LOOKS[c] for c in group], axis=0) for group in groups for cls in group}


_SHOWN = {"derm": _group_looks(DERM_GROUPS), "clinic": _group_looks(CLINIC_GROUPS)}


# File sizes as in the release: landscape 3:2 (768x512 there); in some pairs one image a pixel or a few smaller
# (768x511, 767x508, 759x510 beside 768x512: 23 of the 1,011 released cases), and some clinical photographs of
# another shape altogether. Generated sets meet the unequal pairs more often than the release (8% and 4% of the
# cases) so that the small sets of the tests contain them too.
_ASPECT = (1.5, 1.0)
_P_TRIMMED, _P_OTHER_CLINIC = 0.08, 0.04
_OTHER_CLINIC_ASPECTS = ((1.0, 1.5), (4 / 3, 1.0), (1.0, 1.0))   # portrait, 4:3, square


def _file_shapes(rng: np.random.Generator, n: int) -> list[dict[str, tuple[tuple[float, float], tuple[int, int]]]]:
    """Per case, (aspect, trim) of its derm and clinic files (:class:`ImageJob`); a fixed number of draws per case."""
    shapes = []
    for _ in range(n):
        u, which = rng.random(), rng.random()
        dw, dh, other = int(rng.integers(0, 10)), int(rng.integers(1, 5)), int(rng.integers(len(_OTHER_CLINIC_ASPECTS)))
        shape = {"derm": (_ASPECT, (0, 0)), "clinic": (_ASPECT, (0, 0))}
        if u < _P_TRIMMED:
            shape["clinic" if which < 0.5 else "derm"] = (_ASPECT, (dw, dh))
        elif u < _P_TRIMMED + _P_OTHER_CLINIC:
            shape["clinic"] = (_OTHER_CLINIC_ASPECTS[other], (0, 0))
        shapes.append(shape)
    return shapes


def _jobs(root: Path, df: pd.DataFrame, rng: np.random.Generator) -> list[ImageJob]:
    jobs, seen = [], set()
    images = (root / "images").resolve()
    shapes = _file_shapes(rng, len(df))
    for rec, shape in zip(df.to_dict("records"), shapes):
        raw_diag = rec["diagnosis"]
        cls = _DIAG.classes[_DIAG.raw_to_code[raw_diag]]
        markers = tuple((t.raw_to_code[rec[DERM7PT_TASK_COLUMNS[t.name]]], rec[DERM7PT_TASK_COLUMNS[t.name]])
                        for t in _CRITERIA)
        # the dermoscopic image first: where clinic == derm, that file is the dermoscopic one
        for key, dermoscopic in (("derm", True), ("clinic", False)):
            rel = str(rec[key])
            path = root / "images" / rel
            if Path(rel).is_absolute() or images not in path.resolve().parents:
                raise ValueError(f"synthetic: derm7pt '{key}' path {rel!r} leaves the images/ folder")
            if rel in seen:
                continue
            seen.add(rel)
            shown = _SHOWN[key]
            look = LOOKS[_RAW_LOOK[raw_diag]] if raw_diag in _RAW_LOOK else shown[cls]
            alt = np.stack([v for c, v in shown.items() if not np.array_equal(v, shown[cls])])
            aspect, trim = shape[key]
            jobs.append(ImageJob(path, "JPEG", look, alt, dermoscopic, lesion_scale=0.85,
                                 vignette_p=1.0 if dermoscopic else 0.0, markers=markers,
                                 marker_contrast=DERM_MARKERS if dermoscopic else CLINIC_MARKERS,
                                 aspect=aspect, trim=trim))
    return jobs


def generate(rng: np.random.Generator, root: Path, n: int) -> list[ImageJob]:
    check_n("derm7pt", n, _DIAG.num_classes)
    rows, split = _rows(rng, n)
    write_csv(root / reader.METADATA, reader.COLUMNS, rows)
    for name, idx in split.items():
        write_csv(root / "meta" / name, ("indexes",), [[str(i)] for i in idx])
    return _jobs(root, pd.DataFrame(rows, columns=list(reader.COLUMNS)), rng)


def from_csv(rng: np.random.Generator, root: Path, src: Path) -> list[ImageJob]:
    label_cols = tuple(DERM7PT_TASK_COLUMNS[t.name] for t in DERM7PT_TASKS)
    df = read_source(src, label_cols + ("clinic", "derm"))
    if df[["clinic", "derm"]].isna().any().any():
        raise ValueError(f"synthetic: from_csv file {src}: empty 'clinic' or 'derm' path")
    for t in DERM7PT_TASKS:
        col = DERM7PT_TASK_COLUMNS[t.name]
        check_values(src, col, df[col].astype(str).tolist(), tuple(t.raw_to_code))
    index_files = [src.parent / name for name in _SPLIT_FILES]
    for f in index_files:
        if not f.is_file():
            raise ValueError(f"synthetic: from_csv {src}: the split file {f} must sit beside it")
    copy(src, root / reader.METADATA)
    for f in index_files:
        copy(f, root / "meta" / f.name)
    return _jobs(root, df, rng)
