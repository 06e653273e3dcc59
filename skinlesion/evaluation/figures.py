"""Report figures (matplotlib, Agg backend): confusion matrices (Fig. 4.4), t-SNE of saved
features (Fig. 4.5), a bar chart of the main metric per method, reliability diagrams and subgroup forest plots."""
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
from .subgroups import group_order  # noqa: E402


def _grid(n: int, size: float = 3.4):
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def _suptitle(fig, title: str) -> None:
    """The figure's title wrapped to its width and room made for it above the panels, so that it is never cut; then
    set just above the panels (square panels in wide cells leave room above them), so no blank band separates the
    two once the figure is saved with ``bbox_inches="tight"``."""
    import textwrap

    width = max(40, int(fig.get_figwidth() * 11))   # characters of 10-pt text per line, roughly
    text = textwrap.fill(title, width)
    sup = fig.suptitle(text, fontsize=10, va="bottom")
    lines = text.count("\n") + 1
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.25 * lines + 0.1) / fig.get_figheight()))
    renderer = fig.canvas.get_renderer()
    top = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes if ax.get_visible() and ax.axison)
    sup.set_y(min(top / fig.bbox.height + 0.08 / fig.get_figheight(), 1 - (0.25 * lines) / fig.get_figheight()))


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return path


def confusion_figure(matrices: Mapping[str, np.ndarray], classes: Sequence[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrices, one panel per method (summed over the runs given)."""
    return _save(confusion_fig(matrices, classes, title), path)


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
    return _save(fig, path)


def bar_figure(summary: pd.DataFrame, title: str, ylabel: str, path: Path) -> Path:
    """Main metric per method: Average-row mean with ±1 sample-std error bars, best run as a marker."""
    s = summary[summary.backbone == "Average"]
    methods = order_methods(s["method"])
    s = s.set_index("method").loc[methods]
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(methods) + 2.5), 3.8))
    means = 100 * s["mean"].astype(float).to_numpy()
    stds = 100 * s["std"].astype(float).fillna(0).to_numpy()
    ax.bar(x, means, yerr=stds, capsize=4, color="#4C72B0", alpha=0.85, label="mean ± std")
    ax.scatter(x, 100 * s["best"].astype(float).to_numpy(), marker="*", color="#C44E52", zorder=3, label="best run")
    ax.set_xticks(x, methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    # bar lengths are only comparable from zero; the best-run markers and error bars stay inside the axes
    top = np.nanmax(np.r_[means + stds, 100 * s["best"].astype(float).to_numpy(), 0.0]) if len(means) else 0.0
    ax.set_ylim(0.0, min(100.0, top + 5) if top > 0 else 100.0)
    for xi, n in zip(x, s["n"]):
        ax.text(xi, 1.0, f"n={int(n)}", ha="center", va="bottom", fontsize=7, color="white")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)   # beside, never on a bar
    fig.tight_layout()
    return _save(fig, path)


def reliability_figure(items: Mapping[str, Mapping], n_bins: int, title: str, path: Path) -> Path:
    """Top-label reliability diagrams, one panel per method (``items[method]``: ``prob``, ``y``, optional
    ``prob_ts`` after temperature scaling, ``temperature``, ``label``): accuracy against mean confidence per
    equal-width bin before (blue) and after (orange) scaling, with the share of cases per bin as grey bars."""
    from .calibration import ece, reliability

    fig, axes = _grid(len(items), size=3.0)
    for ax, (method, it) in zip(axes, items.items()):
        before = reliability(it["prob"], it["y"], n_bins)
        edges = before["edges"]
        share = before["counts"] / max(1, before["counts"].sum())
        ax.bar(edges[:-1], share, width=np.diff(edges), align="edge", color="#bbbbbb", alpha=0.6, label="cases (share)")
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
        e0 = ece(it["prob"], it["y"], n_bins)
        ax.plot(before["confidence"], before["accuracy"], "o-", ms=3, color="#4C72B0",
                label=f"before: ECE {100 * e0:.1f}")
        if it.get("prob_ts") is not None:
            after = reliability(it["prob_ts"], it["y"], n_bins)
            e1 = ece(it["prob_ts"], it["y"], n_bins)
            ax.plot(after["confidence"], after["accuracy"], "s-", ms=3, color="#DD8452",
                    label=f"T = {it['temperature']:.2f}: ECE {100 * e1:.1f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(it.get("label", method), fontsize=9)
        ax.legend(fontsize=6, loc="best")
    _suptitle(fig, title)
    return _save(fig, path)


def forest_figure(rows: pd.DataFrame, attributes: Sequence[str], methods: Sequence[str], title: str, xlabel: str,
                  path: Path) -> Path:
    """Per attribute (one panel), each group's score with its interval for each method (``rows``: ``attribute``,
    ``group``, ``method``, ``value``, ``lo``, ``hi``, ``too_small``, ``n_min``); groups too small to score are named
    but have no marker."""
    cmap = plt.get_cmap("tab10")
    heights = [max(2, rows[rows.attribute == a]["group"].nunique()) for a in attributes]
    fig, axes = plt.subplots(len(attributes), 1, figsize=(7.5, 0.5 + sum(0.32 * h + 0.6 for h in heights)),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    offsets = np.linspace(-0.25, 0.25, len(methods)) if len(methods) > 1 else np.zeros(1)
    for ax, attr in zip(axes[:, 0], attributes):
        r = rows[rows.attribute == attr]
        groups = group_order(r["group"])
        labels = []
        for i, grp in enumerate(groups):
            g = r[r.group == grp]
            small = bool(g["too_small"].all())
            labels.append(f"{grp} (n={int(g['n_min'].min())}{', too small' if small else ''})")
            for j, m in enumerate(methods):
                hit = g[(g.method == m) & ~g.too_small]
                if hit.empty or pd.isna(hit["value"].iloc[0]):
                    continue
                v, lo, hi = (100 * float(hit[c].iloc[0]) for c in ("value", "lo", "hi"))
                ax.errorbar(v, i + offsets[j], xerr=[[max(0.0, v - lo)], [max(0.0, hi - v)]], fmt="o", ms=4, capsize=2,
                            color=cmap(j % 10), label=m)
        ax.set_yticks(range(len(groups)), labels, fontsize=8)
        ax.set_ylim(len(groups) - 0.5, -0.5)
        ax.set_xlim(0, 100)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(attr, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=8)
    axes[-1, 0].set_xlabel(xlabel, fontsize=9)
    handles, labels = [], []
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:   # on the first panel's title line, right-aligned (the attribute name is on the left)
        axes[0, 0].legend(handles, labels, fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(labels),
                          frameon=False, borderaxespad=0.2, handletextpad=0.3, columnspacing=1.0)
    _suptitle(fig, title)
    return _save(fig, path)


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
