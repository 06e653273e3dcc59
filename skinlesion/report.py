"""``python report.py SWEEP_DIR [SWEEP_DIR...] [--format md,csv,tex] [--out DIR] [--stats-methods SET] [--wandb]``

Collects every run under the sweep directories, evaluates the saved predictions offline, and writes
thesis-style tables (all requested formats), statistics, figures, machine-readable summaries and a
self-contained ``report.html``. Missing, failed and incomplete jobs are listed, never dropped.
Case-level sections follow: calibration (before and after temperature scaling), bootstrap intervals, subgroups,
the paired bootstrap beside the Wilcoxon tests, and the scores with an input withheld.
With ``--wandb`` the tables and figures are also logged to one W&B run in the sweep's group.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from skinlesion.evaluation import bootstrap as BS
from skinlesion.evaluation import calibration as CAL
from skinlesion.evaluation import figures as F
from skinlesion.evaluation import subgroups as SG
from skinlesion.evaluation import tables as TB
from skinlesion.evaluation.aggregate import (PRIMARY_SPLIT, REPORTED_SPLITS, case_level, case_split, collect_jobs,
                                             evaluate_jobs, order_methods, problems_frame, robustness_records,
                                             summarise)
from skinlesion.evaluation.stats import (NO_BACKBONE, THESIS_METHODS, compare_methods, image_backbones,
                                         pair_backbone_free, paired_bootstrap, select_methods)

METRIC_LABEL = {"bac": "BAC", "avg_acc": "AVG ACC", "avg_auc": "AVG AUC"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[1])
    ap.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR")
    ap.add_argument("--format", default="md,csv,tex", help="comma-separated table formats: md, csv, tex")
    ap.add_argument("--out", default=None, help="output directory (default: <first sweep dir>/report)")
    ap.add_argument("--no-thesis", action="store_true", help="do not show thesis values and differences")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--no-tsne", action="store_true", help="skip t-SNE (the slowest figure)")
    ap.add_argument("--no-holm", action="store_true", help="omit the Holm-adjusted p column")
    ap.add_argument("--layout", choices=sorted(TB.TASK_LAYOUTS), default="canonical",
                    help="derm7pt task column order (canonical, or a thesis table's)")
    ap.add_argument("--best-by", choices=["auto", "main", "avg_auc", "avg_acc"], default="auto",
                    help="derm7pt best-run selection: AVG AUC, the thesis's criterion, for chapter-5 sweeps "
                         "(experiment=table5_*) and the run's main metric otherwise (auto, the default); or "
                         "the main metric, AVG AUC or AVG ACC for every sweep")
    ap.add_argument("--stats-methods", default="thesis", metavar="SET",
                    help="methods compared by Friedman and Wilcoxon: 'thesis' (default: the eight of Tables "
                         f"4.4-4.6, {', '.join(THESIS_METHODS)}; every method when a sweep has fewer than two of "
                         "them), 'all', or a comma-separated list of method labels")
    ap.add_argument("--no-case-level", action="store_true",
                    help="skip the case-level sections (calibration, bootstrap intervals, subgroups, paired bootstrap)")
    ap.add_argument("--bootstrap", type=int, default=BS.RESAMPLES, metavar="N",
                    help=f"case-level bootstrap resamples for BAC and ACC (default {BS.RESAMPLES})")
    ap.add_argument("--bootstrap-auc", type=int, default=BS.AUC_RESAMPLES, metavar="N",
                    help=f"resamples for AUC, the costly score (default {BS.AUC_RESAMPLES}; at most --bootstrap)")
    ap.add_argument("--bootstrap-seed", type=int, default=BS.SEED, metavar="SEED", help="seed of the resamples")
    ap.add_argument("--min-subgroup", type=int, default=SG.MIN_SIZE, metavar="N",
                    help=f"subgroups with fewer cases are listed as too small, not scored (default {SG.MIN_SIZE})")
    ap.add_argument("--ece-bins", type=int, default=CAL.N_BINS, metavar="N",
                    help=f"equal-width confidence bins of the ECE and reliability diagrams (default {CAL.N_BINS})")
    ap.add_argument("--wandb", action="store_true",
                    help="also log the tables and figures to one W&B run (job type 'report') in the sweep's "
                         "group; offline when no API key is configured")
    ap.add_argument("--wandb-project", default="skinlesion", help="W&B project for --wandb")
    return ap


def _groups(records: pd.DataFrame):
    """(dataset, main_metric) pairs in a stable order."""
    return list(dict.fromkeys(zip(records["dataset"], records["main_metric"])))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


@dataclass
class Details:
    """Report items shown folded (``<details>``) in report.html; their tables and figures are written as usual."""
    summary: str
    items: list = field(default_factory=list)


@dataclass
class Note:
    """A line of text in a section of report.html."""
    text: str


def _flat(items: list) -> list:
    return [x for it in items for x in (_flat(it.items) if isinstance(it, Details) else [it])]


def _slug(title: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", title.lower()).strip("-")


def _item_html(it) -> str:
    if isinstance(it, TB.Table):
        return f"<div class='scroll'>{TB.to_html(it)}</div>"
    if isinstance(it, Note):
        return f"<p class='note'>{html.escape(it.text)}</p>"
    if isinstance(it, Details):
        inner = "\n".join(_item_html(x) for x in it.items)
        return f"<details><summary>{html.escape(it.summary)}</summary>{inner}</details>"
    return _img(it)


def _html(sections: list[tuple[str, list]], problems: TB.Table, meta: dict) -> str:
    css = ("body{font-family:sans-serif;margin:2em;max-width:1600px} table{border-collapse:collapse;margin:.5em 0;font-size:12px}"
           "td,th{border:1px solid #bbb;padding:3px 6px;text-align:center} th{background:#eee}"
           "td:first-child{text-align:left} .notes{font-size:11px;color:#555} img{max-width:100%}"
           ".warn{background:#fff3cd;padding:.5em 1em;border:1px solid #e0c36b} .scroll{overflow-x:auto}"
           "nav ul{columns:2;font-size:13px} .note{font-size:13px;color:#333;max-width:70em}"
           "details{margin:.5em 0} summary{cursor:pointer;color:#225}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>skinlesion report</title><style>{css}</style></head><body>",
             "<h1>skinlesion report</h1>",
             f"<p>Generated {html.escape(meta['generated'])} from: {html.escape(', '.join(meta['sweeps']))}<br>"
             f"{meta['n_ok']} completed runs evaluated; {meta['n_problems']} missing/failed/incomplete.</p>"]
    links = "".join(f"<li><a href='#{_section_id(t)}'>{html.escape(t)}</a></li>" for t, _ in sections)
    parts.append(f"<nav><ul>{links}</ul></nav>")
    parts.append("<div class='warn'>" + TB.to_html(problems) + "</div>" if problems.rows
                 else "<p>No missing or failed runs.</p>")
    for title, items in sections:
        parts.append(f"<h2 id='{_section_id(title)}'>{html.escape(title)}</h2>")
        for it in items:
            parts.append(_item_html(it))
    parts.append("</body></html>")
    return "\n".join(parts)


# sections addressed by fixed anchors (report.html#calibration and so on)
SECTION_IDS = {"Calibration": "calibration", "Bootstrap intervals": "intervals", "Subgroups": "subgroups",
               "Robustness: inputs withheld": "robustness"}


def _section_id(title: str) -> str:
    return SECTION_IDS.get(title) or _slug(title)


def _best_by(records, best_by: str) -> str:
    """The records column that picks a method's best run: chapter 5 reports the best of its runs by AVG AUC
    (tables 5.2-5.5 and 5.11-5.14), so ``auto`` uses it for runs of the chapter-5 sweeps and the run's main
    metric (``score``) for anything else; an explicit ``--best-by`` wins."""
    if best_by == "auto":
        experiments = {str(e) for e in records["experiment"].dropna()}
        return "avg_auc" if experiments and all(e.startswith("table5_") for e in experiments) else "score"
    return "score" if best_by == "main" else best_by


def make_report(sweep_dirs: Sequence[str | Path], out: Path, formats: Sequence[str], compare: bool = True,
                figures: bool = True, tsne: bool = True, with_holm: bool = True, layout: str = "canonical",
                best_by: str = "auto", stats_methods: str = "thesis", case_sections: bool = True,
                bootstrap: int = BS.RESAMPLES, bootstrap_auc: int = BS.AUC_RESAMPLES, bootstrap_seed: int = BS.SEED,
                min_subgroup: int = SG.MIN_SIZE, ece_bins: int = CAL.N_BINS) -> dict:
    for name, value in (("--bootstrap", bootstrap), ("--bootstrap-auc", bootstrap_auc),
                        ("--min-subgroup", min_subgroup), ("--ece-bins", ece_bins)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    jobs, notes = collect_jobs(sweep_dirs)
    records, details = evaluate_jobs(jobs)
    problems = problems_frame(jobs)
    if records.empty:
        raise LookupError(_no_runs_message(sweep_dirs, problems))
    out.mkdir(parents=True, exist_ok=True)
    tdir, fdir, sdir = out / "tables", out / "figures", out / "stats"
    summary = summarise(records)
    written: list[Path] = []
    sections: list[tuple[str, list]] = []
    main_tables: list[TB.Table] = []
    stats_tables: list[TB.Table] = []
    stats_out = {}
    timings: dict[str, float] = {}
    cl, chosen_by = None, {}
    if case_sections:
        started = time.perf_counter()
        cl = case_level(jobs, records, bootstrap, bootstrap_auc, bootstrap_seed, min_subgroup, ece_bins)
        notes += cl.errors
        timings["case_level"] = time.perf_counter() - started

    for ds, mm in _groups(records):
        items: list = []
        rec = records[(records.dataset == ds) & (records.main_metric == mm)]
        splits = [s for s in REPORTED_SPLITS.get(ds, sorted(rec["split"].unique())) if s in set(rec["split"])]
        primary = PRIMARY_SPLIT.get(ds, splits[0])
        for split in splits:
            for kind in ("mean", "best"):
                t = TB.backbone_table(summary, ds, mm, split, compare, kind)
                items.append(t)
                if kind == "mean" and split == primary:
                    main_tables.append(t)
        # paired statistics on the primary split, blocks = backbone × fold (or seed)
        prec = rec[rec.split == primary]
        chosen, sel_notes = select_methods(order_methods(prec["method"]), stats_methods)
        if len(chosen) >= 2:
            res = compare_methods(pair_backbone_free(prec), ["backbone", "block"], chosen, with_holm=with_holm)
            res["notes"] = sel_notes + res["notes"]
            res["selection"] = stats_methods
            wt = TB.WILCOXON_TABLES.get((ds, mm, primary)) if compare else None
            st = TB.stats_table(res, f"{ds}_{primary}_{mm}_stats",
                                f"{TB.DATASET_NAME.get(ds, ds)} {primary} {METRIC_LABEL.get(mm, mm)}: Friedman and "
                                "pairwise two-sided Wilcoxon signed-rank tests", wt)
            if not with_holm:
                st.columns.pop(5)
                for r in st.rows:
                    r.pop(5)
            items.append(st)
            stats_tables.append(st)
            stats_out[f"{ds}_{primary}_{mm}"] = res
            chosen_by[(ds, mm)] = chosen
        if cl is not None and len(chosen) >= 2:   # the case-level view of the same pairs, beside the Wilcoxon table
            started = time.perf_counter()
            cs = case_split(ds)
            have = [m for m in chosen if (ds, m) in cl.main]
            pairs = paired_bootstrap({m: cl.main[(ds, m)] for m in have}, have, cl.settings["level"], with_holm)
            items.append(TB.paired_table(pairs, ds, cs, mm, cl.settings, with_holm))
            stats_out[f"paired_bootstrap_{ds}_{cs}_{mm}"] = {"split": cs, "methods": have, "settings": cl.settings,
                                                             "pairs": pairs}
            timings["paired"] = timings.get("paired", 0.0) + time.perf_counter() - started
        if ds == "derm7pt":
            if mm == "avg_acc":
                for split in [s for s in splits if s == "test"] or splits:
                    t = TB.configuration_table(records, jobs, split, compare)
                    items.insert(0, t)
                    main_tables.append(t)
            by = _best_by(rec, best_by)
            why = [*(["the thesis's criterion for chapter 5"] if by == "avg_auc" else []),
                   *(["--best-by changes it"] if best_by == "auto" else [])]
            notes.append(f"derm7pt best-run tables: each method's best run selected by {TB.BEST_BY_NAME[by]}"
                         + (f" ({'; '.join(why)})" if why else ""))
            for split in [s for s in splits if s == "test"] or splits:
                for kind in ("mean", "best"):
                    items.append(TB.task_accuracy_table(records, details, split, mm, layout, kind, compare, by))
                    items.append(TB.category_auc_table(records, details, split, mm, kind, compare, by))
                    items.append(TB.melanoma_table(records, details, split, mm, kind, compare, by))
                items.append(TB.all_categories_table(records, details, split, mm, "best", compare, by))
        if figures:
            fdir.mkdir(parents=True, exist_ok=True)
            for split in splits:
                s = summary[(summary.dataset == ds) & (summary.main_metric == mm) & (summary.split == split)]
                items.append(F.bar_figure(s, f"{TB.DATASET_NAME.get(ds, ds)} {split}: {METRIC_LABEL.get(mm, mm)} per method",
                                          f"{METRIC_LABEL.get(mm, mm)} (%)", fdir / f"bar_{ds}_{mm}_{split}.png"))
            items += _confusion_and_tsne(jobs, prec, details, ds, mm, primary, fdir, tsne)
        sections.append((f"{TB.DATASET_NAME.get(ds, ds)} — main metric {METRIC_LABEL.get(mm, mm)}", items))

    started = time.perf_counter()
    rob, rob_notes = robustness_records(jobs, records)
    notes += rob_notes
    sections += _case_sections(records, cl, rob, chosen_by, fdir if figures else None)
    rob.to_csv(out / "robustness_runs.csv", index=False)
    if cl is not None:
        cl.calibration.to_csv(out / "calibration_runs.csv", index=False)
        cl.headline.to_csv(out / "bootstrap_runs.csv", index=False)
        cl.subgroups.to_csv(out / "subgroups_runs.csv", index=False)
        cl.subgroup_methods.to_csv(out / "subgroups_methods.csv", index=False)
        cl.gaps.to_csv(out / "subgroup_gaps.csv", index=False)
    timings["sections"] = time.perf_counter() - started

    weights = TB.searched_weights_table(jobs)
    if weights is not None:
        sections.append(("FusionM4Net weights", [weights]))
    params = TB.params_table(jobs)
    sections.append(("Parameters", [params]))
    ptable = TB.problems_table(problems)
    all_tables = [it for _, items in sections for it in _flat(items) if isinstance(it, TB.Table)] + [ptable]
    for t in all_tables:
        written += TB.write_table(t, tdir, formats)

    sdir.mkdir(parents=True, exist_ok=True)
    for name, res in stats_out.items():
        (sdir / f"{name}.json").write_text(json.dumps(res, indent=2))
    summary.to_csv(out / "summary.csv", index=False)
    records.to_csv(out / "runs.csv", index=False)
    problems.to_csv(out / "missing.csv", index=False)
    meta = {"generated": datetime.now().isoformat(timespec="seconds"), "sweeps": [str(d) for d in sweep_dirs],
            "n_ok": int(sum(j.ok for j in jobs)), "n_problems": int(len(problems)), "notes": notes}
    (out / "report.json").write_text(json.dumps({**meta, "problems": problems.to_dict("records"),
                                                 "summary": json.loads(summary.to_json(orient="records")),
                                                 "stats": stats_out, "case_level": cl.settings if cl else None},
                                                indent=2, default=_json_default))
    (out / "report.html").write_text(_html(sections, ptable, meta))
    return {"out": out, "main_tables": main_tables, "stats_tables": stats_tables, "problems": ptable, "notes": notes,
            "files": written, "tables": all_tables,
            "figures": [it for _, items in sections for it in _flat(items) if isinstance(it, Path)], "jobs": jobs,
            "timings": timings}


def _json_default(x):
    """numpy scalars in the paired results."""
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


RELIABILITY_PANELS = 8   # reliability diagrams per dataset: the compared methods' best runs, at most this many
FOREST_METHODS = 4       # methods per forest plot: the compared methods with the highest mean main score


def _case_sections(records: pd.DataFrame, cl, rob: pd.DataFrame, chosen_by: dict, fdir: Path | None
                   ) -> list[tuple[str, list]]:
    """The Calibration, Bootstrap intervals, Subgroups and Robustness sections, one block per dataset."""
    cal, head, sub, robust = [], [], [], []
    for ds, mm in _groups(records):
        name = TB.DATASET_NAME.get(ds, ds)
        cs = case_split(ds)
        rec = records[(records.dataset == ds) & (records.main_metric == mm) & (records.split == cs)]
        methods = order_methods(rec["method"])
        chosen = chosen_by.get((ds, mm)) or methods
        r = rob[(rob.dataset == ds) & (rob.main_metric == mm)]
        if (r.condition != "all inputs").any():
            robust.append(TB.robustness_table(rob, ds, cs, mm))
        else:
            robust.append(Note(f"{name}: no run saved predictions with an input withheld "
                               "(robustness/<split>_<condition>.parquet)."))
        if cl is None:
            continue
        st = cl.settings
        c = cl.calibration[cl.calibration.dataset == ds] if len(cl.calibration) else cl.calibration
        if len(c):
            cal.append(TB.calibration_table(CAL.summarise_runs(c, ["dataset", "split", "method", "task"]), ds, cs, st))
            shown = [m for m in chosen if (ds, m) in cl.reliability][:RELIABILITY_PANELS]
            if fdir is not None and shown:
                items = {m: {**cl.reliability[(ds, m)], "label": f"{m}: best run"} for m in shown}
                cal.append(F.reliability_figure(items, st["n_bins"], f"{name} {cs}: reliability of each method's best "
                                                f"run ({next(iter(items.values()))['task']}, top label)",
                                                fdir / f"reliability_{ds}_{mm}_{cs}.png"))
        if len(cl.headline_methods):
            head.append(TB.headline_table(cl.headline_methods, ds, cs, mm, st))
        sub += _subgroup_items(cl, ds, mm, cs, rec, chosen, fdir)
    out = []
    if cl is not None:
        out += [("Calibration", cal or [Note("No predictions to calibrate.")]),
                ("Bootstrap intervals", head or [Note("No predictions to resample.")]),
                ("Subgroups", sub or [Note("No predictions to score by subgroup.")])]
    out.append(("Robustness: inputs withheld", robust))
    return out


def _subgroup_items(cl, ds: str, mm: str, cs: str, rec: pd.DataFrame, chosen: list[str], fdir: Path | None) -> list:
    name = TB.DATASET_NAME.get(ds, ds)
    st = cl.settings
    missing = cl.without_subgroups.get(ds, [])
    items: list = []
    sm = cl.subgroup_methods[(cl.subgroup_methods.dataset == ds) & (cl.subgroup_methods.split == cs)]
    if sm.empty:
        items.append(Note(f"{name}: {SG.NOT_SAVED} ({len(missing)} run(s)); runs save subgroups.csv since subgroup "
                          "analysis was added."))
        return items
    attributes = [a for a in SG.attribute_names(ds) if a in set(sm["attribute"])]
    shown = [m for m in chosen if m in set(sm["method"])]
    folded = []
    for attr in attributes:
        items.append(TB.subgroup_table(sm, cl.gaps, ds, cs, attr, "bac", shown, st))
        folded += [TB.subgroup_table(sm, cl.gaps, ds, cs, attr, m, shown, st) for m in ("acc", "auc")]
    if fdir is not None:
        means = rec.groupby("method")["score"].mean()
        top = sorted(shown, key=lambda m: -means.get(m, float("-inf")))[:FOREST_METHODS]
        rows = sm[(sm.metric == "bac") & sm.method.isin(top)]
        items.append(F.forest_figure(rows, attributes, top, f"{name} {cs}: BAC by subgroup with "
                                     f"{round(100 * st['level'])}% bootstrap intervals ({len(top)} best methods)",
                                     "BAC (%)", fdir / f"forest_{ds}_{mm}_{cs}.png"))
    items.append(Details(f"{name}: ACC and AUC by subgroup", folded))
    if missing:
        items.append(Details(f"{name}: {len(missing)} run(s) with {SG.NOT_SAVED}", [TB.Table(
            f"{ds}_runs_without_subgroups", f"{name}: runs without subgroups.csv", ["Run", "Status"],
            [[r, SG.NOT_SAVED] for r in missing])]))
    return items


def _no_runs_message(dirs, problems: pd.DataFrame) -> str:
    msg = f"no completed runs with predictions found under {', '.join(map(str, dirs))} (looked for run.json recursively)"
    if len(problems):
        msg += f"; {len(problems)} job(s) missing/failed:\n" + "\n".join(
            f"  [{r.status}] {r.job}: {r.reason}" for r in problems.itertuples())
    return msg


def _confusion_and_tsne(jobs, prec: pd.DataFrame, details: dict, ds: str, mm: str, split: str, fdir: Path,
                        tsne: bool) -> list[Path]:
    out: list[Path] = []
    if prec.empty:
        return out
    # one image backbone; methods that use none (metadata only) appear beside it with all their runs
    bb = F.backbone_for_figures(image_backbones(prec) or [""])
    rec = prec[prec.backbone.isin([bb, NO_BACKBONE])]
    mats, classes = {}, None
    for m in order_methods(rec["method"]):
        runs = rec[rec.method == m]["run"]
        cms = [details[(r, m, split)] for r in runs]
        task = next(iter(cms[0]["tasks"]))
        classes = list(cms[0]["tasks"][task]["per_class"])
        mats[m] = sum(pd.DataFrame(c["tasks"][task]["confusion_matrix"]).to_numpy() for c in cms)
    if mats:
        out.append(F.confusion_figure(mats, classes, f"{TB.DATASET_NAME.get(ds, ds)} {split}, {F.T.backbone_label(bb)}: "
                                      f"confusion matrices ({task}, row-normalised, summed over runs)",
                                      fdir / f"confusion_{ds}_{mm}_{split}.png"))
    if tsne:
        feats = {}
        by_path = {str(j.path): j for j in jobs if j.ok}
        base_of = dict(zip(rec["method"], rec["base_method"]))
        for base in dict.fromkeys(base_of[m] for m in order_methods(rec["method"])):
            for r in sorted(set(rec[rec.base_method == base]["run"]), key=lambda p: by_path[p].block):
                f = F.load_features(Path(r))
                if f is not None:
                    feats[f"{base} ({by_path[r].block})"] = f
                    break
        if feats:
            out.append(F.tsne_figure(feats, classes or [], f"{TB.DATASET_NAME.get(ds, ds)} test features, "
                                     f"{F.T.backbone_label(bb)}: t-SNE", fdir / f"tsne_{ds}_{mm}.png"))
    return out


def sweep_group(jobs, sweep_dirs: Sequence[str | Path]) -> str:
    """The W&B group of a sweep's report: the group its runs were logged under (``group``, else the
    ``experiment`` recorded in run.json, else ``group`` in the job's saved config); the first sweep
    directory's name when no run records one."""
    found: list[str] = []
    for j in jobs:
        g = j.info.get("group") or j.info.get("experiment") if j.info else None
        if not g and j.path is not None and (j.path / ".hydra" / "config.yaml").is_file():
            try:
                g = (yaml.safe_load((j.path / ".hydra" / "config.yaml").read_text()) or {}).get("group")
            except yaml.YAMLError:
                g = None
        if g:
            found.append(str(g))
    if found:
        return max(dict.fromkeys(found), key=found.count)   # most common; first seen on a tie
    return Path(sweep_dirs[0]).resolve().name


def log_report(res: dict, sweep_dirs: Sequence[str | Path], project: str = "skinlesion") -> dict:
    """Log a report's tables (``wandb.Table``) and figures (``wandb.Image``) to one W&B run of job
    type ``report`` in the sweep's group. Offline (``wandb sync`` later) when no API key is set up."""
    import wandb

    from skinlesion.tracking import offline_without_credentials

    offline_without_credentials()
    group = sweep_group(res["jobs"], sweep_dirs)
    run = wandb.init(project=project, group=group, job_type="report", name=f"report-{group}",
                     dir=os.environ.get("WANDB_DIR") or str(res["out"]),
                     config={"sweeps": [str(d) for d in sweep_dirs], "report_dir": str(res["out"])})
    try:
        payload = {f"tables/{t.name}": wandb.Table(columns=list(t.columns), data=[list(r) for r in t.rows])
                   for t in res["tables"]}
        payload.update({f"figures/{p.stem}": wandb.Image(str(p), caption=p.name) for p in res["figures"]})
        run.log(payload)
        info = {"run": run.name, "group": group, "mode": os.environ.get("WANDB_MODE", "online"),
                "n_tables": len(res["tables"]), "n_figures": len(res["figures"])}
    finally:
        run.finish()
    return info


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in TB.RENDERERS]
    if bad or not formats:
        print(f"error: unknown table format(s) {bad}; choose from md, csv, tex", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.sweep_dirs[0]) / "report"
    try:
        res = make_report(args.sweep_dirs, out, formats, compare=not args.no_thesis, figures=not args.no_figures,
                          tsne=not args.no_tsne, with_holm=not args.no_holm, layout=args.layout,
                          best_by=args.best_by, stats_methods=args.stats_methods,
                          case_sections=not args.no_case_level, bootstrap=args.bootstrap,
                          bootstrap_auc=args.bootstrap_auc, bootstrap_seed=args.bootstrap_seed,
                          min_subgroup=args.min_subgroup, ece_bins=args.ece_bins)
    except (FileNotFoundError, LookupError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.wandb:
        try:
            where = log_report(res, args.sweep_dirs, project=args.wandb_project)
        except Exception as e:  # the report itself is written; say why the upload did not happen
            print(f"error: report written to {out}, but logging it to W&B failed: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 2
        print(f"W&B: logged {where['n_tables']} tables and {where['n_figures']} figures to run {where['run']} "
              f"(group {where['group']!r}, {where['mode']})")
    for t in res["main_tables"] + res["stats_tables"]:
        print(TB.to_markdown(t))
    if res["problems"].rows:
        print(TB.to_markdown(res["problems"]))
    for n in res["notes"]:
        print(f"note: {n}")
    print(f"report written to {res['out']} (report.html, tables/, figures/, stats/, summary.csv)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
