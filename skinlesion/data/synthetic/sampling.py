"""Random draws shared by the metadata simulators: class counts with the real skew, categorical picks, groups."""
from __future__ import annotations

import numpy as np


def class_counts(prior: dict[str, float], n: int) -> dict[str, int]:
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


def pick(rng: np.random.Generator, options, probs) -> str:
    p = np.asarray(probs, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def shuffled_labels(rng: np.random.Generator, counts: dict[str, int]) -> list[str]:
    labels = [k for k, c in counts.items() for _ in range(c)]
    return [labels[i] for i in rng.permutation(len(labels))]


def group_sizes(rng: np.random.Generator, total: int, sizes, probs) -> list[int]:
    """Split ``total`` rows into groups (images per lesion, lesions per patient) of the given size law."""
    out = []
    while total > 0:
        s = min(int(pick(rng, sizes, probs)), total)
        out.append(s)
        total -= s
    return out


def check_n(layout: str, n: int, minimum: int) -> None:
    if n < minimum:
        raise ValueError(f"synthetic: n={n} is too small for layout '{layout}': need at least {minimum} rows "
                         "so that every class appears")


def true_false(x: bool) -> str:
    """The releases' spelling of a boolean cell."""
    return "True" if x else "False"
