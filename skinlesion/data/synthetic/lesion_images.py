"""The lesion image renderer: a lesion on skin whose colour, border, texture and size follow a "look", plus
optional derm7pt criterion markers; batched in numpy so that thousands of small images take seconds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from skinlesion.data.tasks import DERM7PT_TASKS

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
LOOKS = {
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
LOOKS.update(AK=LOOKS["ACK"], NV=LOOKS["NEV"], BKL=LOOKS["SEK"], SK=LOOKS["SEK"])


def alt_looks(classes, cls: str) -> np.ndarray:
    """The other classes' looks, which ``difficulty`` blends a little into each image."""
    return np.stack([LOOKS[c] for c in classes if c != cls])


# derm7pt criteria markers, one per criterion in canonical order (PN, STR, PIG, RS, DaG, BWV, VS), placed on a
# ring around the lesion so that each criterion lives in its own image region.
_MARKER_RGB = ((0.40, 0.25, 0.12), (0.30, 0.18, 0.10), (0.22, 0.14, 0.10), (0.45, 0.55, 0.75),
               (0.10, 0.08, 0.07), (0.45, 0.55, 0.70), (0.80, 0.12, 0.15))
_RS_RGB = {"blue areas": (0.40, 0.50, 0.72), "white areas": (0.93, 0.93, 0.93), "combinations": (0.68, 0.72, 0.85)}
_MARKER_RING = 0.76


@dataclass
class ImageJob:
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
    markers: tuple[tuple[int, str], ...] | None = None   # derm7pt criteria (code, raw string), canonical order
    marker_contrast: tuple[float, ...] = (1.0,) * 7      # per criterion; 0 leaves that criterion out of the image
    # the saved file's width and height as multiples of the rendered square's side, less ``trim`` pixels each
    # (derm7pt photographs are landscape, and some pairs differ by a pixel or a few)
    aspect: tuple[float, float] = (1.0, 1.0)
    trim: tuple[int, int] = (0, 0)

    def file_size(self, size: int) -> tuple[int, int]:
        """(width, height) of the written file for a rendered side of ``size`` pixels; small images are trimmed
        by at most ``size // 32`` pixels (one at least), so that a few pixels stay a few percent."""
        limit = max(1, size // 32)
        return tuple(round(size * a) - min(t, limit) for a, t in zip(self.aspect, self.trim))


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


def _draw(rng: np.random.Generator, job: ImageJob, size: int, difficulty: float) -> dict[str, np.ndarray]:
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
            style[0] *= job.marker_contrast[m] * (1.0 - 0.5 * difficulty * rng.uniform())
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


def render(p: dict[str, np.ndarray], size: int) -> np.ndarray:
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


def write_images(jobs: list[ImageJob], size: int, seed: int, difficulty: float, tag: int, desc: str,
                 progress: bool) -> None:
    """Render and save every job; image i draws from the generator (seed, tag, i), independent of batching."""
    batch = max(1, min(64, 2**20 // (size * size)))     # bounds memory for large images
    for folder in sorted({j.path.parent for j in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(jobs), disable=not progress, desc=desc, unit="img") as bar:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            params = [_draw(np.random.default_rng([seed, tag, start + i]), job, size, difficulty)
                      for i, job in enumerate(chunk)]
            stacked = {key: np.stack([q[key] for q in params]) for key in params[0]}
            for job, arr in zip(chunk, render(stacked, size)):
                if job.rgba:    # opaque alpha channel, as in the real RGBA PNGs
                    arr = np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)])
                im = Image.fromarray(arr, "RGBA" if job.rgba else "RGB")
                if job.file_size(size) != im.size:
                    im = im.resize(job.file_size(size), Image.Resampling.BILINEAR)
                if job.fmt == "JPEG":
                    im.save(job.path, format="JPEG", quality=92)
                else:
                    im.save(job.path, format="PNG", compress_level=1)   # noise barely compresses anyway
            bar.update(len(chunk))
