"""Report figures (matplotlib, Agg backend): confusion matrices (Fig. 4.4), t-SNE of saved
features (Fig. 4.5) and a bar chart of the main metric per method."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import thesis_data as T  # noqa: E402
from .aggregate import order_methods  # noqa: E402


def _grid(n: int, size: float = 3.4):
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def _suptitle(fig, title: str) -> None:
    """The figure's title wrapped to its width and room made for it above the panels, so that it is never cut."""
    import textwrap

    width = max(40, int(fig.get_figwidth() * 11))   # characters of 10-pt text per line, roughly
    text = textwrap.fill(title, width)
    fig.suptitle(text, fontsize=10)
    lines = text.count("\n") + 1
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.25 * lines + 0.1) / fig.get_figheight()))


def confusion_figure(matrices: Mapping[str, np.ndarray], classes: Sequence[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrices, one panel per method (summed over the runs given)."""
    fig = confusion_fig(matrices, classes, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_fig(matrices: Mapping[str, np.ndarray], classes: Sequence[str], title: str):
    """The figure of :func:`confusion_figure`, not yet saved."""
    fig, axes = _grid(len(matrices))
    for ax, (label, cm) in zip(axes, matrices.items()):
        cm = np.asarray(cm, dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(norm.shape[0]):
            for j in range(norm.shape[1]):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(label, fontsize=9)
    _suptitle(fig, title)
    return fig


def tsne_figure(features: Mapping[str, tuple[np.ndarray, np.ndarray]], classes: Sequence[str], title: str, path: Path,
                max_points: int = 2000, seed: int = 0) -> Path:
    """2-D t-SNE of each method's saved feature vectors, coloured by true class."""
    from sklearn.manifold import TSNE

    fig, axes = _grid(len(features))
    rng = np.random.default_rng(seed)
    cmap = plt.get_cmap("tab10")
    for ax, (label, (x, y)) in zip(axes, features.items()):
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        y = np.asarray(y).astype(int)
        if len(x) > max_points:
            keep = rng.choice(len(x), max_points, replace=False)
            x, y = x[keep], y[keep]
        if len(x) < 5:
            ax.set_title(f"{label}: too few cases", fontsize=9)
            ax.axis("off")
            continue
        emb = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
        for k in np.unique(y):
            sel = y == k
            name = classes[k] if 0 <= k < len(classes) else str(k)
            ax.scatter(emb[sel, 0], emb[sel, 1], s=6, color=cmap(k % 10), label=f"{k}-{name}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=6, markerscale=2, loc="best")
    _suptitle(fig, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bar_figure(summary: pd.DataFrame, title: str, ylabel: str, path: Path) -> Path:
    """Main metric per method: Average-row mean with ±1 sample-std error bars, best run as a marker."""
    s = summary[summary.backbone == "Average"]
    methods = order_methods(s["method"])
    s = s.set_index("method").loc[methods]
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(methods) + 1.5), 3.8))
    means = 100 * s["mean"].astype(float).to_numpy()
    stds = 100 * s["std"].astype(float).fillna(0).to_numpy()
    ax.bar(x, means, yerr=stds, capsize=4, color="#4C72B0", alpha=0.85, label="mean ± std")
    ax.scatter(x, 100 * s["best"].astype(float).to_numpy(), marker="*", color="#C44E52", zorder=3, label="best run")
    ax.set_xticks(x, methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if len(means) and np.isfinite(means).any():
        top = np.nanmax(np.r_[means + stds, 100 * s["best"].astype(float).to_numpy()])
        ax.set_ylim(max(0.0, np.nanmin(means - stds) - 10), min(100.0, top + 5))
    for xi, n in zip(x, s["n"]):
        ax.text(xi, ax.get_ylim()[0], f"n={int(n)}", ha="center", va="bottom", fontsize=7, color="white")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_features(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    p = Path(run_dir) / "predictions" / "test_features.npz"
    if not p.exists():
        return None
    with np.load(p, allow_pickle=False) as z:
        return np.asarray(z["features"]), np.asarray(z["target"])


def backbone_for_figures(backbones: Sequence[str], preferred: str = "densenet") -> str:
    """The thesis shows DenseNet-121 (Figs. 4.4/4.5); otherwise the first backbone in thesis order."""
    for b in backbones:
        if T.backbone_label(b) == preferred:
            return b
    return sorted(backbones, key=T.backbone_order)[0]
