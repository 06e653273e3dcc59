"""ISIC-2019 layout: ground-truth and metadata CSVs (CRLF, '_downsampled' names, lesions with several images,
gaps where the real file has them) and one dermoscopic JPEG per row."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skinlesion.data import isic2019 as reader
from skinlesion.data.metadata import ISIC11_FIELDS
from skinlesion.data.synthetic.csv_files import copy, read_source, write_csv
from skinlesion.data.synthetic.lesion_images import LOOKS, ImageJob, alt_looks
from skinlesion.data.synthetic.sampling import check_n, class_counts, group_sizes, pick, shuffled_labels
from skinlesion.data.tasks import ISIC_CLASSES

_SITES = {f.name: f.vocab for f in ISIC11_FIELDS}["anatom_site_general"]

_PRIOR = {"MEL": 4522, "NV": 12875, "BCC": 3323, "AK": 867, "BKL": 2624, "DF": 239, "VASC": 253, "SCC": 628}
_SITE_P = {   # rounded from the real metadata, columns in _SITES order
    "AK": (0.11, 0.71, 0.005, 0.08, 0.001, 0.01, 0.001, 0.09), "BCC": (0.34, 0.35, 0.005, 0.14, 0.001, 0.002, 0.06, 0.11),
    "BKL": (0.19, 0.43, 0.005, 0.18, 0.01, 0.002, 0.10, 0.10), "DF": (0.18, 0.002, 0.002, 0.59, 0.001, 0.002, 0.01, 0.22),
    "MEL": (0.30, 0.20, 0.002, 0.18, 0.002, 0.05, 0.10, 0.16), "NV": (0.34, 0.07, 0.002, 0.27, 0.002, 0.02, 0.18, 0.12),
    "SCC": (0.18, 0.28, 0.002, 0.29, 0.002, 0.02, 0.04, 0.18), "VASC": (0.35, 0.16, 0.002, 0.26, 0.01, 0.01, 0.10, 0.10),
}
_SITE_MISSING = {"AK": 0.025, "BCC": 0.022, "BKL": 0.105, "DF": 0.017, "MEL": 0.028, "NV": 0.163,
                 "SCC": 0.01, "VASC": 0.123}
_AGE = {"AK": (67, 12), "BCC": (66, 15), "BKL": (64, 15), "DF": (52, 15), "MEL": (61, 16), "NV": (45, 16),
        "SCC": (71, 11), "VASC": (53, 20)}
_MALE = {"AK": 0.53, "BCC": 0.60, "BKL": 0.56, "DF": 0.51, "MEL": 0.54, "NV": 0.48, "SCC": 0.68, "VASC": 0.51}


def generate(rng: np.random.Generator, root: Path, n: int) -> list[ImageJob]:
    check_n("isic2019", n, len(ISIC_CLASSES))
    labels = shuffled_labels(rng, class_counts(_PRIOR, n))
    ids = np.sort(rng.choice(np.arange(0, max(73255, 3 * n)), n, replace=False))
    # ~8% MSK '_downsampled' images, mostly without lesion_id (real: 2,074 of 25,331)
    down = rng.random(n) < 0.082
    if n >= 12 and not down.any():
        down[int(rng.integers(n))] = True
    names = [f"ISIC_{i:07d}" + ("_downsampled" if d else "") for i, d in zip(ids, down)]

    # lesions: several images per lesion in the HAM/BCN sources; fields are per lesion
    lesion = [""] * n
    fields: list[dict[str, str]] = [{} for _ in range(n)]
    used: set[str] = set()
    for cls in ISIC_CLASSES:
        idx = [i for i in rng.permutation(n) if labels[i] == cls]
        pos = 0
        for s in group_sizes(rng, len(idx), (1, 2, 3, 4, 6), (0.55, 0.22, 0.12, 0.07, 0.04)):
            members = idx[pos:pos + s]
            pos += s
            msk = [i for i in members if down[i]]
            other = [i for i in members if not down[i]]
            mu, sd = _AGE[cls]
            for group in (msk, other):
                if not group:
                    continue
                source = "MSK4" if group is msk else pick(rng, ("HAM", "BCN"), (0.45, 0.55))
                while True:
                    lid = f"{source}_{int(rng.integers(0, 10**7 if source != 'MSK4' else 2 * 10**4)):07d}"
                    if lid not in used:
                        used.add(lid)
                        break
                no_lesion = rng.random() < (0.6 if source == "MSK4" else (0.05 if cls in ("NV", "MEL", "BKL") else 0))
                info = {
                    "age_approx": "" if rng.random() < 0.017 else
                    str(int(np.clip(5 * round(rng.normal(mu, sd) / 5), 0, 85))),
                    "sex": "" if rng.random() < 0.015 else ("male" if rng.random() < _MALE[cls] else "female"),
                    "anatom_site_general": "" if rng.random() < _SITE_MISSING[cls]
                    else pick(rng, _SITES, _SITE_P[cls]),
                }
                for i in group:
                    lesion[i] = "" if no_lesion else lid
                    fields[i] = info
    if n >= 50:     # readers must meet every kind of gap even in small sets
        for key in ("age_approx", "sex", "anatom_site_general"):
            if all(f[key] for f in fields):
                i = int(rng.integers(n))
                fields[i] = {**fields[i], key: ""}
        if all(lesion):
            lesion[int(rng.integers(n))] = ""
    gt_rows = [[name] + ["1.0" if c == labels[i] else "0.0" for c in reader.GROUND_TRUTH_COLUMNS[1:]]
               for i, name in enumerate(names)]
    meta_rows = [[name, fields[i]["age_approx"], fields[i]["anatom_site_general"], lesion[i], fields[i]["sex"]]
                 for i, name in enumerate(names)]
    write_csv(root / reader.GROUND_TRUTH, reader.GROUND_TRUTH_COLUMNS, gt_rows, crlf=True)
    write_csv(root / reader.METADATA, reader.METADATA_COLUMNS, meta_rows, crlf=True)
    return _jobs(root, names, labels)


def _jobs(root: Path, names: list[str], labels: list[str]) -> list[ImageJob]:
    jobs, seen = [], set()
    for name, cls in zip(names, labels):
        if name in seen:
            continue
        seen.add(name)
        jobs.append(ImageJob(root / reader.IMAGE_DIR / f"{name}.jpg", "JPEG", LOOKS[cls],
                             alt_looks(ISIC_CLASSES, cls), True, vignette_p=0.5))
    return jobs


def from_csv(rng: np.random.Generator, root: Path, src: Path) -> list[ImageJob]:
    gt = read_source(src, ("image",) + ISIC_CLASSES)
    meta_src = src.parent / reader.METADATA
    if not meta_src.is_file():
        raise ValueError(f"synthetic: from_csv {src}: the metadata file {meta_src} must sit beside it")
    onehot = gt[list(ISIC_CLASSES)].to_numpy(dtype=float)
    bad = np.flatnonzero((onehot == 1).sum(1) != 1)
    if len(bad):
        raise ValueError(f"synthetic: from_csv {src}: row {int(bad[0])} does not have exactly one positive "
                         f"among {ISIC_CLASSES}")
    labels = [ISIC_CLASSES[k] for k in onehot.argmax(1)]
    copy(src, root / reader.GROUND_TRUTH)
    copy(meta_src, root / reader.METADATA)
    return _jobs(root, gt["image"].astype(str).tolist(), labels)
