"""Missing-input robustness: after training, the run's test cases (ISIC-2019, which has no test split: its validation
fold) are predicted again with one input withheld at a time (the metadata, the clinical image, the dermoscopic
image), through the prediction path (:func:`skinlesion.predict.inference.predict_cases`), so the numbers say what a
clinic without that input would get from this model. Written to ``robustness/<split>_no_<input>.parquet`` in the
saved predictions' schema (``case_id``, ``target/<task>``, ``prob/<reported output>/<task>/<class>``); an input the
model cannot answer without has no file and is listed in ``robustness/withheld.json``."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from skinlesion.evaluation.predictions import robustness_file, to_frame, withheld_condition
from skinlesion.provenance import write_json, write_parquet

log = logging.getLogger(__name__)

WITHHELD = "withheld"


def withhold_inputs(out: Path, dm, device: str = "cpu", batch_size: int = 32) -> dict[str, str]:
    """Write the run's test (else validation) predictions with each input it reads withheld; returns input -> file
    or the reason there is none."""
    from skinlesion.predict.cases import Cases
    from skinlesion.predict.inference import answering_branches, predict_cases
    from skinlesion.predict.model import load_predictor

    split = "test" if dm.has_partition("test") else "val"
    if not dm.has_partition(split):
        return {}
    pred = load_predictor(out, device)
    rows = np.flatnonzero(np.asarray(dm.partition) == split)
    done: dict[str, str] = {}
    for x in sorted(pred.reads):
        branches = answering_branches(pred, {x})
        if not branches:
            done[x] = f"no output of this model answers without '{x}' (branch inputs: {pred.branch_inputs})"
            continue
        table = dm.table.subset(rows)
        if x in table.images:
            table.images[x] = [None] * len(rows)
        cases = Cases(table, True, [{x: WITHHELD} for _ in rows], [[] for _ in rows])
        # a case that also lacks another input no output can do without is left out (counted in the log)
        frame, reported = predict_cases(pred, cases, device, batch_size, skip_unusable=True)
        position = {str(c): i for i, c in enumerate(table.case_ids)}
        kept = np.array([position[c] for c in frame["case_id"]], dtype=np.int64)
        targets = {t.name: table.targets[kept, j] for j, t in enumerate(dm.info.tasks)}
        path = robustness_file(out, split, withheld_condition(x))
        write_parquet(path, to_frame(frame["case_id"], targets, {pred.output: reported}, pred.payload["tasks"]))
        skipped = frame.attrs.get("skipped", 0)
        done[x] = (f"{path.relative_to(out)} (from {'+'.join(branches)})"
                   + (f"; {skipped} case(s) left out: they lack another input too" if skipped else ""))
    write_json(out / "robustness" / "withheld.json", {"output": pred.output, "split": split, "inputs": done})
    log.info("missing-input robustness: %s", "; ".join(f"without {x}: {v}" for x, v in done.items()))
    return done
