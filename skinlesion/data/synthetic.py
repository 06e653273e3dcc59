"""Synthetic datasets in the official on-disk layouts of PAD-UFES-20, ISIC-2019 and derm7pt (METHODS §1).

``python -m skinlesion.data.synthetic --layout pad_ufes --out /tmp/pad`` writes a dataset that the real
readers accept unchanged: the same file names, columns, value spellings and parsing quirks as the official
release, metadata correlated with the label the way the real data are, and images whose content depends on
every label (lesion colour/shape/texture per diagnosis; for derm7pt one marker per seven-point criterion).
A small CNN learns it in a few CPU epochs, which makes it the test bed for the pipeline, and ``from_csv``
pairs real metadata files (e.g. derm7pt's, whose images may not be redistributed) with generated images.
"""
from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from .tasks import DERM7PT_TASK_COLUMNS, DERM7PT_TASKS, ISIC_CLASSES, PAD_UFES_TASKS

LAYOUTS = ("pad_ufes", "derm7pt", "isic2019")
# Official sizes for PAD/derm7pt; ISIC defaults to a tenth of the 25,331 images to stay quick.
DEFAULT_N = {"pad_ufes": 2298, "derm7pt": 1011, "isic2019": 2533}

PAD_COLUMNS = (
    "patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age", "pesticide",
    "gender", "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick",
    "region", "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed", "bleed", "elevation",
    "img_id", "biopsed",
)
PAD_IMAGE_FOLDERS = ("images/imgs_part_1", "images/imgs_part_2", "images/imgs_part_3")
ISIC_GT_FILE = "ISIC_2019_Training_GroundTruth.csv"
ISIC_META_FILE = "ISIC_2019_Training_Metadata.csv"
ISIC_IMAGE_DIR = "ISIC_2019_Training_Input"
ISIC_GT_COLUMNS = ("image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
ISIC_META_COLUMNS = ("image", "age_approx", "anatom_site_general", "lesion_id", "sex")
DERM7PT_COLUMNS = (
    "case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
    "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
    "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm", "case_id",
    "notes",
)
DERM7PT_SPLITS = ("train", "valid", "test")

# ---------------------------------------------------------------------------------------------------------
# Appearance model
# ---------------------------------------------------------------------------------------------------------
# A "look" is a flat vector so that two classes' looks can be blended linearly (difficulty > 0).
_LOOK_FIELDS = ("centre", "edge", "tex_rgb", "blotch_rgb", "tex_amp", "tex_freq", "tex_dots", "blotch", "lobe",
                "lobes", "aspect", "soft", "size")
_LOOK_WIDTH = {"centre": 3, "edge": 3, "tex_rgb": 3, "blotch_rgb": 3}


def _look(*values) -> np.ndarray:
    flat: list[float] = []
    for v in values:
        flat.extend(v if isinstance(v, tuple) else (v,))
    return np.asarray(flat, dtype=np.float64)


def _unpack(vec: np.ndarray) -> dict[str, np.ndarray | float]:
    out, i = {}, 0
    for name in _LOOK_FIELDS:
        w = _LOOK_WIDTH.get(name, 1)
        out[name] = vec[i:i + w].copy() if w > 1 else float(vec[i])
        i += w
    return out


# Loosely after the clinical picture of each diagnosis; what matters is that classes differ in colour,
# border, texture and size. Fields: centre rgb, rim rgb, texture rgb, blotch rgb, texture amount,
# texture cycles per radius, dots (1) vs stripes (0), blotch amount, border irregularity, border lobes,
# aspect ratio, edge softness (fraction of radius), radius (fraction of the half-width).
_LOOKS = {
    "NEV": _look((0.42, 0.26, 0.15), (0.56, 0.38, 0.25), (0.25, 0.15, 0.08), (0.42, 0.26, 0.15),
                 0.25, 5.0, 1.0, 0.0, 0.03, 3.0, 1.10, 0.08, 0.36),
    "MEL": _look((0.16, 0.09, 0.08), (0.42, 0.24, 0.15), (0.05, 0.04, 0.05), (0.42, 0.48, 0.62),
                 0.30, 4.0, 0.3, 0.65, 0.15, 5.0, 1.35, 0.04, 0.46),
    "BCC": _look((0.88, 0.66, 0.66), (0.78, 0.48, 0.48), (0.72, 0.10, 0.16), (0.97, 0.93, 0.93),
                 0.45, 7.0, 0.0, 0.45, 0.08, 4.0, 1.15, 0.05, 0.38),
    "ACK": _look((0.80, 0.44, 0.38), (0.84, 0.58, 0.50), (0.93, 0.87, 0.78), (0.80, 0.44, 0.38),
                 0.40, 11.0, 1.0, 0.0, 0.12, 5.0, 1.35, 0.14, 0.40),
    "SCC": _look((0.66, 0.22, 0.18), (0.80, 0.44, 0.34), (0.45, 0.10, 0.08), (0.86, 0.76, 0.40),
                 0.25, 6.0, 1.0, 0.75, 0.12, 5.0, 1.20, 0.06, 0.42),
    "SEK": _look((0.52, 0.38, 0.20), (0.40, 0.28, 0.15), (0.22, 0.15, 0.08), (0.52, 0.38, 0.20),
                 0.45, 4.0, 1.0, 0.0, 0.06, 3.0, 1.30, 0.02, 0.40),
    "DF": _look((0.86, 0.80, 0.72), (0.52, 0.36, 0.26), (0.70, 0.58, 0.50), (0.95, 0.92, 0.88),
                0.15, 3.0, 0.0, 0.30, 0.04, 3.0, 1.05, 0.10, 0.30),
    "VASC": _look((0.62, 0.07, 0.22), (0.44, 0.10, 0.32), (0.30, 0.02, 0.14), (0.62, 0.07, 0.22),
                  0.45, 5.0, 1.0, 0.0, 0.05, 4.0, 1.10, 0.03, 0.32),
    "MISC": _look((0.60, 0.34, 0.40), (0.66, 0.50, 0.46), (0.40, 0.20, 0.30), (0.88, 0.84, 0.80),
                  0.30, 6.0, 0.5, 0.35, 0.10, 4.0, 1.20, 0.08, 0.36),
}
_LOOKS.update(AK=_LOOKS["ACK"], NV=_LOOKS["NEV"], BKL=_LOOKS["SEK"], SK=_LOOKS["SEK"])

# derm7pt sub-diagnoses: MISC is a mixture of distinct entities; a few others get a tint of the centre colour.
_RAW_LOOK = {"vascular lesion": "VASC", "dermatofibroma": "DF"}
_RAW_TINT = {
    "blue nevus": ((0.30, 0.38, 0.55), 0.45), "dermal nevus": ((0.75, 0.55, 0.45), 0.35),
    "melanoma (in situ)": ((0.45, 0.30, 0.20), 0.30), "melanoma (more than 1.5 mm)": ((0.10, 0.06, 0.08), 0.30),
    "lentigo": ((0.55, 0.40, 0.28), 0.40), "melanosis": ((0.50, 0.36, 0.28), 0.40),
}

# derm7pt criteria markers, one per criterion in canonical order (PN, STR, PIG, RS, DaG, BWV, VS), placed on a
# ring around the lesion so that each criterion lives in its own image region.
_MARKER_RGB = ((0.40, 0.25, 0.12), (0.30, 0.18, 0.10), (0.22, 0.14, 0.10), (0.45, 0.55, 0.75),
               (0.10, 0.08, 0.07), (0.45, 0.55, 0.70), (0.80, 0.12, 0.15))
_RS_RGB = {"blue areas": (0.40, 0.50, 0.72), "white areas": (0.93, 0.93, 0.93), "combinations": (0.68, 0.72, 0.85)}
_MARKER_RING = 0.76


@dataclass
class _Job:
    """One image to write: where, how, and which label cues it carries."""
    path: Path
    fmt: str                      # "PNG" or "JPEG"
    look: np.ndarray
    alt_looks: np.ndarray         # other classes' looks, for blending under difficulty
    dermoscopic: bool
    rgba: bool = False
    skin_u: float | None = None   # skin darkness in [0, 1] when known (PAD fitspatrick)
    lesion_scale: float = 1.0
    vignette_p: float = 0.0
    markers: tuple[tuple[int, str], ...] | None = None   # derm7pt criteria (code, raw string)
    marker_contrast: float = 1.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.clip(x, -30, 30)))


def _lerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    return a + (b - a) * w


def _marker_style(task_index: int, code: int, raw: str) -> np.ndarray:
    """(alpha, radius, r, g, b, stripes): code 0 draws nothing, 1 a plain disc, 2 a larger, darker striped disc."""
    base = np.asarray(_RS_RGB.get(raw, _MARKER_RGB[task_index]) if task_index == 3 else _MARKER_RGB[task_index])
    radius = {0: 0.095, 1: 0.095, 2: 0.125}[code]
    if task_index == 2 and code:        # pigmentation: diffuse blotches are larger than localized ones
        radius *= 1.15 if raw.startswith("diffuse") else 0.85
    if code == 2:
        return np.array([1.0, radius, *(base * 0.5), 1.0])
    return np.array([0.0 if code == 0 else 1.0, radius, *base, 0.0])


def _draw(rng: np.random.Generator, job: _Job, size: int, difficulty: float) -> dict[str, np.ndarray]:
    """Per-image random parameters; one generator per image keeps images independent of batching."""
    look = job.look
    if difficulty > 0 and len(job.alt_looks):
        other = job.alt_looks[rng.integers(len(job.alt_looks))]
        look = _lerp(look, other, rng.uniform(0.0, 0.5 * difficulty))
    lk = _unpack(look)
    sd = 0.03 + 0.05 * difficulty      # mostly brightness, so that hues stay plausible
    jitter = rng.normal(0.0, sd) + rng.normal(0.0, sd / 3, 3)
    centre, edge = lk["centre"] + jitter, lk["edge"] + jitter

    u = job.skin_u if job.skin_u is not None else rng.uniform(0.0, 0.7)
    u = float(np.clip(u + rng.normal(0.0, 0.05), 0.0, 1.0))
    if job.dermoscopic:     # dermoscopy: pinker, evenly lit skin, larger centred lesion
        skin = _lerp(np.array([0.90, 0.66, 0.58]), np.array([0.66, 0.44, 0.36]), u)
        grad, pos_sd, scale, tex_scale = rng.uniform(0.0, 0.08), 0.08, 1.45, 1.0
    else:                   # clinical photo: paler skin, lighting gradient, smaller off-centre lesion
        skin = _lerp(np.array([0.93, 0.78, 0.68]), np.array([0.56, 0.39, 0.29]), u)
        grad, pos_sd, scale, tex_scale = rng.uniform(0.05, 0.25), 0.15, 1.05, 0.6
        centre, edge = _lerp(centre, skin, 0.2), _lerp(edge, skin, 0.2)
    skin = skin + rng.normal(0.0, 0.02, 3)
    radius = lk["size"] * scale * job.lesion_scale * rng.uniform(0.8, 1.2)

    n_m = 7
    mk = np.zeros((n_m, 6))
    mpos = np.zeros((n_m, 2))
    if job.markers is not None:
        angles = -np.pi / 2 + 2 * np.pi * np.arange(n_m) / n_m
        mpos = np.stack([np.cos(angles), np.sin(angles)], 1) * _MARKER_RING
        mpos = mpos + rng.normal(0.0, 0.02 + 0.03 * difficulty, (n_m, 2))
        for m, (code, raw) in enumerate(job.markers):
            style = _marker_style(m, code, raw)
            k = DERM7PT_TASKS[m + 1].num_classes
            if difficulty > 0:      # blend towards another class's marker so criteria are not trivial
                other = int((code + rng.integers(1, k)) % k)
                style = _lerp(style, _marker_style(m, other, raw), rng.uniform(0.0, 0.45 * difficulty))
            style[0] *= job.marker_contrast * (1.0 - 0.5 * difficulty * rng.uniform())
            mk[m] = style

    hairs = rng.random(3) < (0.35 if job.dermoscopic else 0.1)
    blotch_angle = rng.uniform(0, 2 * np.pi)
    return {
        "skin": skin, "grad": np.array(grad), "grad_dir": np.array(rng.uniform(0, 2 * np.pi)),
        # blotchy skin: mostly brightness, a little colour
        "coarse": rng.normal(0.0, 0.035, (5, 5, 1)) + rng.normal(0.0, 0.01, (5, 5, 3)),
        "cx": np.array(rng.normal(0.0, pos_sd)), "cy": np.array(rng.normal(0.0, pos_sd)),
        "R": np.array(radius), "aspect": np.array(lk["aspect"] * rng.uniform(0.9, 1.1)),
        "theta": np.array(rng.uniform(0, np.pi)), "lobe": np.array(lk["lobe"] * rng.uniform(0.5, 1.2)),
        "lobes": np.array(lk["lobes"]), "ph1": np.array(rng.uniform(0, 2 * np.pi)),
        "ph2": np.array(rng.uniform(0, 2 * np.pi)), "soft": np.array(max(lk["soft"], 0.02)),
        "centre": centre, "edge": edge, "tex_rgb": lk["tex_rgb"],
        "tex_amp": np.array(lk["tex_amp"] * tex_scale), "tex_freq": np.array(lk["tex_freq"]),
        "tex_dots": np.array(lk["tex_dots"]), "tex_angle": np.array(rng.uniform(0, np.pi)),
        "blotch_rgb": lk["blotch_rgb"], "blotch": np.array(lk["blotch"]),
        "bxy": rng.uniform(0.0, 0.5) * np.array([np.cos(blotch_angle), np.sin(blotch_angle)]),
        "hair_on": hairs.astype(float), "hair_xy": rng.uniform(-0.8, 0.8, (3, 2)),
        "hair_angle": rng.uniform(0, np.pi, 3), "hair_w": rng.uniform(0.012, 0.025, 3),
        "vignette": np.array(float(rng.random() < job.vignette_p)), "vig_r": np.array(rng.uniform(0.92, 1.1)),
        "mk": mk, "mpos": mpos,
        "noise": rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(0.015 + 0.05 * difficulty),
    }


def _render(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Render a batch of stacked parameters to uint8 images (B, S, S, 3); coordinates span [-1, 1]."""
    f32 = np.float32
    lin = ((np.arange(size) + 0.5) / size * 2 - 1).astype(f32)
    Y, X = lin[None, :, None], lin[None, None, :]

    def c(a: np.ndarray) -> np.ndarray:        # (B,) -> (B, 1, 1)
        return a.astype(f32)[:, None, None]

    def rgb(a: np.ndarray) -> np.ndarray:      # (B, 3) -> (B, 1, 1, 3)
        return a.astype(f32)[:, None, None, :]

    # skin: colour x lighting gradient + smooth blotchiness (bilinear upsampling of a 5x5 grid)
    shade = 1 + c(p["grad"]) * (X * c(np.cos(p["grad_dir"])) + Y * c(np.sin(p["grad_dir"])))
    g = p["coarse"].shape[1]
    pos = np.linspace(0, g - 1, size)
    lo = np.minimum(pos.astype(int), g - 2)
    W = np.zeros((size, g), dtype=f32)
    W[np.arange(size), lo] = 1 - (pos - lo)
    W[np.arange(size), lo + 1] = pos - lo
    smooth = (W @ p["coarse"].astype(f32).transpose(0, 3, 1, 2) @ W.T).transpose(0, 2, 3, 1)
    img = rgb(p["skin"]) * shade[..., None] + smooth

    # lesion in its own rotated, stretched frame with a lobed border
    dx, dy = X - c(p["cx"]), Y - c(p["cy"])
    ct, st = c(np.cos(p["theta"])), c(np.sin(p["theta"]))
    u = dx * ct + dy * st
    v = (dy * ct - dx * st) * c(p["aspect"])
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    R, lobe = c(p["R"]), c(p["lobe"])
    edge_r = R * (1 + lobe * np.sin(c(p["lobes"]) * phi + c(p["ph1"]))
                  + 0.5 * lobe * np.sin((c(p["lobes"]) + 2) * phi + c(p["ph2"])))
    t = rho / np.maximum(edge_r, 1e-3)
    mask = _sigmoid((1 - t) / c(p["soft"]))[..., None]
    w = np.clip(t, 0, 1)[..., None] ** 1.5
    col = _lerp(rgb(p["centre"]), rgb(p["edge"]), w)
    k = 2 * np.pi * c(p["tex_freq"]) / R
    ta = c(p["tex_angle"])
    stripes = 0.5 + 0.5 * np.sin(k * (u * np.cos(ta) + v * np.sin(ta)))
    dots = np.clip(np.sin(k * u) * np.sin(k * v), 0, 1)
    pattern = _lerp(stripes, dots, c(p["tex_dots"]))
    col = _lerp(col, rgb(p["tex_rgb"]), (c(p["tex_amp"]) * pattern)[..., None])
    bx, by = c(p["bxy"][:, 0]) * R, c(p["bxy"][:, 1]) * R
    bd = np.hypot(u - bx, v - by) / (0.45 * R)
    col = _lerp(col, rgb(p["blotch_rgb"]), (_sigmoid((1 - bd) / 0.2) * c(p["blotch"]))[..., None])
    img = _lerp(img, col, mask)

    # hairs: thin dark lines
    hair_rgb = np.array([0.12, 0.08, 0.06], dtype=f32)
    for h in range(p["hair_on"].shape[1]):
        if not p["hair_on"][:, h].any():
            continue
        a = c(p["hair_angle"][:, h])
        d = np.abs((X - c(p["hair_xy"][:, h, 0])) * np.sin(a) - (Y - c(p["hair_xy"][:, h, 1])) * np.cos(a))
        hm = np.clip(1 - d / c(p["hair_w"][:, h]), 0, 1) * c(p["hair_on"][:, h]) * 0.85
        img = _lerp(img, hair_rgb, hm[..., None])

    # dermoscope field of view
    vm = _sigmoid((np.hypot(X, Y) - c(p["vig_r"])) / 0.04) * c(p["vignette"])
    img = img * (1 - vm[..., None])

    # derm7pt criteria markers, drawn last so that they stay visible in the vignette
    mk, mpos = p["mk"].astype(f32), p["mpos"].astype(f32)
    for m in range(mk.shape[1]):
        if not mk[:, m, 0].any():
            continue
        mdx = X - c(mpos[:, m, 0])
        d = np.hypot(mdx, Y - c(mpos[:, m, 1]))
        alpha = _sigmoid((c(mk[:, m, 1]) - d) / 0.02) * c(mk[:, m, 0])
        stripe = 0.5 + 0.5 * np.sin(2 * np.pi * mdx / 0.12)
        mcol = rgb(mk[:, m, 2:5]) * (1 - 0.7 * (c(mk[:, m, 5]) * stripe))[..., None]
        img = _lerp(img, mcol, alpha[..., None])

    img = img + p["noise"]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _write_images(jobs: list[_Job], size: int, seed: int, difficulty: float, layout: str, progress: bool) -> None:
    tag = LAYOUTS.index(layout)
    batch = max(1, min(64, 2**20 // (size * size)))     # bounds memory for large images
    for folder in sorted({j.path.parent for j in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(jobs), disable=not progress, desc=f"synthetic {layout}", unit="img") as bar:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            params = [_draw(np.random.default_rng([seed, tag, start + i]), job, size, difficulty)
                      for i, job in enumerate(chunk)]
            stacked = {key: np.stack([q[key] for q in params]) for key in params[0]}
            for job, arr in zip(chunk, _render(stacked, size)):
                if job.rgba:    # opaque alpha channel, as in the real RGBA PNGs
                    arr = np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)])
                im = Image.fromarray(arr, "RGBA" if job.rgba else "RGB")
                if job.fmt == "JPEG":
                    im.save(job.path, format="JPEG", quality=92)
                else:
                    im.save(job.path, format="PNG", compress_level=1)   # noise barely compresses anyway
            bar.update(len(chunk))


# ---------------------------------------------------------------------------------------------------------
# CSV helpers
# ---------------------------------------------------------------------------------------------------------
def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]], crlf: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\r\n" if crlf else "\n")
        writer.writerow(header)
        writer.writerows(rows)


def _class_counts(prior: dict[str, float], n: int) -> dict[str, int]:
    """Row counts per class: the real skew, but every class gets at least ~5% (or 30 rows) of small sets."""
    names = list(prior)
    p = np.array([prior[k] for k in names], dtype=float)
    p = p / p.sum()
    p = np.maximum(p, min(0.05, 30.0 / n))
    p = p / p.sum()
    raw = p * n
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() > n:     # minimum-1 bumps can overshoot for tiny n
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while counts.sum() < n:
        counts[order[i % len(order)]] += 1
        i += 1
    return dict(zip(names, counts.tolist()))


def _pick(rng: np.random.Generator, options, probs) -> str:
    p = np.asarray(probs, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _shuffled_labels(rng: np.random.Generator, counts: dict[str, int]) -> list[str]:
    labels = [k for k, c in counts.items() for _ in range(c)]
    return [labels[i] for i in rng.permutation(len(labels))]


def _check_n(layout: str, n: int, minimum: int) -> None:
    if n < minimum:
        raise ValueError(f"synthetic: n={n} is too small for layout '{layout}': need at least {minimum} rows "
                         "so that every class appears")


def _tf(x: bool) -> str:
    return "True" if x else "False"


# ---------------------------------------------------------------------------------------------------------
# PAD-UFES-20
# ---------------------------------------------------------------------------------------------------------
_PAD_CLASSES = PAD_UFES_TASKS[0].classes       # ACK, BCC, MEL, NEV, SCC, SEK
_PAD_PRIOR = {"ACK": 730, "BCC": 845, "MEL": 52, "NEV": 244, "SCC": 192, "SEK": 235}
_PAD_REGIONS = ("ARM", "NECK", "FACE", "HAND", "FOREARM", "CHEST", "NOSE", "THIGH", "SCALP", "EAR", "BACK",
                "FOOT", "ABDOMEN", "LIP")
# The tables below are rounded from the real metadata, rows in _PAD_CLASSES order.
_PAD_REGION_P = (
    (0.12, 0.02, 0.19, 0.11, 0.36, 0.08, 0.03, 0.02, 0.01, 0.02, 0.02, 0.01, 0.005, 0.01),
    (0.05, 0.06, 0.31, 0.02, 0.08, 0.16, 0.15, 0.01, 0.005, 0.04, 0.11, 0.005, 0.005, 0.01),
    (0.13, 0.06, 0.10, 0.04, 0.10, 0.10, 0.005, 0.13, 0.005, 0.04, 0.27, 0.005, 0.04, 0.005),
    (0.04, 0.03, 0.16, 0.02, 0.04, 0.12, 0.005, 0.07, 0.04, 0.01, 0.35, 0.02, 0.08, 0.01),
    (0.11, 0.05, 0.15, 0.10, 0.15, 0.10, 0.05, 0.06, 0.01, 0.07, 0.09, 0.03, 0.01, 0.03),
    (0.08, 0.03, 0.42, 0.01, 0.09, 0.13, 0.01, 0.04, 0.02, 0.03, 0.10, 0.005, 0.03, 0.005),
)
# symptom -> per class (P(True), P(UNK))
_PAD_SYMPTOMS = {
    "itch": ((0.78, 0.003), (0.76, 0.0), (0.17, 0.0), (0.09, 0.004), (0.77, 0.02), (0.27, 0.0)),
    "grew": ((0.18, 0.01), (0.51, 0.31), (0.71, 0.21), (0.56, 0.15), (0.40, 0.39), (0.47, 0.03)),
    "hurt": ((0.07, 0.001), (0.36, 0.004), (0.01, 0.0), (0.02, 0.02), (0.22, 0.01), (0.01, 0.0)),
    "changed": ((0.04, 0.003), (0.10, 0.31), (0.65, 0.17), (0.09, 0.15), (0.15, 0.39), (0.03, 0.03)),
    "bleed": ((0.12, 0.0), (0.54, 0.01), (0.02, 0.0), (0.01, 0.004), (0.31, 0.0), (0.03, 0.0)),
    "elevation": ((0.28, 0.0), (0.85, 0.0), (0.27, 0.02), (0.65, 0.004), (0.78, 0.0), (0.78, 0.0)),
}
_PAD_AGE = {"ACK": (63, 12), "BCC": (63, 13.5), "MEL": (60, 14), "NEV": (37, 16), "SCC": (69, 12), "SEK": (67, 12)}
_PAD_DIAMETER = {"ACK": 11.0, "BCC": 12.0, "MEL": 15.2, "NEV": 12.1, "SCC": 12.2, "SEK": 9.4}
_PAD_FITZ = {"ACK": (0.09, 0.55, 0.31, 0.04, 0.01, 0.0), "BCC": (0.12, 0.59, 0.26, 0.03, 0.003, 0.0),
             "MEL": (0.06, 0.67, 0.19, 0.08, 0.0, 0.0), "NEV": (0.05, 0.45, 0.32, 0.16, 0.01, 0.0),
             "SCC": (0.08, 0.66, 0.23, 0.02, 0.01, 0.0), "SEK": (0.09, 0.49, 0.15, 0.23, 0.02, 0.02)}
_PAD_PATIENT_P = {   # P(True) per class: smoke, drink, pesticide, skin_cancer_history, cancer_history
    "ACK": (0.09, 0.22, 0.43, 0.41, 0.53), "BCC": (0.15, 0.25, 0.42, 0.48, 0.51),
    "MEL": (0.10, 0.35, 0.46, 0.29, 0.60), "NEV": (0.01, 0.23, 0.17, 0.43, 0.51),
    "SCC": (0.22, 0.25, 0.41, 0.46, 0.54), "SEK": (0.06, 0.21, 0.15, 0.47, 0.55),
}
_PAD_BACKGROUND_F = {"POMERANIA": 530, "GERMANY": 466, "ITALY": 250, "UNK": 95, "BRAZIL": 89, "NETHERLANDS": 19,
                     "PORTUGAL": 15, "POLAND": 7, "BRASIL": 3, "CZECH": 3, "AUSTRIA": 1, "SPAIN": 1, "ISRAEL": 1}
_PAD_BACKGROUND_M = {"POMERANIA": 533, "GERMANY": 482, "ITALY": 236, "UNK": 84, "BRAZIL": 81, "PORTUGAL": 20,
                     "NETHERLANDS": 20, "POLAND": 9, "NORWAY": 7, "FRANCE": 2, "SPAIN": 2}
_PAD_BIOPSED_P = {"ACK": 0.63, "NEV": 0.80, "SEK": 0.32}     # BCC/SCC/MEL are always biopsied
_PAD_BLOCK_CLASSES = ("ACK", "NEV", "SEK")                   # only these have the empty patient block
_PAD_FOLDER_P = (911, 659, 728)


def _group_sizes(rng: np.random.Generator, total: int, sizes, probs) -> list[int]:
    out = []
    while total > 0:
        s = min(int(_pick(rng, sizes, probs)), total)
        out.append(s)
        total -= s
    return out


def _pad_rows(rng: np.random.Generator, n: int) -> list[list[str]]:
    counts = _class_counts(_PAD_PRIOR, n)
    lesions = []    # (class, number of images)
    for cls, k in counts.items():
        lesions += [(cls, m) for m in _group_sizes(rng, k, (1, 2, 3, 4), (0.80, 0.17, 0.02, 0.01))]
    lesions = [lesions[i] for i in rng.permutation(len(lesions))]
    # ~35% of all rows lack the patient block, all of them non-biopsied ACK/NEV/SEK (real: 804/2298)
    block_rows = sum(counts[c] for c in _PAD_BLOCK_CLASSES)
    q = min(0.9, 0.35 * n / max(block_rows, 1))
    empty = [cls in _PAD_BLOCK_CLASSES and rng.random() < q for cls, _ in lesions]

    # patients: 1-4 lesions each, never mixing block-present and block-empty lesions
    patient_of = [0] * len(lesions)
    n_patients = [0, 0]
    patients_by_status: list[list[list[int]]] = [[], []]
    for status in (False, True):
        idx = [i for i, e in enumerate(empty) if e == status]
        pos = 0
        for s in _group_sizes(rng, len(idx), (1, 2, 3, 4), (0.75, 0.18, 0.05, 0.02)):
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
    bf_names, bf_p = list(_PAD_BACKGROUND_F), list(_PAD_BACKGROUND_F.values())
    bm_names, bm_p = list(_PAD_BACKGROUND_M), list(_PAD_BACKGROUND_M.values())
    patient: dict[int, dict[str, str]] = {}
    for pid in sorted(first_class):
        cls = first_class[pid]
        mu, sd = _PAD_AGE[cls]
        info = {"age": str(int(np.clip(round(rng.normal(mu, sd)), 6, 94)))}
        if not patient_ids[pid]:
            smoke, drink, pest, sch, ch = (rng.random(5) < np.array(_PAD_PATIENT_P[cls]))
            water = rng.random() < 0.62
            father = _pick(rng, bf_names, bf_p)
            mother = father if (rng.random() < 0.6 and father in _PAD_BACKGROUND_M) else _pick(rng, bm_names, bm_p)
            info.update(
                smoke=_tf(smoke), drink=_tf(drink), pesticide=_tf(pest), skin_cancer_history=_tf(sch),
                cancer_history=_tf(ch), has_piped_water=_tf(water),
                has_sewage_system=_tf(water if rng.random() < 0.8 else not water),
                background_father="" if rng.random() < 0.01 else father,
                background_mother="" if rng.random() < 0.01 else mother,
                gender=_pick(rng, ("FEMALE", "MALE"), (0.5, 0.5)),
                fitspatrick=f"{float(_pick(rng, (1, 2, 3, 4, 5, 6), _PAD_FITZ[cls])):.1f}",
            )
        patient[pid] = info

    rows = []
    max_img = 1000      # the release numbers images 1..1000; names stay unique through patient and lesion
    for i, (cls, m) in enumerate(lesions):
        pid = patient_of[i]
        ci = _PAD_CLASSES.index(cls)
        info = patient[pid]
        d1 = d2 = ""
        if not empty[i]:
            a = float(np.clip(round(rng.lognormal(np.log(_PAD_DIAMETER[cls]) - 0.1, 0.45)), 2, 100))
            d1, d2 = f"{a:.1f}", f"{float(max(1, round(a * rng.uniform(0.5, 1.0)))):.1f}"
        sym = {}
        for name, table in _PAD_SYMPTOMS.items():
            pt, pu = table[ci]
            r = rng.random()
            sym[name] = "UNK" if r < pu else _tf(r < pu + pt * (1 - pu))
        biopsed = cls not in _PAD_BIOPSED_P or (not empty[i] and rng.random() < _PAD_BIOPSED_P[cls])
        region = _pick(rng, _PAD_REGIONS, _PAD_REGION_P[ci])
        for k in np.sort(rng.choice(np.arange(1, max_img + 1), m, replace=False)):
            rec = {c: info.get(c, "") for c in PAD_COLUMNS}
            rec.update(sym)
            rec.update(patient_id=f"PAT_{pid}", lesion_id=str(lesion_id[i]), region=region, diameter_1=d1,
                       diameter_2=d2, diagnostic=cls, img_id=f"PAT_{pid}_{lesion_id[i]}_{int(k)}.png",
                       biopsed=_tf(biopsed))
            rows.append([rec[c] for c in PAD_COLUMNS])
    return [rows[i] for i in rng.permutation(len(rows))]


def _pad_jobs(rng: np.random.Generator, root: Path, img_ids: list[str], labels: list[str],
              fitz: list[str]) -> list[_Job]:
    jobs, seen = [], set()
    folder_p = np.array(_PAD_FOLDER_P) / sum(_PAD_FOLDER_P)
    for img, cls, fz in zip(img_ids, labels, fitz):
        folder = PAD_IMAGE_FOLDERS[int(rng.choice(3, p=folder_p))]
        rgba = bool(rng.random() < 0.3)
        if img in seen:
            continue
        seen.add(img)
        try:    # darker skin for higher Fitzpatrick types when the field is known
            skin_u = (float(fz) - 1) / 5 * 0.8
            skin_u = None if math.isnan(skin_u) else skin_u
        except ValueError:
            skin_u = None
        jobs.append(_Job(root / folder / img, "PNG", _LOOKS[cls], _alt_looks(_PAD_CLASSES, cls), False,
                         rgba=rgba, skin_u=skin_u))
    return jobs


def _alt_looks(classes, cls: str) -> np.ndarray:
    return np.stack([_LOOKS[c] for c in classes if c != cls])


def _pad_generate(rng: np.random.Generator, root: Path, n: int) -> list[_Job]:
    _check_n("pad_ufes", n, len(_PAD_CLASSES))
    rows = _pad_rows(rng, n)
    _write_csv(root / "metadata.csv", PAD_COLUMNS, rows)
    col = {c: i for i, c in enumerate(PAD_COLUMNS)}
    return _pad_jobs(rng, root, [r[col["img_id"]] for r in rows], [r[col["diagnostic"]] for r in rows],
                     [r[col["fitspatrick"]] or "nan" for r in rows])


def _pad_from_csv(rng: np.random.Generator, root: Path, src: Path) -> list[_Job]:
    df = _read_source(src, ("img_id", "diagnostic"))
    labels = df["diagnostic"].astype(str).tolist()
    _check_values(src, "diagnostic", labels, _PAD_CLASSES)
    _copy(src, root / "metadata.csv")
    fitz = df["fitspatrick"].astype(str).tolist() if "fitspatrick" in df else ["nan"] * len(df)
    return _pad_jobs(rng, root, df["img_id"].astype(str).tolist(), labels, fitz)


# ---------------------------------------------------------------------------------------------------------
# ISIC-2019
# ---------------------------------------------------------------------------------------------------------
_ISIC_PRIOR = {"MEL": 4522, "NV": 12875, "BCC": 3323, "AK": 867, "BKL": 2624, "DF": 239, "VASC": 253, "SCC": 628}
_ISIC_SITES = ("anterior torso", "head/neck", "lateral torso", "lower extremity", "oral/genital", "palms/soles",
               "posterior torso", "upper extremity")
_ISIC_SITE_P = {   # rounded from the real metadata
    "AK": (0.11, 0.71, 0.005, 0.08, 0.001, 0.01, 0.001, 0.09), "BCC": (0.34, 0.35, 0.005, 0.14, 0.001, 0.002, 0.06, 0.11),
    "BKL": (0.19, 0.43, 0.005, 0.18, 0.01, 0.002, 0.10, 0.10), "DF": (0.18, 0.002, 0.002, 0.59, 0.001, 0.002, 0.01, 0.22),
    "MEL": (0.30, 0.20, 0.002, 0.18, 0.002, 0.05, 0.10, 0.16), "NV": (0.34, 0.07, 0.002, 0.27, 0.002, 0.02, 0.18, 0.12),
    "SCC": (0.18, 0.28, 0.002, 0.29, 0.002, 0.02, 0.04, 0.18), "VASC": (0.35, 0.16, 0.002, 0.26, 0.01, 0.01, 0.10, 0.10),
}
_ISIC_SITE_MISSING = {"AK": 0.025, "BCC": 0.022, "BKL": 0.105, "DF": 0.017, "MEL": 0.028, "NV": 0.163,
                      "SCC": 0.01, "VASC": 0.123}
_ISIC_AGE = {"AK": (67, 12), "BCC": (66, 15), "BKL": (64, 15), "DF": (52, 15), "MEL": (61, 16), "NV": (45, 16),
             "SCC": (71, 11), "VASC": (53, 20)}
_ISIC_MALE = {"AK": 0.53, "BCC": 0.60, "BKL": 0.56, "DF": 0.51, "MEL": 0.54, "NV": 0.48, "SCC": 0.68, "VASC": 0.51}


def _isic_generate(rng: np.random.Generator, root: Path, n: int) -> list[_Job]:
    _check_n("isic2019", n, len(ISIC_CLASSES))
    labels = _shuffled_labels(rng, _class_counts(_ISIC_PRIOR, n))
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
        for s in _group_sizes(rng, len(idx), (1, 2, 3, 4, 6), (0.55, 0.22, 0.12, 0.07, 0.04)):
            members = idx[pos:pos + s]
            pos += s
            msk = [i for i in members if down[i]]
            other = [i for i in members if not down[i]]
            mu, sd = _ISIC_AGE[cls]
            for group in (msk, other):
                if not group:
                    continue
                source = "MSK4" if group is msk else _pick(rng, ("HAM", "BCN"), (0.45, 0.55))
                while True:
                    lid = f"{source}_{int(rng.integers(0, 10**7 if source != 'MSK4' else 2 * 10**4)):07d}"
                    if lid not in used:
                        used.add(lid)
                        break
                no_lesion = rng.random() < (0.6 if source == "MSK4" else (0.05 if cls in ("NV", "MEL", "BKL") else 0))
                info = {
                    "age_approx": "" if rng.random() < 0.017 else
                    str(int(np.clip(5 * round(rng.normal(mu, sd) / 5), 0, 85))),
                    "sex": "" if rng.random() < 0.015 else ("male" if rng.random() < _ISIC_MALE[cls] else "female"),
                    "anatom_site_general": "" if rng.random() < _ISIC_SITE_MISSING[cls]
                    else _pick(rng, _ISIC_SITES, _ISIC_SITE_P[cls]),
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
    gt_rows = [[name] + ["1.0" if c == labels[i] else "0.0" for c in ISIC_GT_COLUMNS[1:]]
               for i, name in enumerate(names)]
    meta_rows = [[name, fields[i]["age_approx"], fields[i]["anatom_site_general"], lesion[i], fields[i]["sex"]]
                 for i, name in enumerate(names)]
    _write_csv(root / ISIC_GT_FILE, ISIC_GT_COLUMNS, gt_rows, crlf=True)
    _write_csv(root / ISIC_META_FILE, ISIC_META_COLUMNS, meta_rows, crlf=True)
    return _isic_jobs(root, names, labels)


def _isic_jobs(root: Path, names: list[str], labels: list[str]) -> list[_Job]:
    jobs, seen = [], set()
    for name, cls in zip(names, labels):
        if name in seen:
            continue
        seen.add(name)
        jobs.append(_Job(root / ISIC_IMAGE_DIR / f"{name}.jpg", "JPEG", _LOOKS[cls],
                         _alt_looks(ISIC_CLASSES, cls), True, vignette_p=0.5))
    return jobs


def _isic_from_csv(rng: np.random.Generator, root: Path, src: Path) -> list[_Job]:
    gt = _read_source(src, ("image",) + ISIC_CLASSES)
    meta_src = src.parent / ISIC_META_FILE
    if not meta_src.is_file():
        raise ValueError(f"synthetic: from_csv {src}: the metadata file {meta_src} must sit beside it")
    onehot = gt[list(ISIC_CLASSES)].to_numpy(dtype=float)
    bad = np.flatnonzero((onehot == 1).sum(1) != 1)
    if len(bad):
        raise ValueError(f"synthetic: from_csv {src}: row {int(bad[0])} does not have exactly one positive "
                         f"among {ISIC_CLASSES}")
    labels = [ISIC_CLASSES[k] for k in onehot.argmax(1)]
    _copy(src, root / ISIC_GT_FILE)
    _copy(meta_src, root / ISIC_META_FILE)
    return _isic_jobs(root, gt["image"].astype(str).tolist(), labels)


# ---------------------------------------------------------------------------------------------------------
# derm7pt
# ---------------------------------------------------------------------------------------------------------
_D7_CRITERIA = DERM7PT_TASKS[1:]
_D7_DIAG_PRIOR = {"BCC": 42, "NEV": 575, "MEL": 252, "MISC": 97, "SK": 45}
_D7_DIAG_RAW = {   # sub-diagnosis frequencies within each class (real counts)
    "BCC": {"basal cell carcinoma": 1},
    "NEV": {"clark nevus": 399, "reed or spitz nevus": 79, "dermal nevus": 33, "blue nevus": 28,
            "congenital nevus": 17, "combined nevus": 13, "recurrent nevus": 6},
    "MEL": {"melanoma (less than 0.76 mm)": 102, "melanoma (in situ)": 64, "melanoma (0.76 to 1.5 mm)": 53,
            "melanoma (more than 1.5 mm)": 28, "melanoma metastasis": 4, "melanoma": 1},
    "MISC": {"vascular lesion": 29, "lentigo": 24, "dermatofibroma": 20, "melanosis": 16, "miscellaneous": 8},
    "SK": {"seborrheic keratosis": 1},
}
# P(criterion code | diagnosis), rounded from the real meta.csv; rows BCC, NEV, MEL, MISC, SK
_D7_CRITERIA_P = {
    "PN": ((0.93, 0.05, 0.02), (0.34, 0.53, 0.13), (0.32, 0.13, 0.55), (0.54, 0.38, 0.08), (0.73, 0.16, 0.11)),
    "STR": ((0.93, 0.01, 0.06), (0.70, 0.16, 0.14), (0.37, 0.03, 0.60), (0.81, 0.11, 0.08), (0.91, 0.02, 0.07)),
    "PIG": ((0.69, 0.01, 0.30), (0.65, 0.14, 0.21), (0.43, 0.01, 0.56), (0.67, 0.22, 0.11), (0.22, 0.33, 0.45)),
    "RS": ((0.83, 0.17), (0.79, 0.21), (0.56, 0.44), (0.90, 0.10), (0.93, 0.07)),
    "DaG": ((0.45, 0.03, 0.52), (0.20, 0.51, 0.29), (0.08, 0.04, 0.88), (0.56, 0.20, 0.24), (0.49, 0.27, 0.24)),
    "BWV": ((0.79, 0.21), (0.89, 0.11), (0.52, 0.48), (0.99, 0.01), (0.96, 0.04)),
    "VS": ((0.36, 0.62, 0.02), (0.90, 0.07, 0.03), (0.69, 0.13, 0.18), (0.86, 0.10, 0.04), (0.78, 0.18, 0.04)),
}
_D7_RAW_WEIGHT = {   # raw-string frequencies within a merged code (real counts)
    "diffuse regular": 115, "localized regular": 3, "diffuse irregular": 265, "localized irregular": 40,
    "blue areas": 116, "combinations": 99, "white areas": 38,
    "within regression": 46, "arborizing": 31, "comma": 23, "hairpin": 15, "wreath": 2,
    "dotted": 53, "linear irregular": 18,
}
_D7_DIFFICULTY = ("low", "medium", "high")
_D7_ELEVATION = ("flat", "palpable", "nodular")
_D7_LOCATION = ("back", "lower limbs", "abdomen", "upper limbs", "chest", "head neck", "acral", "buttocks",
                "genital areas")
_D7_MANAGEMENT = ("excision", "clinical follow up", "no further examination")
_D7_META_P = {   # per diagnosis: difficulty, elevation, location, P(male), management
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
    return _pick(rng, options, [_D7_RAW_WEIGHT.get(s, 1) for s in options])


def _d7_folders(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """(folder, file prefix) pairs in the release's style; some prefixes differ from their folder's name."""
    out, seen = [], set()
    alphabet = "abcdefghilmnz123"
    while len(out) < count:
        first, second = _pick(rng, "AFGN", (1, 1, 1, 1)), alphabet[int(rng.integers(len(alphabet)))]
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


def _d7_path(rng: np.random.Generator, folder: str, prefix: str, number: int) -> str:
    upper = rng.random() < 0.063     # '.JPG' files carry an upper-case name, as in the release
    stem = prefix.upper() if upper else prefix[0].upper() + prefix[1:].lower()
    suffix = "bis" if rng.random() < 0.005 else ""
    return f"{folder}/{stem}{number:03d}{suffix}.{'JPG' if upper else 'jpg'}"


def _d7_rows(rng: np.random.Generator, n: int) -> tuple[list[list[str]], dict[str, list[int]]]:
    diag_code = {name: i for i, name in enumerate(DERM7PT_TASKS[0].classes)}
    diags = _shuffled_labels(rng, _class_counts(_D7_DIAG_PRIOR, n))
    raw_diag = [_pick(rng, list(_D7_DIAG_RAW[d]), list(_D7_DIAG_RAW[d].values())) for d in diags]
    codes = {t.name: [int(_pick(rng, range(t.num_classes), _D7_CRITERIA_P[t.name][diag_code[d]])) for d in diags]
             for t in _D7_CRITERIA}
    # every criterion class must occur: move a case from a class that has spare members
    for t in _D7_CRITERIA:
        col = codes[t.name]
        for missing in range(t.num_classes):
            counts = np.bincount(col, minlength=t.num_classes)
            if counts[missing]:
                continue
            donors = [i for i, c in enumerate(col) if counts[c] >= 2]
            col[donors[int(rng.integers(len(donors)))]] = missing
    raws = {t.name: [_raw_for(rng, t, codes[t.name][i], diags[i]) for i in range(n)] for t in _D7_CRITERIA}

    folders = _d7_folders(rng, max(1, math.ceil(n / 30)))
    counters = [int(rng.integers(1, 20)) for _ in folders]
    n_same = max(1, round(0.009 * n)) if n >= 20 else 0     # cases whose clinical image is the dermoscopic one
    same = set(rng.choice(n, n_same, replace=False).tolist()) if n_same else set()
    rows = []
    for i in range(n):
        d = diags[i]
        diff_p, elev_p, loc_p, male_p, man_p = _D7_META_P[d]
        f = int(rng.integers(len(folders)))
        folder, prefix = folders[f]
        clinic = _d7_path(rng, folder, prefix, counters[f])
        derm = _d7_path(rng, folder, prefix, counters[f] + 1)
        counters[f] += 2 + int(rng.random() < 0.1)
        notes = ""
        if i in same:
            notes = ("Clinical missing and replaced with derm" if rng.random() < 0.5
                     else f"Replaced clinic {clinic} with derm {derm}")
            clinic = derm
        crit = {t.name: codes[t.name][i] for t in _D7_CRITERIA}
        k = int(rng.integers(1, 400))
        case_id = "" if rng.random() < 0.027 else f"{int(rng.integers(1, 5))}{_pick(rng, 'abdlm', (1,) * 5)}{k}{k + 1}{k + 2}"
        rec = {
            "case_num": str(i + 1), "diagnosis": raw_diag[i], "seven_point_score": str(seven_point_score(crit)),
            "level_of_diagnostic_difficulty": _pick(rng, _D7_DIFFICULTY, diff_p),
            "elevation": _pick(rng, _D7_ELEVATION, elev_p), "location": _pick(rng, _D7_LOCATION, loc_p),
            "sex": "male" if rng.random() < male_p else "female",
            "management": _pick(rng, _D7_MANAGEMENT, man_p),
            "clinic": clinic, "derm": derm, "case_id": case_id, "notes": notes,
        }
        rec.update({DERM7PT_TASK_COLUMNS[t.name]: raws[t.name][i] for t in _D7_CRITERIA})
        rows.append([rec[c] for c in DERM7PT_COLUMNS])

    # official split sizes ~41/20/39%, stratified on diagnosis; files hold 0-based row positions
    split: dict[str, list[int]] = {s: [] for s in DERM7PT_SPLITS}
    for d in _D7_DIAG_PRIOR:
        idx = [i for i in rng.permutation(n).tolist() if diags[i] == d]
        n_tr, n_va = round(0.41 * len(idx)), round(0.20 * len(idx))
        split["train"] += idx[:n_tr]
        split["valid"] += idx[n_tr:n_tr + n_va]
        split["test"] += idx[n_tr + n_va:]
    split = {s: [v[i] for i in rng.permutation(len(v))] for s, v in split.items()}
    return rows, split


def _d7_jobs(root: Path, df: pd.DataFrame) -> list[_Job]:
    diag_task = DERM7PT_TASKS[0]
    jobs, seen = [], set()
    images = (root / "images").resolve()
    for rec in df.to_dict("records"):
        raw_diag = rec["diagnosis"]
        cls = diag_task.classes[diag_task.raw_to_code[raw_diag]]
        look = _LOOKS[_RAW_LOOK.get(raw_diag, cls)]
        if raw_diag in _RAW_TINT:
            tint, w = _RAW_TINT[raw_diag]
            look = look.copy()
            look[0:3] = _lerp(look[0:3], np.array(tint), w)
        alt = _alt_looks(diag_task.classes, cls)
        markers = tuple((t.raw_to_code[rec[DERM7PT_TASK_COLUMNS[t.name]]], rec[DERM7PT_TASK_COLUMNS[t.name]])
                        for t in _D7_CRITERIA)
        # the dermoscopic image first: where clinic == derm, that file is the dermoscopic one
        for key, dermoscopic in (("derm", True), ("clinic", False)):
            rel = str(rec[key])
            path = root / "images" / rel
            if Path(rel).is_absolute() or images not in path.resolve().parents:
                raise ValueError(f"synthetic: derm7pt '{key}' path {rel!r} leaves the images/ folder")
            if rel in seen:
                continue
            seen.add(rel)
            jobs.append(_Job(path, "JPEG", look, alt, dermoscopic, lesion_scale=0.85,
                             vignette_p=1.0 if dermoscopic else 0.0, markers=markers,
                             marker_contrast=1.0 if dermoscopic else 0.6))
    return jobs


def _d7_generate(rng: np.random.Generator, root: Path, n: int) -> list[_Job]:
    _check_n("derm7pt", n, DERM7PT_TASKS[0].num_classes)
    rows, split = _d7_rows(rng, n)
    _write_csv(root / "meta" / "meta.csv", DERM7PT_COLUMNS, rows)
    for name, idx in split.items():
        _write_csv(root / "meta" / f"{name}_indexes.csv", ("indexes",), [[str(i)] for i in idx])
    return _d7_jobs(root, pd.DataFrame(rows, columns=list(DERM7PT_COLUMNS)))


def _d7_from_csv(rng: np.random.Generator, root: Path, src: Path) -> list[_Job]:
    label_cols = tuple(DERM7PT_TASK_COLUMNS[t.name] for t in DERM7PT_TASKS)
    df = _read_source(src, label_cols + ("clinic", "derm"))
    if df[["clinic", "derm"]].isna().any().any():
        raise ValueError(f"synthetic: from_csv file {src}: empty 'clinic' or 'derm' path")
    for t in DERM7PT_TASKS:
        col = DERM7PT_TASK_COLUMNS[t.name]
        _check_values(src, col, df[col].astype(str).tolist(), tuple(t.raw_to_code))
    index_files = [src.parent / f"{s}_indexes.csv" for s in DERM7PT_SPLITS]
    for f in index_files:
        if not f.is_file():
            raise ValueError(f"synthetic: from_csv {src}: the split file {f} must sit beside it")
    _copy(src, root / "meta" / "meta.csv")
    for f in index_files:
        _copy(f, root / "meta" / f.name)
    return _d7_jobs(root, df)


# ---------------------------------------------------------------------------------------------------------
# from_csv helpers and entry points
# ---------------------------------------------------------------------------------------------------------
def _read_source(src: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not src.is_file():
        raise ValueError(f"synthetic: from_csv file {src} does not exist")
    try:
        df = pd.read_csv(src)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"synthetic: from_csv file {src} is not a readable CSV: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"synthetic: from_csv file {src} lacks the column(s) {missing}")
    return df


def _copy(src: Path, dst: Path) -> None:
    """Byte copy (keeps CRLF and every quirk); a no-op when images are added beside the source file itself."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and dst.samefile(src):
        return
    shutil.copyfile(src, dst)


def _check_values(src: Path, column: str, values: list[str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"synthetic: from_csv file {src}: column '{column}' has unknown value(s) {unknown[:5]}")


_GENERATORS = {"pad_ufes": _pad_generate, "derm7pt": _d7_generate, "isic2019": _isic_generate}
_FROM_CSV = {"pad_ufes": _pad_from_csv, "derm7pt": _d7_from_csv, "isic2019": _isic_from_csv}

_README = """SYNTHETIC DATA - not a real dataset.

Written by skinlesion.data.synthetic (layout={layout}, seed={seed}, size={size}, difficulty={difficulty}{src}).
The files follow the official on-disk layout of the dataset so that the real readers accept them, but every
image is drawn by a program (a coloured blob on a skin-tone background whose appearance depends on the labels)
and shows no patient. {meta}
Do not report results on these data as results on the real dataset.
"""


def generate(layout: str, out: str | Path, n: int | None = None, size: int = 96, seed: int = 0,
             from_csv: str | Path | None = None, progress: bool = True, difficulty: float = 0.5) -> Path:
    """Write a synthetic dataset in the official layout ``layout`` under ``out`` and return ``out``.

    ``n`` rows (images for PAD/ISIC, cases for derm7pt; default per layout in ``DEFAULT_N``); ``size``-pixel
    square images; ``difficulty`` in [0, 1] blends class cues and adds noise. With ``from_csv`` the given
    official metadata file (and its companions) is copied and only the images are generated, from its labels.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"synthetic: unknown layout {layout!r}; expected one of {LAYOUTS}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"synthetic: size must be an integer >= 16, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"synthetic: seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ValueError(f"synthetic: difficulty must lie in [0, 1], got {difficulty!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"synthetic: n must be a positive integer, got {n!r}")
    if from_csv is not None and n is not None:
        raise ValueError("synthetic: n cannot be combined with from_csv (the file fixes the rows)")
    root = Path(out)
    rng = np.random.default_rng([int(seed), LAYOUTS.index(layout)])
    if from_csv is not None:
        jobs = _FROM_CSV[layout](rng, root, Path(from_csv))
    else:
        root.mkdir(parents=True, exist_ok=True)
        jobs = _GENERATORS[layout](rng, root, int(n if n is not None else DEFAULT_N[layout]))
    _write_images(jobs, int(size), int(seed), float(difficulty), layout, progress)
    meta = (f"The metadata file(s) were copied from {from_csv}; only the images are synthetic."
            if from_csv is not None else "The metadata are synthetic as well, drawn to resemble the real ones.")
    (root / "README.txt").write_text(_README.format(
        layout=layout, seed=seed, size=size, difficulty=difficulty, meta=meta,
        src=f", from_csv={Path(from_csv).name}" if from_csv is not None else ""), encoding="utf-8")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skinlesion.data.synthetic",
                                     description="Write a synthetic dataset in an official on-disk layout.")
    parser.add_argument("--layout", required=True, help=f"one of {', '.join(LAYOUTS)}")
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--n", type=int, default=None,
                        help="rows to generate (images; derm7pt: cases); default " +
                             ", ".join(f"{k} {v}" for k, v in DEFAULT_N.items()))
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-csv", default=None,
                        help="official metadata file whose rows get generated images (pad_ufes: metadata.csv; "
                             "derm7pt: meta/meta.csv; isic2019: ISIC_2019_Training_GroundTruth.csv)")
    parser.add_argument("--difficulty", type=float, default=0.5, help="0 = trivially separable .. 1 = hard")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        root = generate(args.layout, args.out, n=args.n, size=args.size, seed=args.seed,
                        from_csv=args.from_csv, progress=not args.no_progress, difficulty=args.difficulty)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
