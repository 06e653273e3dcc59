"""Collect run directories from Hydra sweeps, evaluate their saved predictions and aggregate.

A run is a directory holding ``run.json`` (and ``predictions/``). Sweep roots are recognised by
Hydra's ``multirun.yaml``: its sweep overrides (command line ``hydra.overrides.task`` and an
experiment preset's ``hydra.sweeper.params``) define the expected job set, the cartesian product of
the comma-separated values. Every expected job that has no directory, no ``run.json``, a
failed/running status or missing predictions is kept as a problem entry so the report can list it.

Aggregation follows the thesis's protocol: per (dataset, split, backbone, method) mean ± sample std (ddof=1)
and the best run (test-selected where the split is test, so optimistic), plus an "Average" row
pooling every run of a method across backbones.
"""
from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob

from . import bootstrap as B
from . import calibration as C
from . import predictions as P
from . import subgroups as S
from .metrics import evaluate_predictions, evaluate_probs, main_score
from .thesis_data import backbone_label, backbone_order

REPORTED_SPLITS = {"pad_ufes": ["val", "test"], "isic2019": ["val"], "derm7pt": ["test"]}
PRIMARY_SPLIT = {"pad_ufes": "val", "isic2019": "val", "derm7pt": "test"}
REQUIRED_SPLITS = {"pad_ufes": ["val", "test"], "isic2019": ["val"], "derm7pt": ["val", "test"]}

JIF_BRANCHES = {"image", "meta", "fusion"}
_MODULES = ["CAT", "MB", "MN", "MA", "MMFA"]
# thesis column order (T4.1 then T4.7); unknown labels follow in first-seen order
METHOD_ORDER = (["Image"] + [f"JF-{m}" for m in _MODULES] + [f"JIF-{m}(OFB)" for m in _MODULES]
                + [f"JIF-{m}(All)" for m in _MODULES])


# ----------------------------------------------------------------------------------- sweep parsing

def _unquote(v: str) -> str:
    v = str(v).strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


_PARSER = OverridesParser.create()


def sweep_values(value: str) -> list[str] | None:
    """The values a Hydra sweep override expands to (Hydra's own parser), or None for a plain value."""
    override = _PARSER.parse_override(f"key={value}")
    return list(override.sweep_string_iterator()) if override.is_sweep_override() else None


def _override_key(key: str) -> str:
    return key.strip().lstrip("+~")


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in str(item):
            continue
        k, v = str(item).split("=", 1)
        out[_override_key(k)] = v.strip()
    return out


def _glob_options(key: str, seen: Iterable[str]) -> list[str]:
    """Candidates a ``glob(...)`` sweep over config group ``key`` chooses from: the group's options
    (files and generated presets) and every value the sweep's own jobs recorded."""
    options = set(seen)
    try:
        from skinlesion import config as C

        C.register_plugin_configs()   # generated presets (e.g. jf_<fusion>) live in the ConfigStore
        options |= set(C.group_options(key))
    except Exception:  # no config tree here: the recorded values still expand the glob
        pass
    return sorted(options)


def expected_jobs(multirun_yaml: Path, seen: Mapping[str, Iterable[str]] | None = None
                  ) -> tuple[list[dict[str, str]], list[str]]:
    """Expected job override combinations of a sweep, in Hydra's job-number order, and notes.

    ``seen`` (override key -> values recorded by the sweep's jobs) helps expand ``glob(...)`` axes."""
    cfg = yaml.safe_load(Path(multirun_yaml).read_text()) or {}
    hydra = cfg.get("hydra", {}) or {}
    params: dict[str, str] = {}
    notes: list[str] = []
    for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items():
        params[_override_key(str(k))] = str(v)
    for item in ((hydra.get("overrides") or {}).get("task") or []):
        if "=" in str(item):
            k, v = str(item).split("=", 1)
            params[_override_key(k)] = v
    axes = []
    for k, v in params.items():
        if re.match(r"^\s*(interval|tag)\(", str(v)):
            notes.append(f"{multirun_yaml}: sweep '{k}={v}' is not expanded; its jobs are not checked for completeness")
            continue
        override = _PARSER.parse_override(f"{k}={v}")
        if isinstance(override.value(), Glob):
            vals = override.value().filter(_glob_options(k, (seen or {}).get(k, ())))
        else:
            vals = sweep_values(v)
        if vals is not None:
            axes.append([(k, x) for x in vals])
    combos = [dict(c) for c in itertools.product(*axes)] if axes else []
    return combos, notes


# -------------------------------------------------------------------------------------------- jobs

@dataclass
class Job:
    path: Path | None
    info: dict = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    status: str = "ok"   # ok | failed | interrupted | timed_out | requeued | running | missing_job | missing_run_json
    #                      | missing_predictions | invalid
    reason: str | None = None
    sweep: Path | None = None
    expected: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def dataset(self) -> str | None:
        return self.info.get("dataset")

    @property
    def block(self) -> str:
        """Matching unit for paired statistics: fold for CV datasets, seed otherwise."""
        f = self.info.get("fold")
        return f"fold {f}" if f is not None else f"seed {self.info.get('seed')}"

    def describe(self) -> str:
        i = self.info
        if i:
            bits = [i.get("dataset"), i.get("method") or i.get("model"), i.get("backbone"), self.block]
            return " / ".join(str(b) for b in bits if b is not None)
        src = self.expected or self.overrides
        return " ".join(f"{k}={v}" for k, v in src.items()) or str(self.path)


def _load_job(path: Path) -> Job:
    job = Job(path)
    hydra_ov = path / ".hydra" / "overrides.yaml"
    if hydra_ov.exists():
        try:
            job.overrides = parse_overrides(yaml.safe_load(hydra_ov.read_text()) or [])
        except yaml.YAMLError:
            pass
    rj = path / "run.json"
    if not rj.exists():
        job.status, job.reason = "missing_run_json", "job directory has no run.json (crashed before writing it?)"
        return job
    try:
        job.info = json.loads(rj.read_text())
    except (json.JSONDecodeError, OSError) as e:
        job.status, job.reason = "invalid", f"unreadable run.json: {e}"
        return job
    if job.info.get("overrides"):
        job.overrides = {**job.overrides, **parse_overrides(job.info["overrides"])}
    status = job.info.get("status")
    if status == "failed":
        job.status, job.reason = "failed", job.info.get("error") or "run.json status 'failed'"
    elif status == "interrupted":
        at = job.info.get("interrupted_at") or {}
        job.status, job.reason = "interrupted", "stopped by a signal" + (
            f" at epoch {at.get('epoch')}, step {at.get('step')}" if at else "")
    elif status == "timed_out":
        job.status, job.reason = "timed_out", job.info.get("error") or "time limit reached, not requeued"
    elif status == "requeued":
        job.status, job.reason = "requeued", "requeued by the cluster; its next attempt resumes from its checkpoint"
    elif status != "completed":
        job.status, job.reason = "running", f"run.json status {status!r} (not completed)"
    else:
        need = REQUIRED_SPLITS.get(job.dataset, ["val"])
        missing = [s for s in need if not (path / "predictions" / f"{s}.parquet").exists()]
        if missing:
            job.status = "missing_predictions"
            job.reason = "missing " + ", ".join(f"predictions/{s}.parquet" for s in missing)
    return job


def _matches(job: Job, combo: dict[str, str]) -> bool:
    return all(_unquote(job.overrides.get(k, "\0")) == _unquote(v) for k, v in combo.items())


def collect_jobs(dirs: Sequence[str | Path]) -> tuple[list[Job], list[str]]:
    """All jobs under ``dirs`` (recursively), expected-but-absent jobs included; plus notes."""
    jobs: dict[Path, Job] = {}
    notes: list[str] = []
    roots: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"not a directory: {d}")
        for rj in d.rglob("run.json"):
            jobs.setdefault(rj.parent.resolve(), None)
        for ov in d.rglob(".hydra/overrides.yaml"):
            jobs.setdefault(ov.parent.parent.resolve(), None)
        roots += [m.parent.resolve() for m in d.rglob("multirun.yaml")]
    loaded = {p: _load_job(p) for p in sorted(jobs)}
    # A stage-1 sub model only feeds FusionM4Net's second stage; it is not a result of its own.
    loaded = {p: j for p, j in loaded.items() if (j.info or {}).get("role") != "stage1-sub"}
    extra: list[Job] = []
    for root in sorted(set(roots)):
        members = [j for p, j in loaded.items() if root in p.parents]
        seen: dict[str, set[str]] = {}
        for j in members:
            for k, v in j.overrides.items():
                seen.setdefault(k, set()).add(_unquote(v))
        combos, n = expected_jobs(root / "multirun.yaml", seen)
        notes += n
        for j in members:
            j.sweep = root
        for idx, combo in enumerate(combos):
            hit = [j for j in members if _matches(j, combo)]
            if not hit:  # overrides not recorded: fall back to Hydra's numbered job directory
                hit = [loaded[p] for p in [(root / str(idx)).resolve()] if p in loaded and not loaded[p].overrides]
            for j in hit:
                j.expected = combo
            if not hit:
                extra.append(Job(root / str(idx), status="missing_job", sweep=root, expected=combo,
                                 reason="expected by multirun.yaml but no job directory/run.json found"))
    return list(loaded.values()) + extra, notes


# ------------------------------------------------------------------------------------- evaluation

def run_outputs(job: Job, pred_branches: Sequence[str]) -> list[tuple[str, object]]:
    """(display label, combination) pairs reported for a run.

    JIF models (image + meta + fusion branches) report OFB = fusion branch and All = mean of all
    three (of the logits when the run reported ``all_logits``); other models report their ``reported`` combination under the method name; a run that has
    ``search/`` outputs also reports the searched fusion.
    """
    info = job.info
    method = info.get("method") or info.get("model") or "?"
    branches = list(info.get("branches") or pred_branches)
    if JIF_BRANCHES <= set(branches) and len(branches) == 3:
        all_space = "all_logits" if info.get("reported") == "all_logits" else "all"   # the run chose the logit reading of JIF(All)
        out = [(f"{method}(OFB)", "fusion"), (f"{method}(All)", all_space)]
    elif info.get("role") == "stage1-main" and set(branches) == {"derm", "clinic", "fusion"}:
        # FusionM4Net's stage-1 network: its three branch outputs (P_derm, P_clin, P_fusion) and their equal-weight
        # average (Table 6.5's "P1 (averaged)")
        out = [(f"{method}(P_derm)", "derm"), (f"{method}(P_clin)", "clinic"), (f"{method}(P_fusion)", "fusion"),
               (f"{method}(P1 averaged)", "all")]
    elif {"p1", "p2", "p3"} <= set(branches):   # FusionM4Net stage 2: both fusion schemes and their mixes
        clf = info.get("classifier")
        tag = f"[{clf}]" if clf and clf != "svm" else ""
        out = [(f"{method}{tag}({b.upper()})", b) for b in ("p1", "p2", "p3")]
        if "p3_avg" in branches:
            out.append((f"{method}{tag}(P3 averaged)", "p3_avg"))
    else:
        reported = info.get("reported") or ("all" if len(branches) > 1 else branches[0])
        out = [(method, reported)]
    if job.path is not None and (job.path / "search" / "val_fused.parquet").exists() and out[0][1] != "searched":
        out.append((f"{method}(searched)", "searched"))
    return out


def _predictions_path(job: Job, split: str) -> Path:
    return job.path / "predictions" / f"{split}.parquet"


def _frame(job: Job, split: str, combination, cache: dict[Path, pd.DataFrame] | None = None) -> pd.DataFrame | None:
    """The frame ``combination`` is evaluated on; with ``cache`` ({path: frame}) each file is read once.
    Cached frames are shared between outputs, so callers must not change them (evaluation only reads)."""
    if combination == "searched":
        path = job.path / "search" / f"{split}_fused.parquet"
    else:
        path = _predictions_path(job, split)
    if cache is not None and path in cache:
        return cache[path]
    if not path.exists():
        return None
    df = P.read_predictions(path)
    if cache is not None:
        cache[path] = df
    return df


def evaluate_jobs(jobs: Sequence[Job]) -> tuple[pd.DataFrame, dict]:
    """One record per (run, reported output, split) with the scores; full metrics in ``details``.

    A run whose predictions cannot be evaluated is marked ``invalid`` with the error as reason.
    """
    rows, details = [], {}
    for j in jobs:
        if not j.ok:
            continue
        info = j.info
        dataset = info.get("dataset")
        splits = REPORTED_SPLITS.get(dataset, ["val", "test"])
        main_metric = info.get("main_metric") or "bac"
        try:
            first_path = _predictions_path(j, splits[0])
            first = P.read_predictions(first_path)
            frames = {first_path: first}   # this job's files, each read once for all its outputs
            outputs = run_outputs(j, P.branches(first))
            new = []
            for label, comb in outputs:
                for split in splits:
                    df = _frame(j, split, comb, frames)
                    if df is None:
                        continue
                    m = evaluate_predictions(df, comb, dataset)
                    key = (str(j.path), label, split)
                    details[key] = m
                    new.append({
                        "run": str(j.path), "sweep": str(j.sweep) if j.sweep else None, "dataset": dataset,
                        "experiment": info.get("experiment"),
                        "model": info.get("model"), "base_method": info.get("method"), "method": label,
                        "combination": P.combination_label(comb), "backbone": info.get("backbone"),
                        "backbone_label": backbone_label(info.get("backbone")), "fold": info.get("fold"),
                        "seed": info.get("seed"), "block": j.block, "split": split, "main_metric": main_metric,
                        "score": main_score(m, main_metric), "avg_acc": m.get("avg_acc"),
                        "avg_bac": m.get("avg_bac"), "avg_auc": m.get("avg_auc"), "n_cases": m["n"],
                    })
            rows += new
        except Exception as e:  # a broken artefact must show up in the report, not abort it
            j.status, j.reason = "invalid", f"could not evaluate predictions: {type(e).__name__}: {e}"
    cols = ["run", "sweep", "dataset", "experiment", "model", "base_method", "method", "combination", "backbone",
            "backbone_label", "fold", "seed", "block", "split", "main_metric", "score", "avg_acc", "avg_bac", "avg_auc", "n_cases"]
    return pd.DataFrame(rows, columns=cols), details


# ------------------------------------------------------------------------------------- aggregation

def method_sort_key(label: str, seen: Sequence[str] = ()) -> tuple:
    if label in METHOD_ORDER:
        return (0, METHOD_ORDER.index(label), "")
    return (1, list(seen).index(label) if label in seen else 10 ** 6, label)


def order_methods(labels: Iterable[str]) -> list[str]:
    seen = list(dict.fromkeys(labels))
    return sorted(seen, key=lambda m: method_sort_key(m, seen))


def order_backbones(names: Iterable[str]) -> list[str]:
    return sorted(dict.fromkeys(names), key=lambda b: backbone_order(b))


def _stats(values: pd.Series, runs: pd.Series) -> dict:
    v = values.to_numpy(dtype=float)
    ok = ~np.isnan(v)
    v, r = v[ok], runs.to_numpy()[ok]
    if not len(v):
        return {"n": 0, "mean": None, "std": None, "best": None, "best_run": None}
    i = int(np.argmax(v))
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "best": float(v[i]), "best_run": str(r[i])}


def summarise(records: pd.DataFrame, value: str = "score") -> pd.DataFrame:
    """Mean ± sample std and best-of-N per (dataset, main_metric, split, backbone, method), plus
    "Average" rows pooling all runs of a method over backbones (the thesis's Average rows)."""
    out = []
    if records.empty:
        return pd.DataFrame(columns=["dataset", "main_metric", "split", "metric", "backbone", "backbone_label",
                                     "method", "n", "mean", "std", "best", "best_run"])
    rec = records.copy()
    rec["_id"] = rec["backbone_label"].astype(str) + " " + rec["block"].astype(str)
    keys = ["dataset", "main_metric", "split"]
    for (ds, mm, split), grp in rec.groupby(keys, sort=False, dropna=False):
        metric = mm if value == "score" else value
        for (bb, method), g in grp.groupby(["backbone", "method"], sort=False, dropna=False):
            out.append({"dataset": ds, "main_metric": mm, "split": split, "metric": metric, "backbone": bb,
                        "backbone_label": backbone_label(bb), "method": method, **_stats(g[value], g["_id"])})
        for method, g in grp.groupby("method", sort=False):
            out.append({"dataset": ds, "main_metric": mm, "split": split, "metric": metric, "backbone": "Average",
                        "backbone_label": "Average", "method": method, **_stats(g[value], g["_id"])})
    return pd.DataFrame(out)


def problems_frame(jobs: Sequence[Job]) -> pd.DataFrame:
    rows = [{"status": j.status, "job": j.describe(), "path": str(j.path) if j.path else "",
             "sweep": str(j.sweep) if j.sweep else "", "reason": j.reason or ""}
            for j in jobs if not j.ok]
    return pd.DataFrame(rows, columns=["status", "job", "path", "sweep", "reason"])


# ------------------------------------------------------------------------------ case-level sections

def case_split(dataset: str | None) -> str:
    """The split whose cases the calibration, bootstrap, subgroup and robustness sections score: the fixed test set
    where the dataset reports one, else the validation folds (ISIC-2019)."""
    return "test" if "test" in REPORTED_SPLITS.get(dataset, ["val", "test"]) else "val"


def reported_label(job: Job, pred_branches: Sequence[str]) -> str:
    """The display label of the output a run reports (``run.json`` ``reported``; the first output without one)."""
    outputs = run_outputs(job, pred_branches)
    return next((label for label, comb in outputs if comb == job.info.get("reported")), outputs[0][0])


@dataclass
class CaseLevel:
    """Per-run and per-method results of the case-level sections (see :func:`case_level`)."""
    calibration: pd.DataFrame          # (run, method, task): scores before/after temperature scaling
    headline: pd.DataFrame             # (run, method, task, metric): value and its bootstrap interval
    headline_methods: pd.DataFrame     # (dataset, method, task, metric): mean over runs, interval of that mean
    subgroups: pd.DataFrame            # (run, method, attribute, group, metric): value, interval, n
    subgroup_methods: pd.DataFrame     # (dataset, method, attribute, group, metric)
    gaps: pd.DataFrame                 # (dataset, method, attribute, metric): worst-group gap of the method's means
    main: dict                         # (dataset, method) -> {(backbone, block): (1 + R,) main-metric resamples}
    reliability: dict                  # (dataset, method) -> best run's main-task probabilities before/after
    without_subgroups: dict            # dataset -> [run paths without subgroups.csv]
    settings: dict
    errors: list[str]                  # runs left out of these sections, and why


def _main_resamples(main_metric: str, task_arrays: dict, class_auc: dict, dataset: str | None) -> np.ndarray:
    """The run's ranking score per resample, as :func:`metrics.main_score` computes it on the observed data."""
    if main_metric in ("bac", "avg_bac"):
        return B.nanmean(np.stack([a["bac"] for a in task_arrays.values()]), axis=0)
    if main_metric == "avg_acc":
        return B.nanmean(np.stack([a["acc"] for a in task_arrays.values()]), axis=0)
    if main_metric == "avg_auc" and dataset == "derm7pt":
        from skinlesion.data.tasks import DERM7PT_AUC_CATEGORIES

        rows = [class_auc[t][c] for t, c in DERM7PT_AUC_CATEGORIES if t in class_auc and c in class_auc[t]]
        return B.nanmean(np.stack(rows), axis=0)
    raise ValueError(f"no bootstrap of main metric {main_metric!r} for dataset {dataset!r}")


def _num(x) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


class _CaseLevelPass:
    """The accumulators of :func:`case_level`, filled one run output at a time."""

    def __init__(self, settings: dict, best: dict, weights: dict | None = None) -> None:
        self.settings, self.best = settings, best
        self.errors: list[str] = []
        self.cal_rows, self.head_rows, self.sub_rows = [], [], []
        self.head_acc, self.sub_acc = B.MeanOverRuns(), B.MeanOverRuns()
        self.sub_n: dict = {}
        self.main: dict = {}
        self.reliability: dict = {}
        self.without: dict[str, list[str]] = {}
        self.weights: dict[int, tuple[np.ndarray, np.ndarray]] = {} if weights is None else weights

    def resamples(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The case set's resample weights (all resamples, and the first ones for AUC), drawn once per case set."""
        key = B.case_set_key(ids)
        if key not in self.weights:
            st = self.settings
            w = B.resample_counts(len(ids), st["resamples"], st["seed"], key)
            self.weights[key] = (w, np.ascontiguousarray(w[:, :st["auc_resamples"] + 1]))
        return self.weights[key]

    def add_run(self, job: Job) -> None:
        ds, split = job.dataset, case_split(job.dataset)
        frames: dict[Path, pd.DataFrame] = {}
        first = _frame(job, split, None, frames)
        if first is None:
            return
        attrs = S.read_attributes(job.path)
        if attrs is None:
            self.without.setdefault(ds, []).append(str(job.path))
        reported = reported_label(job, P.branches(first))
        for label, comb in run_outputs(job, P.branches(first)):
            df = _frame(job, split, comb, frames)
            if df is None:
                continue
            base = {"run": str(job.path), "dataset": ds, "split": split, "method": label,
                    "backbone": job.info.get("backbone"), "block": job.block, "reported": label == reported}
            val = _frame(job, "val", comb, frames) if split == "test" else None
            self.add_output(job, base, df, val, comb, attrs)

    def add_output(self, job: Job, base: dict, df: pd.DataFrame, val: pd.DataFrame | None, comb: str,
                   attrs: pd.DataFrame | None) -> None:
        st, ds, label = self.settings, base["dataset"], base["method"]
        probs, ys = P.combine(df, comb), P.targets(df)
        classes = P.task_classes(df, comb if comb in P.branches(df) and comb not in ("all", "all_logits") else None)
        # calibration, the temperature fitted on validation where the scored split is test
        z_test, z_val, y_val, note = C.logits_for(df, val, comb, base["split"])
        temperature = {}
        for t, prob in probs.items():
            fit = (z_test[t], z_val[t], y_val[t]) if z_test else (None,) * 3
            rec = C.calibrate(prob, ys[t], *fit, n_bins=st["n_bins"], note=note)
            temperature[t] = rec["temperature"]
            self.cal_rows.append({**base, "task": t, **rec})
        main_task = next(iter(probs))
        if self.best.get((ds, label)) == base["run"]:
            t = temperature[main_task]
            self.reliability[(ds, label)] = {
                "run": base["run"], "task": main_task, "y": ys[main_task], "prob": probs[main_task],
                "temperature": t, "prob_ts": None if t is None else C.apply_temperature(z_test[main_task], t)}
        # bootstrap: the resample weights are indexed by sorted case id, so the cases are put in that order
        ids = df["case_id"].to_numpy()
        perm = np.argsort(ids, kind="stable")
        w, w_auc = self.resamples(ids[perm])
        task_arrays, class_auc = {}, {}
        for t, prob in probs.items():
            y, p = ys[t][perm], prob[perm]
            bac, acc = B.grouped_bac_acc(w, y, p.argmax(axis=1), p.shape[1])
            per_class = B.class_aucs(w_auc, y, p)[:, 0]
            class_auc[t] = dict(zip(classes[t], per_class))
            task_arrays[t] = {"bac": bac[0], "acc": acc[0], "auc": B.nanmean(per_class, axis=0)}
        main_metric = job.info.get("main_metric") or "bac"
        score = _main_resamples(main_metric, task_arrays, class_auc, ds)
        self.main.setdefault((ds, label), {}).setdefault((base["backbone"], base["block"]), []).append(score)
        rows = [(t, m, a) for t, arrs in task_arrays.items() for m, a in arrs.items()] + [("main", main_metric, score)]
        if len(task_arrays) > 1:   # the averages over tasks (AVG AUC: derm7pt's 17 categories)
            rows += [("AVG", m, B.nanmean(np.stack([a[m] for a in task_arrays.values()]), axis=0))
                     for m in ("bac", "acc")]
            if ds == "derm7pt":
                rows.append(("AVG", "auc", _main_resamples("avg_auc", task_arrays, class_auc, ds)))
        for t, m, a in rows:
            self.head_acc.add((ds, base["split"], label, t, m), a)
            self.head_rows.append({**base, "task": t, "metric": m, **B.summary(a, st["level"])})
        if attrs is not None:
            self.add_subgroups(base, attrs, ids[perm], ys[main_task][perm], probs[main_task][perm], main_task, w,
                               w_auc)

    def add_subgroups(self, base, attrs, ids, y, prob, task, w, w_auc) -> None:
        st = self.settings
        aligned = S.align(attrs, ids, S.attribute_names(base["dataset"]))
        for attr, res in S.group_scores(w, w_auc, y, prob, aligned, st["min_size"]).items():
            keys = [(base["dataset"], base["split"], base["method"], attr, grp) for grp in res["groups"]]
            for k, n in zip(keys, res["n"]):
                self.sub_n.setdefault(k, []).append(int(n))
            for metric in ("bac", "acc", "auc"):
                lo, hi = B.intervals(res[metric][:, 1:], st["level"])
                for i, k in enumerate(keys):
                    if res["scored"][i]:
                        self.sub_acc.add((*k, metric), res[metric][i])
                    self.sub_rows.append({**base, "task": task, "attribute": attr, "group": k[4], "n": int(res["n"][i]),
                                          "scored": bool(res["scored"][i]), "metric": metric,
                                          "value": _num(res[metric][i, 0]), "lo": _num(lo[i]), "hi": _num(hi[i])})

    def merge(self, other: "_CaseLevelPass") -> None:
        """Add another pass's runs (a worker's share) to this one."""
        self.cal_rows += other.cal_rows
        self.head_rows += other.head_rows
        self.sub_rows += other.sub_rows
        self.head_acc.merge(other.head_acc)
        self.sub_acc.merge(other.sub_acc)
        for k, v in other.sub_n.items():
            self.sub_n.setdefault(k, []).extend(v)
        for k, blocks in other.main.items():
            for b, arrays in blocks.items():
                self.main.setdefault(k, {}).setdefault(b, []).extend(arrays)
        self.reliability.update(other.reliability)
        for k, v in other.without.items():
            self.without.setdefault(k, []).extend(v)
        self.errors += other.errors

    def result(self) -> CaseLevel:
        level = self.settings["level"]
        head_m = _method_means(self.head_acc, ["dataset", "split", "method", "task", "metric"], level)
        sub_m, gaps = _subgroup_means(self.sub_acc, self.sub_n, level)
        cols_sub = ["run", "dataset", "split", "method", "backbone", "block", "reported", "task", "attribute", "group",
                    "n", "scored", "metric", "value", "lo", "hi"]
        return CaseLevel(pd.DataFrame(self.cal_rows), pd.DataFrame(self.head_rows), head_m,
                         pd.DataFrame(self.sub_rows, columns=cols_sub), sub_m, gaps, self.main, self.reliability,
                         self.without, self.settings, self.errors)


def case_level(jobs: Sequence[Job], records: pd.DataFrame, resamples: int | None = None,
               auc_resamples: int | None = None, seed: int | None = None, min_size: int | None = None,
               n_bins: int | None = None, level: float | None = None, workers: int | None = None) -> CaseLevel:
    """Calibration, bootstrap intervals and subgroup scores of every evaluated run output on its dataset's
    :func:`case_split`, aggregated per method. One pass over the runs; each case set's resamples are drawn once.
    The reliability inputs are kept for each method's best run on that split (by its main metric). Larger sweeps are
    shared among ``workers`` threads (default: one per usable CPU, at least :data:`RUNS_PER_WORKER` runs each); the
    results are the same either way, up to the order of floating-point sums."""
    resamples = B.RESAMPLES if resamples is None else int(resamples)
    auc_resamples = min(resamples, B.AUC_RESAMPLES if auc_resamples is None else int(auc_resamples))
    settings = {"resamples": resamples, "auc_resamples": auc_resamples, "seed": B.SEED if seed is None else seed,
                "min_size": S.MIN_SIZE if min_size is None else min_size,
                "n_bins": C.N_BINS if n_bins is None else n_bins,
                "level": B.LEVEL if level is None else level}
    if resamples < 1 or auc_resamples < 1:
        raise ValueError(f"bootstrap resamples must be at least 1, got {resamples} and {auc_resamples} (AUC)")
    scored = records[(records.split == records.dataset.map(case_split)) & records.score.notna()]
    best = {k: g.loc[g["score"].idxmax(), "run"] for k, g in scored.groupby(["dataset", "method"])}
    by_path = {str(j.path): j for j in jobs if j.ok}
    runs = [by_path[r] for r in dict.fromkeys(records["run"]) if r in by_path]
    workers = min(_usable_cpus() if workers is None else int(workers), len(runs) // RUNS_PER_WORKER)
    if workers <= 1:
        return _case_level_share(settings, best, runs).result()
    from concurrent.futures import ThreadPoolExecutor

    # Threads, not processes: the heavy steps (sparse products, sorts, cumulative sums, parquet reads) release the
    # GIL, and threads need no picklable state or guarded main module. Contiguous shares, merged in order, so the
    # rows come out in run order as without workers.
    shares = [list(part) for part in np.array_split(np.array(runs, dtype=object), workers)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(_case_level_share, [settings] * workers, [best] * workers, shares))
    for part in parts[1:]:
        parts[0].merge(part)
    return parts[0].result()


RUNS_PER_WORKER = 8   # fewer runs per thread: not worth the split


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def _case_level_share(settings: dict, best: dict, runs: Sequence[Job]) -> "_CaseLevelPass":
    acc = _CaseLevelPass(settings, best)
    for job in runs:
        # each run into a pass of its own, kept only when complete: a broken artefact leaves no partial rows
        one = _CaseLevelPass(settings, best, acc.weights)
        try:
            one.add_run(job)
        except Exception as e:  # one unreadable run is reported, not fatal
            acc.errors.append(f"{job.path}: left out of the case-level sections ({type(e).__name__}: {e})")
            continue
        acc.merge(one)
    return acc


def _method_means(acc, keys: list[str], level: float) -> pd.DataFrame:

    rows = []
    for key in acc.keys():
        rows.append({**dict(zip(keys, key)), "runs": acc.runs[key], **B.summary(acc.mean(key), level)})
    return pd.DataFrame(rows, columns=[*keys, "runs", "value", "lo", "hi"])


def _subgroup_means(acc, sizes: dict, level: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (dataset, split, method, attribute, group, metric): the mean over runs with its interval, the group's
    size per run (min and max) and whether it was too small; per attribute the worst-group gap of those means."""
    rows, gap_rows = [], []
    by_attr: dict = {}
    for k, ns in sizes.items():
        by_attr.setdefault(k[:4], []).append((k[4], min(ns), max(ns)))
    for (ds, split, method, attr), groups in by_attr.items():
        for metric in ("bac", "acc", "auc"):
            arrays, names = [], []
            for grp, n_min, n_max in groups:
                key = (ds, split, method, attr, grp, metric)
                ok = key in acc.sums
                arr = acc.mean(key) if ok else None
                rows.append({"dataset": ds, "split": split, "method": method, "attribute": attr, "group": grp,
                             "metric": metric, "n_min": n_min, "n_max": n_max, "too_small": not ok,
                             "runs": acc.runs.get(key, 0),
                             **(B.summary(arr, level) if ok else {"value": None, "lo": None, "hi": None})})
                if ok:
                    arrays.append(arr)
                    names.append(grp)
            if arrays:   # only scored groups were kept
                d, best, worst = S.gap(np.stack(arrays), names, np.ones(len(names), dtype=bool))
                gap_rows.append({"dataset": ds, "split": split, "method": method, "attribute": attr,
                                 "metric": metric, "best": best, "worst": worst, **B.summary(d, level)})
    cols = ["dataset", "split", "method", "attribute", "group", "metric", "n_min", "n_max", "too_small", "runs",
            "value", "lo", "hi"]
    return (pd.DataFrame(rows, columns=cols),
            pd.DataFrame(gap_rows, columns=["dataset", "split", "method", "attribute", "metric", "best", "worst",
                                            "value", "lo", "hi"]))


def robustness_records(jobs: Sequence[Job], records: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Main metric of every run's reported output with each input withheld (``robustness/<split>_<condition>.parquet``,
    the reported output's columns only), beside its score with all inputs (the same split's predictions: test, or
    validation where the dataset has no test split); and notes naming files that could not be read."""
    rows, notes = [], []
    by_path = {str(j.path): j for j in jobs if j.ok}
    for run, g in records.groupby("run", sort=False):
        job = by_path.get(run)
        if job is None:
            continue
        split = case_split(job.dataset)
        g = g[g.split == split]
        names = job.info.get("branches") or P.branches(P.read_predictions(_predictions_path(job, split)))
        label = reported_label(job, names)
        hit = g[g.method == label]
        if hit.empty:
            continue
        r = hit.iloc[0]
        base = {"run": run, "dataset": r["dataset"], "split": split, "main_metric": r["main_metric"], "method": label,
                "backbone": r["backbone"], "block": r["block"]}
        rows.append({**base, "condition": "all inputs", "score": r["score"]})
        for cond in P.WITHHELD_CONDITIONS:
            path = P.robustness_file(job.path, split, cond)
            if not path.is_file():
                continue
            try:
                df = P.read_predictions(path)
                names = P.branches(df)
                if len(names) != 1:
                    raise ValueError(f"expected the reported output's columns only, found outputs {names}")
                m = evaluate_probs(P.targets(df), P.branch_probs(df, names[0]), P.task_classes(df, names[0]),
                                   r["dataset"])
            except Exception as e:  # one unreadable file is reported, not fatal
                notes.append(f"{path}: not evaluated ({type(e).__name__}: {e})")
                continue
            rows.append({**base, "condition": cond, "score": main_score(m, r["main_metric"])})
    cols = ["run", "dataset", "split", "main_metric", "method", "backbone", "block", "condition", "score"]
    return pd.DataFrame(rows, columns=cols), notes
