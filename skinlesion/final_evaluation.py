"""After training: the model a run reports is evaluated on every partition it has, with its test-time views; the
predictions, the metrics of every output, the Scheme-1 weighting (chapter 5) and the results table follow, then the
calibration (ECE before and after temperature scaling) and the worst-group gap of the reported output.

Which model: the averaged weights where the recipe averages (``swa.ckpt``), else the best checkpoint by the
reported output's validation score. The choice depends only on what training left in ``checkpoints/``, so a run
stopped anywhere after training and run again evaluates the same model and writes the same predictions.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from skinlesion.provenance import write_json, write_npz, write_parquet
from skinlesion.swa import WeightAveraging

log = logging.getLogger(__name__)


def evaluated_checkpoint(trainer) -> tuple[str | None, str | None, WeightAveraging | None]:
    """(best checkpoint, the checkpoint to evaluate, the weight-averaging callback if any)."""
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    swa = next((c for c in trainer.callbacks if isinstance(c, WeightAveraging)), None)
    return best, (swa.checkpoint_path if swa is not None and swa.checkpoint_path else best), swa


def evaluate(cfg: DictConfig, out: Path, trainer, module, dm, params: dict) -> dict:
    """Evaluate the trained run in ``trainer`` and write ``predictions/``, ``metrics.json`` (rank 0); returns the
    metrics (:func:`results_table` says them to the user once every later step of the run has ended)."""
    from skinlesion.evaluation.metrics import evaluate_predictions
    from skinlesion.tracking import log_final_metrics

    network = module.network
    best_path, ckpt_path, swa = evaluated_checkpoint(trainer)
    module.eval_views = module.tta
    metrics: dict = {"main_metric": dm.info.main_metric, "reported": cfg.model.report,
                     "best_checkpoint": best_path, "evaluated_checkpoint": ckpt_path,
                     "weight_averaging": None if swa is None else {"states": swa.n_averaged,
                                                                   "last_epochs": swa.last_epochs},
                     "params": params, "branches": list(network.branches), "world_size": trainer.world_size,
                     "tasks": {t.name: list(t.classes) for t in dm.info.tasks}}
    (out / "predictions").mkdir(exist_ok=True)
    for part in ("val", "test", "holdout"):
        if not dm.has_partition(part):
            continue
        trainer.test(module, dataloaders=dm.eval_dataloader(part), ckpt_path=ckpt_path, verbose=False)
        if trainer.global_rank != 0:
            continue
        frame = module.predictions
        write_parquet(out / "predictions" / f"{part}.parquet", frame)
        if module.features is not None:
            write_npz(out / "predictions" / f"{part}_features.npz", case_id=frame["case_id"].to_numpy(),
                      features=module.features, target=frame.iloc[:, 1].to_numpy())
        combos = list(dict.fromkeys([*network.branches, *(["all", "all_logits"] if len(network.branches) > 1 else []),
                                     cfg.model.report]))
        metrics[part] = {c: evaluate_predictions(frame, combination=c, dataset=dm.info.dataset) for c in combos}
    if trainer.global_rank == 0 and cfg.model.get("search") == "scheme1" and "val" in metrics:
        fusion_scheme1(out, metrics, dm.info.dataset)
    if trainer.global_rank == 0:
        metrics.update(case_summary(out, metrics, dm.info.dataset))
        write_json(out / "metrics.json", metrics)
        log_final_metrics(trainer, metrics)
    return metrics


def fusion_scheme1(out: Path, metrics: dict, dataset: str) -> None:
    """P = W_D·P_derm + W_C·P_clinic + W_F·P_fusion with the weights that maximise validation AVG ACC over the
    simplex grid, applied unchanged to test; the weighted output becomes the reported one (``searched``)."""
    from skinlesion.evaluation.metrics import evaluate_predictions
    from skinlesion.evaluation.predictions import read_predictions
    from skinlesion.evaluation.search import search_run

    found = search_run(out)
    metrics["search"] = {k: found[k] for k in ("kind", "branches", "weights", "grid_n", "score", "index",
                                               "n_candidates")}
    for part in ("val", "test"):
        path = out / "search" / f"{part}_fused.parquet"
        if part in metrics and path.is_file():
            metrics[part]["searched"] = evaluate_predictions(read_predictions(path), "searched", dataset)
    metrics["reported"] = "searched"


def case_summary(out: Path, metrics: dict, dataset: str) -> dict:
    """``calibration`` (ECE, Brier, NLL of the reported output's first task, before and after a temperature fitted
    on validation) and ``subgroups`` (its BAC per subgroup and the worst-group gap, from the run's saved
    ``subgroups.csv``, as the report reads them) on the test partition, or validation where there is none. A failure
    here is recorded in words and logged; it does not stop a finished run from writing its metrics."""
    from skinlesion.evaluation import calibration as C
    from skinlesion.evaluation import predictions as P
    from skinlesion.evaluation import subgroups as S

    split = "test" if "test" in metrics else "val"
    reported = metrics["reported"]

    def frame(part, required=True):
        path = out / ("search" if reported == "searched" else "predictions") / (
            f"{part}_fused.parquet" if reported == "searched" else f"{part}.parquet")
        if not path.is_file() and required:
            raise FileNotFoundError(f"no {path} to score the {reported!r} output on")
        return P.read_predictions(path) if path.is_file() else None

    result: dict = {}
    try:
        scored = frame(split)
        val = frame("val", required=False) if split == "test" else None
        result["calibration"] = C.final_calibration(val, scored, reported, split)
        saved = S.read_attributes(out)
        if saved is not None:
            attrs = S.align(saved, scored["case_id"], S.attribute_names(dataset))
            task = P.task_names(scored)[0]
            gaps = S.point_gaps(P.targets(scored)[task], P.combine(scored, reported)[task], attrs)
            result["subgroups"] = {"split": split, "output": reported, "task": task, **gaps}
    except Exception as e:  # the extras must not cost a finished run its metrics
        log.warning("calibration / subgroup summary not computed: %s: %s", type(e).__name__, e)
        result.setdefault("calibration", {"error": f"{type(e).__name__}: {e}"})
    return result


def results_table(metrics: dict, info) -> str:
    """Per-task results of the reported output, with the chance level of each task for comparison."""
    rep = metrics["reported"]
    parts = [p for p in ("val", "test") if p in metrics]
    head = f"{'task':<12}{'chance':>8}" + "".join(f"{p + ' ' + m:>10}" for p in parts for m in ("BAC", "ACC", "AUC"))
    lines = [f"Results ({rep} output, TTA-averaged; BAC/ACC/AUC in %)", head, "-" * len(head)]
    for t in info.tasks:
        cells = []
        for p in parts:
            tm = metrics[p][rep]["tasks"][t.name]
            cells += [tm["bac"], tm["acc"], tm["auc"]]
        lines.append(f"{t.name:<12}{100 / t.num_classes:>8.1f}" +
                     "".join(f"{100 * v:>10.1f}" if v is not None else f"{'n/a':>10}" for v in cells))
    if len(info.tasks) > 1:
        m = {p: metrics[p][rep] for p in parts}
        lines.append("-" * len(head))
        lines.append(f"{'AVG ACC':<12}{'':>8}" + "".join(f"{'':>10}{100 * m[p]['avg_acc']:>10.1f}{'':>10}"
                                                         for p in parts))
        if info.dataset == "derm7pt" and all(m[p].get("avg_auc") is not None for p in parts):
            lines.append(f"{'AVG AUC(17)':<12}{'':>8}" + "".join(f"{'':>20}{100 * m[p]['avg_auc']:>10.1f}"
                                                                 for p in parts))
    return "\n".join(lines)
