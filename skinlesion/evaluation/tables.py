"""Thesis-style tables from aggregated results, rendered to Markdown, CSV, LaTeX and HTML.

Values are stored as fractions and printed in % with one decimal, like the thesis. When a thesis
value exists for a cell (CSV data in ``evaluation/thesis/``) the cell also shows it and the
difference ``Δ = ours − thesis`` in percentage points. derm7pt tables are built from the canonical
task state (``skinlesion.data.tasks``) and only reordered for display.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.data.tasks import DERM7PT_AUC_CATEGORIES, DERM7PT_MELANOMA_CATEGORIES, DERM7PT_TASKS

from . import thesis_data as T
from .aggregate import order_backbones, order_methods
from .predictions import WITHHELD_CONDITIONS
from .subgroups import group_order

# thesis tables holding backbone × method BAC cells, and the matching Wilcoxon table
BACKBONE_TABLES = {("pad_ufes", "bac", "val"): ["table4_1", "table4_7"],
                   ("derm7pt", "bac", "test"): ["table4_2", "table4_8"],
                   ("isic2019", "bac", "val"): ["table4_3", "table4_9"]}
WILCOXON_TABLES = {("pad_ufes", "bac", "val"): "table4_4", ("derm7pt", "bac", "test"): "table4_5",
                   ("isic2019", "bac", "val"): "table4_6"}
TASK_MEAN_TABLES = ["table6_3", "table6_4", "table6_5", "table6_6", "table6_7", "table6_8"]
TASK_BEST_TABLES = ["table5_3", "table5_12", "table6_9"]

CANONICAL_TASKS = [t.name for t in DERM7PT_TASKS]
TASK_LAYOUTS = {
    "canonical": CANONICAL_TASKS,
    "t5_3": ["PN", "BWV", "VS", "PIG", "STR", "DaG", "RS", "DIAG"],
    "t6_3": ["BWV", "DaG", "PIG", "PN", "RS", "STR", "VS", "DIAG"],
    "t6_1": ["DIAG", "BWV", "STR", "PIG", "RS", "DaG", "PN", "VS"],
}
METRIC_ABBR = {"auc": "AUC", "precision": "PRE", "sensitivity": "SEN", "specificity": "SPE"}
SPLIT_NAME = {"val": "validation", "test": "test"}
BEST_BY_NAME = {"score": "the main metric", "avg_auc": "AVG AUC", "avg_acc": "AVG ACC"}
DATASET_NAME = {"pad_ufes": "PAD-UFES-20", "isic2019": "ISIC-2019", "derm7pt": "derm7pt (SPC)"}


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ formatting

def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def fmt_stat(mean: float | None, std: float | None = None, n: int | None = None, n_expected: int | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    s = _pct(mean)
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += f" ± {_pct(std)}"
    if n is not None and (n == 1 or (n_expected is not None and n != n_expected)):
        s += f" (n={n})"
    return s


def fmt_thesis(ours: float | None, ref: Mapping | None) -> str:
    if not ref:
        return ""
    s = f"{ref['value']:.1f}" + (f" ± {ref['std']:.1f}" if ref.get("std") is not None else "")
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return f" [{ref['table']}: {s}]"
    return f" [{ref['table']}: {s}; Δ {100 * ours - ref['value']:+.1f}]"


def _mode(values: Sequence[int]) -> int | None:
    vals = [v for v in values if v]
    return max(set(vals), key=vals.count) if vals else None


# ------------------------------------------------------------------------------- Chapter-4 tables

def backbone_table(summary: pd.DataFrame, dataset: str, main_metric: str, split: str, compare: bool = True,
                   kind: str = "mean") -> Table:
    """Backbones as rows (+ Average), methods as columns (T4.1–T4.3 / T4.7–T4.9 layout)."""
    s = summary[(summary.dataset == dataset) & (summary.main_metric == main_metric) & (summary.split == split)]
    methods = order_methods(s["method"])
    backbones = order_backbones([b for b in s["backbone"] if b != "Average"]) + ["Average"]
    thesis_tables = BACKBONE_TABLES.get((dataset, main_metric, split), []) if compare else []
    n_exp = _mode(list(s[s.backbone != "Average"]["n"]))
    rows = []
    for bb in backbones:
        label = "Average" if bb == "Average" else T.backbone_label(bb)
        row = [label]
        for m in methods:
            hit = s[(s.backbone == bb) & (s.method == m)]
            if hit.empty:
                row.append("")
                continue
            r = hit.iloc[0]
            if kind == "mean":
                n_e = n_exp if bb != "Average" else None
                cell = fmt_stat(r["mean"], r["std"], int(r["n"]), n_e)
                ours = r["mean"]
            else:
                cell = f"{_pct(r['best'])} ({r['best_run'].split(' ', 1)[-1] if bb != 'Average' else r['best_run']})"
                ours = r["best"]
            if kind == "mean" and thesis_tables:
                cell += fmt_thesis(ours, T.lookup(thesis_tables, label, m, main_metric))
            row.append(cell)
        rows.append(row)
    metric_name = {"bac": "BAC", "avg_acc": "AVG ACC", "avg_auc": "AVG AUC"}.get(main_metric, main_metric)
    what = "mean ± sample std (ddof=1) over runs" if kind == "mean" else "best single run (selected on this split; optimistic)"
    title = f"{DATASET_NAME.get(dataset, dataset)} {SPLIT_NAME.get(split, split)} {metric_name} (%): {what}"
    notes = []
    if thesis_tables:
        notes.append("[Tx.y: thesis value; Δ = ours − thesis in points] from "
                     + ", ".join(T.table_id(t) for t in thesis_tables))
    if kind == "mean":
        notes.append("Average row pools all runs of a method over backbones, as the thesis's Average rows do.")
    if n_exp:
        notes.append(f"(n=k) marks a single run or a run count other than the usual {n_exp}.")
    return Table(f"{dataset}_{split}_{main_metric}_backbones" + ("" if kind == "mean" else "_best"), title,
                 ["Backbone"] + methods, rows, notes)


# ------------------------------------------------------------------------------- derm7pt tables

def _row_groups(records: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """(row label, method, run paths) per method (per method and backbone when a method has several)."""
    out = []
    for m in order_methods(records["method"]):
        g = records[records.method == m]
        bbs = order_backbones(g["backbone"])
        for bb in bbs:
            label = m if len(bbs) == 1 else f"{m} [{T.backbone_label(bb)}]"
            out.append((label, m, list(g[g.backbone == bb]["run"])))
    return out


def _best_run(records: pd.DataFrame, runs: Sequence[str], method: str, by: str = "score") -> str:
    """The run with the highest ``by`` value (default: its main metric); first on ties."""
    # numpy masks: pandas' per-call overhead dominated large sweeps
    run = records["run"].to_numpy(dtype=object)
    keep = np.isin(run, list(runs)) & (records["method"].to_numpy(dtype=object) == method)
    names = run[keep]
    vals = records[by].to_numpy(dtype=float)[keep]
    return str(names[int(np.nanargmax(vals))]) if len(names) and not np.all(np.isnan(vals)) else str(names[0])


def _row_best(records: pd.DataFrame, runs: Sequence[str], method: str, kind: str, best_by: str) -> str | None:
    """The run a ``kind="best"`` row reports (see ``_best_run``), chosen once per row; None for means."""
    return None if kind == "mean" else _best_run(records, runs, method, best_by)


def _value_cell(details, label, runs, method, split, getter: Callable[[dict], float | None], kind: str,
                thesis: tuple[list[str], str, str] | None, best: str | None = None) -> str:
    """One cell: mean ± std of ``getter`` over ``runs``, or (any other ``kind``) its value for the run ``best``."""
    if kind == "mean":
        vals = np.array([np.nan if (v := getter(details[(r, method, split)])) is None else v for r in runs], dtype=float)
        vals = vals[~np.isnan(vals)]
        if not len(vals):
            return "–"
        mean, std = float(vals.mean()), (float(vals.std(ddof=1)) if len(vals) > 1 else None)
        cell, ours = fmt_stat(mean, std), mean
    else:
        ours = getter(details[(best, method, split)])
        cell = _pct(ours)
    if thesis:
        tables, column, metric = thesis
        cell += fmt_thesis(ours, T.lookup(tables, label.split(" [")[0], column, metric))
    return cell


def _derm7pt_records(records: pd.DataFrame, dataset: str, split: str, main_metric: str | None) -> pd.DataFrame:
    r = records[(records.dataset == dataset) & (records.split == split)]
    return r if main_metric is None else r[r.main_metric == main_metric]


def task_accuracy_table(records, details, split="test", main_metric=None, layout="canonical", kind="mean",
                        compare=True, best_by="score") -> Table:
    """Per-task ACC + AVG (T5.3 / T6.3–T6.9 layout)."""
    rec = _derm7pt_records(records, "derm7pt", split, main_metric)
    present = {t for k, m in details.items() if k[2] == split for t in m["tasks"]}
    tasks = [t for t in TASK_LAYOUTS[layout] if t in present]
    tables = (TASK_MEAN_TABLES if kind == "mean" else TASK_BEST_TABLES) if compare else []
    rows = []
    for label, method, runs in _row_groups(rec):
        best = _row_best(rec, runs, method, kind, best_by)
        row = [label]
        for t in tasks:
            row.append(_value_cell(details, label, runs, method, split,
                                   lambda m, t=t: m["tasks"].get(t, {}).get("acc"), kind,
                                   (tables, t, "acc") if tables else None, best))
        row.append(_value_cell(details, label, runs, method, split, lambda m: m.get("avg_acc"), kind,
                               (tables, "AVG", "acc") if tables else None, best))
        row.append(str(len(runs)))
        rows.append(row)
    return Table(f"derm7pt_{split}_{main_metric or 'all'}_task_acc" + ("" if kind == "mean" else "_best"),
                 f"derm7pt {SPLIT_NAME[split]} per-task ACC (%): "
                 + ("mean ± sample std over runs" if kind == "mean" else f"best run by {BEST_BY_NAME.get(best_by, best_by)}"),
                 ["Method"] + tasks + ["AVG", "runs"], rows,
                 [f"task order: {layout}"] + (["thesis: " + ", ".join(map(T.table_id, tables))] if tables else []))


# Chapter-5 configuration tables: the sweep preset that made a run picks the thesis tables to compare with.
CH5_TABLES = {"table5_6": ["table5_6", "table5_9"], "table5_7": ["table5_7", "table5_6"],
              "table5_10": ["table5_10"], "table5_15": ["table5_15"], "table5_16": ["table5_16"],
              "table5_17": ["table5_17"], "table5_18": ["table5_18"]}
CH5_ALL_TABLES = ["table5_6", "table5_9", "table5_7", "table5_10", "table5_15", "table5_16", "table5_17", "table5_18"]
# backbone -> the suffix of the thesis's chapter-5 row labels (Swin-T, the default, has none)
CH5_SUFFIX = {"resnet50": "ResNet50", "convnext_tiny": "ConvNeXt", "densenet201": "DenseNet201",
              "mobilenetv3_small_100": "MN", "swin_tiny_patch4_window7_224": None}
# our method label -> thesis row label (before the backbone suffix)
CH5_ROWS = {"AMMFM": "AFF+AAB", "AFF-AAB": "AFF+AAB", "PEMM": "PS+SCA+BL", "PS-CAT": "PS",
            "PEMM-shared-classifier": "PS+SCA+BL (shared classifiers)"}
CH5_SWIN_ROWS = {"AFF+AAB": "AFF+AAB (AMMFM)", "PS+SCA+BL": "PS+SCA+BL (PEMM)"}


def ch5_thesis_row(method: str, backbone: str | None) -> str:
    """The thesis's row label for one of our chapter-5 configurations on ``backbone``."""
    key = T.backbone_key(backbone)
    suffix = CH5_SUFFIX.get(key, key)
    if method.startswith("Single-"):
        return f"{'Clic' if method.endswith('clinic') else 'Derm'} ({suffix or 'ST'})"
    if method.startswith("PEMM W="):
        return "EQ" if method.endswith("eq") else "W=" + method.split("=", 1)[1]
    if method == "AMMFM-reversed":
        return "AFF+AAB reversed (Clic ST / Derm MN)"
    base = CH5_ROWS.get(method, method)
    return f"{base} ({suffix})" if suffix else CH5_SWIN_ROWS.get(base, base)


def configuration_table(records: pd.DataFrame, jobs, split: str = "test", compare: bool = True) -> Table:
    """derm7pt eight-task configurations as rows: AVG AUC and AVG ACC mean ± std over runs and the thesis's
    parameter count (Tables 5.6-5.18 layout), thesis values beside each cell."""
    rec = _derm7pt_records(records, "derm7pt", split, "avg_acc")
    info = {str(j.path): j.info for j in jobs if getattr(j, "ok", False)}
    rows, used = [], set()
    for method in order_methods(rec["method"]):
        g = rec[rec.method == method]
        for bb in order_backbones(g["backbone"]):
            runs = g[g.backbone == bb]
            groups = {str(e) for e in runs["experiment"].dropna()}   # run.json's experiment (evaluate_jobs)
            tables = [t for grp in sorted(groups) for t in CH5_TABLES.get(grp, [])] or CH5_ALL_TABLES
            row_label = ch5_thesis_row(method, bb)
            cells = [method, T.backbone_key(bb)]
            for metric, col in (("auc", "avg_auc"), ("acc", "avg_acc")):
                vals = runs[col].dropna().to_numpy(dtype=float)
                mean = float(vals.mean()) if len(vals) else None
                std = float(vals.std(ddof=1)) if len(vals) > 1 else None
                ref = T.lookup(tables, row_label, "AVG", metric) if compare else None
                if ref:
                    used.add(ref["table"])
                cells.append(fmt_stat(mean, std) + fmt_thesis(mean, ref))
            counts = [((info.get(r) or {}).get("params") or {}).get("thesis_count") for r in runs["run"]]
            counts = [c for c in counts if c]
            ref = T.lookup(tables, row_label, "Params", "params_M") if compare else None
            cells.append(("–" if not counts else f"{counts[0] / 1e6:.2f}")
                         + (f" [{ref['table']}: {ref['value']:.2f}]" if ref else ""))
            cells.append(str(len(runs)))
            rows.append(cells)
    notes = ["AVG AUC: mean of the 17 one-vs-rest AUCs of the non-absent categories; AVG ACC: mean of the eight "
             "task accuracies; both of each run's reported output (the searched weighting where a run has one).",
             "Params: the thesis's convention (backbones with their unused ImageNet classifier)."]
    if used:
        notes.append("[Tx.y: thesis value; Δ = ours − thesis in points] from " + ", ".join(sorted(used)))
    return Table(f"derm7pt_{split}_configurations", f"derm7pt {SPLIT_NAME[split]}: AVG AUC and AVG ACC (%), "
                 "mean ± sample std over runs, per configuration",
                 ["Configuration", "Backbone", "AVG AUC", "AVG ACC", "Params (M)", "runs"], rows, notes)


def _cat(t: str, c: str) -> str:
    return f"{t}-{c}"


def category_auc_table(records, details, split="test", main_metric=None, kind="mean", compare=True,
                       best_by="score") -> Table:
    """AUC of the 17 non-absent categories + AVG AUC (T5.2 layout)."""
    rec = _derm7pt_records(records, "derm7pt", split, main_metric)
    present = {c for k, m in details.items() if k[2] == split for c in m.get("category_auc", {})}
    cats = [_cat(t, c) for t, c in DERM7PT_AUC_CATEGORIES if _cat(t, c) in present]
    tables = (["table5_2", "table5_11"] if kind == "best" else ["table5_8"]) if compare else []
    rows = []
    for label, method, runs in _row_groups(rec):
        best = _row_best(rec, runs, method, kind, best_by)
        row = [label] + [_value_cell(details, label, runs, method, split,
                                     lambda m, c=c: m.get("category_auc", {}).get(c), kind,
                                     (tables, c, "auc") if tables else None, best) for c in cats]
        row.append(_value_cell(details, label, runs, method, split, lambda m: m.get("avg_auc"), kind,
                               (tables, "AVG", "auc") if tables else None, best))
        rows.append(row)
    return Table(f"derm7pt_{split}_{main_metric or 'all'}_category_auc" + ("" if kind == "mean" else "_best"),
                 f"derm7pt {SPLIT_NAME[split]} one-vs-rest AUC per category (%): "
                 + ("mean ± sample std over runs" if kind == "mean" else f"best run by {BEST_BY_NAME.get(best_by, best_by)}"),
                 ["Method"] + cats + ["AVG"], rows, ["AVG = mean of the defined category AUCs (17 when all present)"]
                 + (["thesis: T5.2"] if tables else []))


def melanoma_table(records, details, split="test", main_metric=None, kind="mean", compare=True,
                   best_by="score") -> Table:
    """AUC/PRE/SEN/SPE of the 8 melanoma-related categories + their mean (T5.4 layout)."""
    rec = _derm7pt_records(records, "derm7pt", split, main_metric)
    present = {c for k, m in details.items() if k[2] == split for c in m.get("melanoma", {}).get("categories", {})}
    cats = [_cat(t, c) for t, c in DERM7PT_MELANOMA_CATEGORIES if _cat(t, c) in present]
    tables = ["table5_4", "table5_14"] if compare and kind == "best" else []
    groups = [(label, method, runs, _row_best(rec, runs, method, kind, best_by))
              for label, method, runs in _row_groups(rec)]
    rows = []
    for metric in ("auc", "precision", "sensitivity", "specificity"):
        for label, method, runs, best in groups:
            row = [METRIC_ABBR[metric], label]
            for c in cats:
                row.append(_value_cell(details, label, runs, method, split,
                                       lambda m, c=c, metric=metric: m["melanoma"]["categories"].get(c, {}).get(metric),
                                       kind, (tables, c, metric) if tables else None, best))
            row.append(_value_cell(details, label, runs, method, split,
                                   lambda m, metric=metric: m["melanoma"]["mean"].get(metric), kind,
                                   (tables, "AVG", metric) if tables else None, best))
            rows.append(row)
    return Table(f"derm7pt_{split}_{main_metric or 'all'}_melanoma" + ("" if kind == "mean" else "_best"),
                 f"derm7pt {SPLIT_NAME[split]} melanoma-related categories (%): "
                 + ("mean ± sample std over runs" if kind == "mean" else f"best run by {BEST_BY_NAME.get(best_by, best_by)}"),
                 ["Metric", "Method"] + cats + ["AVG"], rows,
                 ["one-vs-rest from each task's argmax confusion matrix; AUC from the category probability"]
                 + (["thesis: T5.4"] if tables else []))


def all_categories_table(records, details, split="test", main_metric=None, kind="best", compare=True,
                         best_by="score") -> Table:
    """SEN/SPE/PRE/AUC of all 24 categories (T6.10), canonical order."""
    rec = _derm7pt_records(records, "derm7pt", split, main_metric)
    present = {}
    for k, m in details.items():
        if k[2] == split:
            for t, tm in m["tasks"].items():
                present.setdefault(t, list(tm["per_class"]))
    cats = [(t, c) for t in CANONICAL_TASKS if t in present for c in present[t]]
    tables = ["table6_10"] if compare and kind == "best" else []
    rows = []
    for label, method, runs in _row_groups(rec):
        best = _row_best(rec, runs, method, kind, best_by) if cats else None   # no cells: nothing to choose for
        for metric in ("sensitivity", "specificity", "precision", "auc"):
            row = [label, METRIC_ABBR[metric]]
            for t, c in cats:
                row.append(_value_cell(details, label, runs, method, split,
                                       lambda m, t=t, c=c, metric=metric: m["tasks"][t]["per_class"][c][metric],
                                       kind, (tables, _cat(t, c), metric) if tables else None, best))
            rows.append(row)
    return Table(f"derm7pt_{split}_{main_metric or 'all'}_all_categories" + ("" if kind == "mean" else "_best"),
                 f"derm7pt {SPLIT_NAME[split]} SEN/SPE/PRE/AUC of every category (%): "
                 + ("mean ± sample std over runs" if kind == "mean" else f"best run by {BEST_BY_NAME.get(best_by, best_by)}"),
                 ["Method", "Metric"] + [_cat(t, c) for t, c in cats], rows,
                 ["– = undefined on this split (no positives / never predicted)"] + (["thesis: T6.10"] if tables else []))


def searched_weights_table(jobs) -> Table | None:
    """The weights FusionM4Net's stage 2 searched (Tables 6.5 / 6.6 layout): Fusion Scheme 1's W_clin, W_derm,
    W_fusion and Fusion Scheme 2's w (= W_1 of P3 = W_1·P1 + W_2·P2), mean ± sample std over runs, in %."""
    rows_by_method: dict[str, list[dict]] = {}
    for j in jobs:
        if not getattr(j, "ok", False) or j.path is None or not (j.path / "metrics.json").is_file():
            continue
        try:
            m = json.loads((j.path / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if "fusion_scheme2" not in m:
            continue
        w1 = m.get("fusion_scheme1", {}).get("weights", {})
        rows_by_method.setdefault(str(j.info.get("method")), []).append(
            {"W_clin": w1.get("clinic"), "W_derm": w1.get("derm"), "W_fusion": w1.get("fusion"),
             "W_1": m["fusion_scheme2"].get("w")})
    if not rows_by_method:
        return None
    cols = [("W_clin", "table6_5", "P1 (ours)"), ("W_derm", "table6_5", "P1 (ours)"),
            ("W_fusion", "table6_5", "P1 (ours)"), ("W_1", "table6_6", "P3 (ours)")]
    rows = []
    for method, runs in sorted(rows_by_method.items()):
        row = [method]
        for col, table, thesis_row in cols:
            vals = np.array([r[col] for r in runs if r[col] is not None], dtype=float)
            mean = float(vals.mean()) if len(vals) else None
            std = float(vals.std(ddof=1)) if len(vals) > 1 else None
            ref = T.lookup([table], thesis_row, col, "weight")
            row.append(fmt_stat(mean, std) + fmt_thesis(mean, ref))
        row.append(str(len(runs)))
        rows.append(row)
    return Table("fusionm4net_weights", "FusionM4Net searched weights (%): Fusion Scheme 1 (W_clin, W_derm, W_fusion) "
                 "and Scheme 2 (W_1 of P3 = W_1·P1 + (1 − W_1)·P2), mean ± sample std over runs",
                 ["Method", "W_clin", "W_derm", "W_fusion", "W_1", "runs"], rows,
                 ["Weights searched on validation; the thesis's printed W_clin/W_derm appear swapped relative to "
                  "its released code's output, so they are no check of the search."])


# ------------------------------------------------------------------------------- params and stats

def params_table(jobs) -> Table:
    seen = {}
    for j in jobs:
        if not j.ok:
            continue
        i = j.info
        key = (i.get("dataset"), i.get("method") or i.get("model"), i.get("backbone"))
        if key not in seen and i.get("params"):
            seen[key] = i["params"]
    rows = []
    for (ds, method, bb), p in sorted(seen.items(), key=lambda kv: (str(kv[0][0]), order_methods([kv[0][1]])[0],
                                                                     T.backbone_order(kv[0][2]))):
        ref = T.lookup(["params"], method, T.backbone_key(bb), "params_M") or T.lookup(["params"], method, "*", "params_M")

        def m(v):
            return "–" if v is None else f"{v / 1e6:.2f}"
        rows.append([str(ds), str(method), str(bb), m(p.get("total")), m(p.get("thesis_count")), m(p.get("trainable")),
                     f"{ref['value']:.2f}" if ref else ""])
    return Table("params", "Parameter counts (millions)",
                 ["Dataset", "Method", "Backbone", "Total", "Thesis count", "Trainable", "Thesis (M)"], rows,
                 ["Thesis count includes each backbone's unused ImageNet classifier, as the thesis counted."])


def stats_table(result: Mapping, name: str, title: str, thesis_table: str | None = None) -> Table:
    """Friedman (in the notes) and one row per Wilcoxon pair with its own n: a pair runs over the
    blocks holding both methods, so a missing run shortens only its method's pairs."""
    fr = result["friedman"]
    rows = []
    for r in result["pairs"]:
        thesis_p = T.wilcoxon_p(thesis_table, r["a"], r["b"]) if thesis_table else None
        note = r["note"] or ""
        if r.get("n_dropped"):
            note = f"{r['n_dropped']} block(s) without both methods left out" + (f"; {note}" if note else "")
        rows.append([f"{r['a']} - {r['b']}", str(r["n"]), _g(r["statistic"]), _p(r["p"]),
                     "yes" if r["exact"] else "no", _p(r.get("p_holm")), _p(thesis_p) if thesis_table else "",
                     note])
    friedman = (f"Friedman over {fr['n_methods']} methods ({', '.join(result['methods'])}) × {fr['n_blocks']} "
                f"complete blocks: " + (f"χ² = {fr['statistic']:.3f}, p = {fr['p']:.3g}" if fr["p"] is not None
                                        else fr["note"]))
    return Table(name, title, ["Pair", "n", "W", "p (two-sided)", "exact", "p (Holm)",
                               f"thesis p ({T.table_id(thesis_table)})" if thesis_table else "thesis p", "note"],
                 rows, [friedman] + list(result["notes"]))


def _g(x):
    return "–" if x is None else f"{x:g}"


def _p(x):
    return "–" if x is None else f"{x:.3g}"


# ------------------------------------------------------------------------------ case-level tables

MISSING = "—"   # an entry that does not exist (a condition a method cannot answer), as against "–" (undefined)
METRIC_NAME = {"bac": "BAC", "acc": "ACC", "auc": "AUC", "avg_acc": "AVG ACC", "avg_bac": "BAC", "avg_auc": "AVG AUC"}


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def fmt_ci(value, lo, hi) -> str:
    """A fraction and its interval in %: ``72.3 [68.1, 76.0]``."""
    if not _ok(value):
        return "–"
    return f"{_pct(value)} [{_pct(lo)}, {_pct(hi)}]" if _ok(lo) and _ok(hi) else _pct(value)


def fmt_mean_std(mean, std, digits: int = 3, scale: float = 1.0) -> str:
    if not _ok(mean):
        return "–"
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if _ok(std) else "")


def _bootstrap_note(settings: Mapping, auc: bool = True) -> str:
    level = round(100 * settings["level"])
    text = (f"[..] = {level}% percentile interval of a case-level bootstrap ({settings['resamples']} resamples"
            + (f"; AUC {settings['auc_resamples']}" if auc else "") + f"; seed {settings['seed']}).")
    return text


def calibration_table(summary: pd.DataFrame, dataset: str, split: str, settings: Mapping) -> Table:
    """ECE, Brier and NLL before and after temperature scaling, mean ± sample std over runs, per method (and task
    where the dataset has several)."""
    s = summary[(summary.dataset == dataset) & (summary.split == split)]
    multi = s["task"].nunique() > 1
    rows = []
    for method in order_methods(s["method"]):
        for r in s[s.method == method].itertuples():
            ts = r.runs_ts > 0
            cells = [method] + ([r.task] if multi else []) + [str(r.runs)]
            partly = "" if r.runs_ts == r.runs else f"temperature in {r.runs_ts} of {r.runs} runs"
            partly = "; ".join(x for x in (partly, r.note) if x)
            cells += [fmt_mean_std(r.ece, r.ece_std, 1, 100),
                      fmt_mean_std(r.ece_ts, r.ece_ts_std, 1, 100) if ts else MISSING,
                      fmt_mean_std(r.brier, r.brier_std), fmt_mean_std(r.brier_ts, r.brier_ts_std) if ts else MISSING,
                      fmt_mean_std(r.nll, r.nll_std), fmt_mean_std(r.nll_ts, r.nll_ts_std) if ts else MISSING,
                      fmt_mean_std(r.temperature, r.temperature_std, 2) if ts else MISSING, partly if ts else r.note]
            rows.append(cells)
    notes = [f"ECE: top-label expected calibration error, {settings['n_bins']} equal-width confidence bins, in %. "
             "Brier: multi-class (sum over classes of squared errors, 0 best, 2 worst). "
             "NLL: mean negative log-likelihood.",
             "TS: after temperature scaling, one temperature T per run, output and task, fitted on the validation "
             f"predictions by minimising NLL and applied to {SPLIT_NAME.get(split, split)}; "
             f"{MISSING}: no temperature (see note)."]
    return Table(f"{dataset}_{split}_calibration",
                 f"{DATASET_NAME.get(dataset, dataset)} {SPLIT_NAME.get(split, split)}: calibration before and after "
                 "temperature scaling, mean ± sample std over runs",
                 ["Method"] + (["Task"] if multi else []) + ["runs", "ECE", "ECE (TS)", "Brier", "Brier (TS)", "NLL",
                                                             "NLL (TS)", "T", "note"], rows, notes)


def headline_table(headline: pd.DataFrame, dataset: str, split: str, main_metric: str, settings: Mapping) -> Table:
    """BAC, ACC and AUC of every method (per task where there are several, then their averages), mean over runs with
    the bootstrap interval of that mean."""
    h = headline[(headline.dataset == dataset) & (headline.split == split)]
    cell = {(r.method, r.task, r.metric): (r.value, r.lo, r.hi, r.runs) for r in h.itertuples()}
    tasks = [t for t in dict.fromkeys(h["task"]) if t != "main"]
    multi = len(tasks) > 1
    rows = []
    for method in order_methods(h["method"]):
        for t in tasks:
            got = [cell.get((method, t, m)) for m in ("bac", "acc", "auc")]
            if not any(got):
                continue
            runs = next(g[3] for g in got if g)
            rows.append([method] + ([t] if multi else []) + [str(runs)]
                        + [fmt_ci(*g[:3]) if g else "–" for g in got])
    main = METRIC_NAME.get(main_metric, main_metric)
    notes = [_bootstrap_note(settings),
             "Value: mean over runs of each run's score; interval: of that mean, resampling the evaluated cases (the "
             "same resamples for every run on the same cases), so it reflects the finite test set, not training "
             "variation.", f"Main metric: {main}" + (" (the AVG rows; AVG AUC = mean of the 17 non-absent categories)"
                                                     if multi and dataset == "derm7pt" else "") + ".",
             "Per-run values and intervals: bootstrap_runs.csv."]
    return Table(f"{dataset}_{split}_{main_metric}_intervals",
                 f"{DATASET_NAME.get(dataset, dataset)} {SPLIT_NAME.get(split, split)}: BAC, ACC and AUC (%) with "
                 f"{round(100 * settings['level'])}% bootstrap intervals",
                 ["Method"] + (["Task"] if multi else []) + ["runs", "BAC", "ACC", "AUC"], rows, notes)


def subgroup_table(sub: pd.DataFrame, gaps: pd.DataFrame, dataset: str, split: str, attribute: str, metric: str,
                   methods: Sequence[str], settings: Mapping) -> Table:
    """One attribute: its groups as rows (size, then the score [interval] of each method), the worst-group gap
    (best − worst group) [interval] and the worst group last."""
    s = sub[(sub.dataset == dataset) & (sub.split == split) & (sub.attribute == attribute) & (sub.metric == metric)]
    g = gaps[(gaps.dataset == dataset) & (gaps.split == split) & (gaps.attribute == attribute)
             & (gaps.metric == metric)]
    methods = [m for m in methods if m in set(s["method"])]
    cell = {(r.method, r.group): r for r in s.itertuples()}
    rows = []
    for grp in group_order(s["group"]):
        ref = next((cell[(m, grp)] for m in methods if (m, grp) in cell), None)
        if ref is None:
            continue
        n = str(ref.n_min) if ref.n_min == ref.n_max else f"{ref.n_min}–{ref.n_max}"
        row = [grp, n]
        for m in methods:
            r = cell.get((m, grp))
            row.append(MISSING if r is None else
                       "too small" if r.too_small else fmt_ci(r.value, r.lo, r.hi))
        rows.append(row)
    gap = {r.method: r for r in g.itertuples()}
    rows.append(["gap (best − worst)", ""] + [fmt_ci(gap[m].value, gap[m].lo, gap[m].hi) if m in gap else "–"
                                              for m in methods])
    rows.append(["worst / best group", ""] + [f"{gap[m].worst} / {gap[m].best}" if m in gap and _ok(gap[m].value)
                                              else "–" for m in methods])
    name = METRIC_NAME.get(metric, metric)
    notes = [_bootstrap_note(settings, metric == "auc") + " Each run's cases are resampled as a whole, so a group's "
             "size varies between resamples.",
             f"Main task only; value: mean over runs; n: cases of the group on the {SPLIT_NAME.get(split, split)} "
             f"split (a range where runs differ); too small: under {settings['min_size']} cases, not scored.",
             "Gap: best minus worst scored group's value, 'unknown' left out; its interval comes from the same "
             "resamples. No correction for the number of groups, attributes or methods compared."]
    return Table(f"{dataset}_{split}_subgroups_{attribute}_{metric}",
                 f"{DATASET_NAME.get(dataset, dataset)} {SPLIT_NAME.get(split, split)}: {name} (%) by {attribute}",
                 ["Group", "n"] + list(methods), rows, notes)


def paired_table(pairs: Sequence[Mapping], dataset: str, split: str, main_metric: str, settings: Mapping,
                 with_holm: bool = True) -> Table:
    """Paired bootstrap of each method pair's mean difference beside the Wilcoxon test over the same blocks."""
    rows = []
    for r in pairs:
        rows.append([f"{r['a']} - {r['b']}", str(r["n_blocks"]),
                     "–" if r["diff"] is None else f"{100 * r['diff']:+.1f}",
                     "–" if r["lo"] is None else f"[{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}]", _p(r["p"]),
                     *([_p(r.get("p_holm"))] if with_holm else []), _p(r.get("wilcoxon_p")), r.get("note") or ""])
    floor = 2 / (settings["resamples"] + 1)
    notes = ["Δ = mean over matched blocks (backbone × fold or seed) of A − B, "
             f"{METRIC_NAME.get(main_metric, main_metric)} in points. "
             + _bootstrap_note(settings, main_metric == "avg_auc"),
             "Paired: both methods' runs are scored on the same resampled cases; blocks on the same cases share "
             "their resamples. p (bootstrap): two-sided, from the resampled differences (smallest possible "
             f"{floor:.2g}). This tests the finite test set, not the training runs: the Wilcoxon test treats the "
             "blocks as the sample.",
             "Wilcoxon: signed-rank test over the same blocks and split (exact where possible)."
             + (" Holm: Holm-adjusted bootstrap p over the pairs of this table." if with_holm else
                " No multiple-comparison correction.")]
    return Table(f"{dataset}_{split}_{main_metric}_paired_bootstrap",
                 f"{DATASET_NAME.get(dataset, dataset)} {SPLIT_NAME.get(split, split)} "
                 f"{METRIC_NAME.get(main_metric, main_metric)}: paired bootstrap of method differences and Wilcoxon",
                 ["Pair", "blocks", "Δ", "95% CI" if settings["level"] == 0.95 else "CI", "p (bootstrap)",
                  *(["p (Holm)"] if with_holm else []), "p (Wilcoxon)", "note"], rows, notes)


def robustness_table(records: pd.DataFrame, dataset: str, split: str, main_metric: str) -> Table:
    """Main metric of each method's reported output with all inputs and with each input withheld, mean ± sample
    std over runs; ``—`` where the method cannot answer without that input."""
    r = records[(records.dataset == dataset) & (records.main_metric == main_metric)]
    conditions = ["all inputs"] + [c for c in WITHHELD_CONDITIONS if c in set(r["condition"])]
    rows = []
    for method in order_methods(r["method"]):
        g = r[r.method == method]
        row = [method]
        n_all = int((g.condition == "all inputs").sum())
        for c in conditions:
            v = g[g.condition == c]["score"].dropna().to_numpy(dtype=float)
            if not len(v):
                row.append(MISSING)
                continue
            row.append(fmt_stat(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None, len(v), n_all))
        rows.append(row)
    return Table(f"{dataset}_{split}_{main_metric}_robustness",
                 f"{DATASET_NAME.get(dataset, dataset)} {SPLIT_NAME.get(split, split)} "
                 f"{METRIC_NAME.get(main_metric, main_metric)} (%) of the "
                 "reported output with an input withheld, mean ± sample std over runs",
                 ["Method"] + [c.replace("_", " ") for c in conditions], rows,
                 ["no meta / no clinic / no derm: the metadata, the clinical or the dermoscopic image withheld from "
                  f"every case. {MISSING}: the method cannot answer without that input (no predictions saved).",
                  "(n=k): runs with that condition where the method has a different number of runs with all inputs."])


def problems_table(problems: pd.DataFrame) -> Table:
    rows = [[r.status, r.job, r.reason, r.path] for r in problems.itertuples()]
    return Table("missing_or_failed", "Missing, failed or incomplete runs", ["Status", "Job", "Reason", "Path"], rows)


# ------------------------------------------------------------------------------------- renderers

def to_markdown(t: Table) -> str:
    def esc(s):
        return str(s).replace("|", "\\|").replace("\n", " ")
    lines = [f"**{esc(t.title)}**", "", "| " + " | ".join(map(esc, t.columns)) + " |",
             "|" + "|".join("---" for _ in t.columns) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in t.rows]
    if not t.rows:
        lines.append("| " + " | ".join(["(none)"] + [""] * (len(t.columns) - 1)) + " |")
    lines += [""] + [f"- {esc(n)}" for n in t.notes]
    return "\n".join(lines).rstrip() + "\n"


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.columns)
    w.writerows(t.rows)
    return buf.getvalue()


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
        "–": "--", "χ": r"$\chi$", "²": r"$^2$", "×": r"$\times$", "−": "-"}


def _tex(s) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def to_latex(t: Table) -> str:
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", f"\\caption{{{_tex(t.title)}}}",
             f"\\label{{tab:{t.name}}}", r"\begin{tabular}{l" + "c" * (len(t.columns) - 1) + "}", r"\toprule",
             " & ".join(_tex(c) for c in t.columns) + r" \\", r"\midrule"]
    for row in t.rows:
        if row and row[0] == "Average":
            lines.append(r"\midrule")
        lines.append(" & ".join(_tex(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if t.notes:
        lines.append(r"\par\footnotesize " + r" \\ ".join(_tex(n) for n in t.notes))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in t.rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in t.notes)
    return (f'<h3 id="{html.escape(t.name)}">{html.escape(t.title)}</h3>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            + (f"<ul class='notes'>{notes}</ul>" if notes else ""))


RENDERERS = {"md": to_markdown, "csv": to_csv, "tex": to_latex}


def write_table(t: Table, out_dir: Path, formats: Sequence[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in formats:
        p = out_dir / f"{t.name}.{f}"
        p.write_text(RENDERERS[f](t))
        paths.append(p)
    return paths
