"""PAD-UFES-20 layout: ``metadata.csv`` with patients, lesions and label-correlated fields drawn like the real
ones, and one clinical PNG per row spread over the three image folders."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from skinlesion.data import pad_ufes as reader
from skinlesion.data.metadata import PAD_M81_FIELDS
from skinlesion.data.synthetic.csv_files import check_values, copy, read_source, write_csv
from skinlesion.data.synthetic.lesion_images import LOOKS, ImageJob, alt_looks
from skinlesion.data.synthetic.sampling import check_n, class_counts, group_sizes, pick, true_false

CLASSES = reader.TASKS[0].classes              # ACK, BCC, MEL, NEV, SCC, SEK
_VOCAB = {f.name: f.vocab for f in PAD_M81_FIELDS}
_REGIONS = _VOCAB["region"]

_PRIOR = {"ACK": 730, "BCC": 845, "MEL": 52, "NEV": 244, "SCC": 192, "SEK": 235}
# The tables below are rounded from the real metadata, rows in CLASSES order, columns in _REGIONS order.
_REGION_P = (
    (0.12, 0.02, 0.19, 0.11, 0.36, 0.08, 0.03, 0.02, 0.01, 0.02, 0.02, 0.01, 0.005, 0.01),
    (0.05, 0.06, 0.31, 0.02, 0.08, 0.16, 0.15, 0.01, 0.005, 0.04, 0.11, 0.005, 0.005, 0.01),
    (0.13, 0.06, 0.10, 0.04, 0.10, 0.10, 0.005, 0.13, 0.005, 0.04, 0.27, 0.005, 0.04, 0.005),
    (0.04, 0.03, 0.16, 0.02, 0.04, 0.12, 0.005, 0.07, 0.04, 0.01, 0.35, 0.02, 0.08, 0.01),
    (0.11, 0.05, 0.15, 0.10, 0.15, 0.10, 0.05, 0.06, 0.01, 0.07, 0.09, 0.03, 0.01, 0.03),
    (0.08, 0.03, 0.42, 0.01, 0.09, 0.13, 0.01, 0.04, 0.02, 0.03, 0.10, 0.005, 0.03, 0.005),
)
# symptom -> per class (P(True), P(UNK))
_SYMPTOMS = {
    "itch": ((0.78, 0.003), (0.76, 0.0), (0.17, 0.0), (0.09, 0.004), (0.77, 0.02), (0.27, 0.0)),
    "grew": ((0.18, 0.01), (0.51, 0.31), (0.71, 0.21), (0.56, 0.15), (0.40, 0.39), (0.47, 0.03)),
    "hurt": ((0.07, 0.001), (0.36, 0.004), (0.01, 0.0), (0.02, 0.02), (0.22, 0.01), (0.01, 0.0)),
    "changed": ((0.04, 0.003), (0.10, 0.31), (0.65, 0.17), (0.09, 0.15), (0.15, 0.39), (0.03, 0.03)),
    "bleed": ((0.12, 0.0), (0.54, 0.01), (0.02, 0.0), (0.01, 0.004), (0.31, 0.0), (0.03, 0.0)),
    "elevation": ((0.28, 0.0), (0.85, 0.0), (0.27, 0.02), (0.65, 0.004), (0.78, 0.0), (0.78, 0.0)),
}
_AGE = {"ACK": (63, 12), "BCC": (63, 13.5), "MEL": (60, 14), "NEV": (37, 16), "SCC": (69, 12), "SEK": (67, 12)}
_DIAMETER = {"ACK": 11.0, "BCC": 12.0, "MEL": 15.2, "NEV": 12.1, "SCC": 12.2, "SEK": 9.4}
_FITZ = {"ACK": (0.09, 0.55, 0.31, 0.04, 0.01, 0.0), "BCC": (0.12, 0.59, 0.26, 0.03, 0.003, 0.0),
         "MEL": (0.06, 0.67, 0.19, 0.08, 0.0, 0.0), "NEV": (0.05, 0.45, 0.32, 0.16, 0.01, 0.0),
         "SCC": (0.08, 0.66, 0.23, 0.02, 0.01, 0.0), "SEK": (0.09, 0.49, 0.15, 0.23, 0.02, 0.02)}
_PATIENT_P = {   # P(True) per class: smoke, drink, pesticide, skin_cancer_history, cancer_history
    "ACK": (0.09, 0.22, 0.43, 0.41, 0.53), "BCC": (0.15, 0.25, 0.42, 0.48, 0.51),
    "MEL": (0.10, 0.35, 0.46, 0.29, 0.60), "NEV": (0.01, 0.23, 0.17, 0.43, 0.51),
    "SCC": (0.22, 0.25, 0.41, 0.46, 0.54), "SEK": (0.06, 0.21, 0.15, 0.47, 0.55),
}
_BACKGROUND_F = {"POMERANIA": 530, "GERMANY": 466, "ITALY": 250, "UNK": 95, "BRAZIL": 89, "NETHERLANDS": 19,
                 "PORTUGAL": 15, "POLAND": 7, "BRASIL": 3, "CZECH": 3, "AUSTRIA": 1, "SPAIN": 1, "ISRAEL": 1}
_BACKGROUND_M = {"POMERANIA": 533, "GERMANY": 482, "ITALY": 236, "UNK": 84, "BRAZIL": 81, "PORTUGAL": 20,
                 "NETHERLANDS": 20, "POLAND": 9, "NORWAY": 7, "FRANCE": 2, "SPAIN": 2}
_BIOPSED_P = {"ACK": 0.63, "NEV": 0.80, "SEK": 0.32}     # BCC/SCC/MEL are always biopsied
_BLOCK_CLASSES = ("ACK", "NEV", "SEK")                   # only these have the empty patient block
_FOLDER_P = (911, 659, 728)


def _rows(rng: np.random.Generator, n: int) -> list[list[str]]:
    counts = class_counts(_PRIOR, n)
    lesions = []    # (class, number of images)
    for cls, k in counts.items():
        lesions += [(cls, m) for m in group_sizes(rng, k, (1, 2, 3, 4), (0.80, 0.17, 0.02, 0.01))]
    lesions = [lesions[i] for i in rng.permutation(len(lesions))]
    # ~35% of all rows lack the patient block, all of them non-biopsied ACK/NEV/SEK (real: 804/2298)
    block_rows = sum(counts[c] for c in _BLOCK_CLASSES)
    q = min(0.9, 0.35 * n / max(block_rows, 1))
    empty = [cls in _BLOCK_CLASSES and rng.random() < q for cls, _ in lesions]

    # patients: 1-4 lesions each, never mixing block-present and block-empty lesions
    patient_of = [0] * len(lesions)
    n_patients = [0, 0]
    patients_by_status: list[list[list[int]]] = [[], []]
    for status in (False, True):
        idx = [i for i, e in enumerate(empty) if e == status]
        pos = 0
        for s in group_sizes(rng, len(idx), (1, 2, 3, 4), (0.75, 0.18, 0.05, 0.02)):
            patients_by_status[status].append(idx[pos:pos + s])
            pos += s
        n_patients[status] = len(patients_by_status[status])
    # block-present patients get the low numbers and block-empty ones the high numbers, as in the release
    lo_span = max(988, int(1.2 * n_patients[0]))
    lo_ids = np.sort(rng.choice(np.arange(8, 8 + lo_span), n_patients[0], replace=False))
    hi_start = 8 + lo_span
    hi_ids = np.sort(rng.choice(np.arange(hi_start, hi_start + max(1167, int(1.2 * n_patients[1]))), n_patients[1],
                                replace=False))
    patient_ids: dict[int, int] = {}
    for status, ids in ((False, lo_ids), (True, hi_ids)):
        for pid, members in zip(rng.permutation(ids), patients_by_status[status]):
            for i in members:
                patient_of[i] = int(pid)
        patient_ids.update({int(p): status for p in ids})

    # lesion ids; ~12% reuse an id of another patient's lesion (the key is patient_id + lesion_id)
    L = len(lesions)
    lesion_id = rng.choice(np.arange(1, max(4820, 3 * L) + 1), L, replace=False).tolist()
    ids_of: dict[int, set[int]] = {}
    for i in range(L):
        ids_of.setdefault(patient_of[i], set()).add(lesion_id[i])
    for i in np.flatnonzero(rng.random(L) < 0.12):
        j = int(rng.integers(L))
        if patient_of[j] != patient_of[i] and lesion_id[j] not in ids_of[patient_of[i]]:
            ids_of[patient_of[i]].discard(lesion_id[i])
            lesion_id[i] = lesion_id[j]
            ids_of[patient_of[i]].add(lesion_id[i])

    # patient-level fields, driven by the class of the patient's first lesion
    first_class: dict[int, str] = {}
    for i, (cls, _) in enumerate(lesions):
        first_class.setdefault(patient_of[i], cls)
    bf_names, bf_p = list(_BACKGROUND_F), list(_BACKGROUND_F.values())
    bm_names, bm_p = list(_BACKGROUND_M), list(_BACKGROUND_M.values())
    patient: dict[int, dict[str, str]] = {}
    for pid in sorted(first_class):
        cls = first_class[pid]
        mu, sd = _AGE[cls]
        info = {"age": str(int(np.clip(round(rng.normal(mu, sd)), 6, 94)))}
        if not patient_ids[pid]:
            smoke, drink, pest, sch, ch = (rng.random(5) < np.array(_PATIENT_P[cls]))
            water = rng.random() < 0.62
            father = pick(rng, bf_names, bf_p)
            mother = father if (rng.random() < 0.6 and father in _BACKGROUND_M) else pick(rng, bm_names, bm_p)
            info.update(
                smoke=true_false(smoke), drink=true_false(drink), pesticide=true_false(pest), skin_cancer_history=true_false(sch),
                cancer_history=true_false(ch), has_piped_water=true_false(water),
                has_sewage_system=true_false(water if rng.random() < 0.8 else not water),
                background_father="" if rng.random() < 0.01 else father,
                background_mother="" if rng.random() < 0.01 else mother,
                gender=pick(rng, _VOCAB["gender"], (0.5, 0.5)),
                fitspatrick=f"{float(pick(rng, (1, 2, 3, 4, 5, 6), _FITZ[cls])):.1f}",
            )
        patient[pid] = info

    rows = []
    max_img = 1000      # the release numbers images 1..1000; names stay unique through patient and lesion
    for i, (cls, m) in enumerate(lesions):
        pid = patient_of[i]
        ci = CLASSES.index(cls)
        info = patient[pid]
        d1 = d2 = ""
        if not empty[i]:
            a = float(np.clip(round(rng.lognormal(np.log(_DIAMETER[cls]) - 0.1, 0.45)), 2, 100))
            d1, d2 = f"{a:.1f}", f"{float(max(1, round(a * rng.uniform(0.5, 1.0)))):.1f}"
        sym = {}
        for name, table in _SYMPTOMS.items():
            pt, pu = table[ci]
            r = rng.random()
            sym[name] = "UNK" if r < pu else true_false(r < pu + pt * (1 - pu))
        biopsed = cls not in _BIOPSED_P or (not empty[i] and rng.random() < _BIOPSED_P[cls])
        region = pick(rng, _REGIONS, _REGION_P[ci])
        for k in np.sort(rng.choice(np.arange(1, max_img + 1), m, replace=False)):
            rec = {c: info.get(c, "") for c in reader.COLUMNS}
            rec.update(sym)
            rec.update(patient_id=f"PAT_{pid}", lesion_id=str(lesion_id[i]), region=region, diameter_1=d1,
                       diameter_2=d2, diagnostic=cls, img_id=f"PAT_{pid}_{lesion_id[i]}_{int(k)}.png",
                       biopsed=true_false(biopsed))
            rows.append([rec[c] for c in reader.COLUMNS])
    return [rows[i] for i in rng.permutation(len(rows))]


def _jobs(rng: np.random.Generator, root: Path, img_ids: list[str], labels: list[str],
          fitz: list[str]) -> list[ImageJob]:
    jobs, seen = [], set()
    folder_p = np.array(_FOLDER_P) / sum(_FOLDER_P)
    for img, cls, fz in zip(img_ids, labels, fitz):
        folder = reader.IMAGE_FOLDERS[int(rng.choice(3, p=folder_p))]
        rgba = bool(rng.random() < 0.3)
        if img in seen:
            continue
        seen.add(img)
        try:    # darker skin for higher Fitzpatrick types when the field is known
            skin_u = (float(fz) - 1) / 5 * 0.8
            skin_u = None if math.isnan(skin_u) else skin_u
        except ValueError:
            skin_u = None
        jobs.append(ImageJob(root / folder / img, "PNG", LOOKS[cls], alt_looks(CLASSES, cls), False,
                             rgba=rgba, skin_u=skin_u))
    return jobs


def generate(rng: np.random.Generator, root: Path, n: int) -> list[ImageJob]:
    check_n("pad_ufes", n, len(CLASSES))
    rows = _rows(rng, n)
    write_csv(root / reader.METADATA, reader.COLUMNS, rows)
    col = {c: i for i, c in enumerate(reader.COLUMNS)}
    return _jobs(rng, root, [r[col["img_id"]] for r in rows], [r[col["diagnostic"]] for r in rows],
                 [r[col["fitspatrick"]] or "nan" for r in rows])


def from_csv(rng: np.random.Generator, root: Path, src: Path) -> list[ImageJob]:
    df = read_source(src, ("img_id", "diagnostic"))
    labels = df["diagnostic"].astype(str).tolist()
    check_values(src, "diagnostic", labels, CLASSES)
    copy(src, root / reader.METADATA)
    fitz = df["fitspatrick"].astype(str).tolist() if "fitspatrick" in df else ["nan"] * len(df)
    return _jobs(rng, root, df["img_id"].astype(str).tolist(), labels, fitz)
