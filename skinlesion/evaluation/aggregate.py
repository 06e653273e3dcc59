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
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob

from . import predictions as P
from .metrics import evaluate_predictions, main_score
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
