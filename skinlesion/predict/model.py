"""The trained model of a prediction: the module rebuilt from a checkpoint's inference payload, and the output the
run reports (with its searched branch weights where it has them)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from skinlesion.errors import ConfigError
from skinlesion.payload import PAYLOAD_KEY, PAYLOAD_VERSION


@dataclass
class Predictor:
    """A trained model ready for new cases: the module (eval mode), its payload and what the run reported."""
    module: object
    payload: dict
    checkpoint: Path
    vectorizer: object | None
    output: str                                  # the reported output: a branch, all, all_logits or searched
    weights: dict[str, float] | None = None      # searched branch weights (output == "searched")
    notes: list[str] = field(default_factory=list)
    run_dir: Path | None = None                  # the run the checkpoint belongs to (its folds.csv, metrics.json)

    @property
    def dataset(self) -> str:
        return self.payload["dataset"]

    @property
    def image_keys(self) -> tuple[str, ...]:
        """The images the network reads, in branch order."""
        return tuple(self.payload["image_keys"])

    @property
    def branch_inputs(self) -> dict[str, list[str]]:
        return self.payload["branch_inputs"]

    @property
    def reads(self) -> set[str]:
        """The inputs some branch of the network reads: only these can be missing."""
        return {x for need in self.branch_inputs.values() for x in need}


def _searched_weights(run_dir: Path | None, ckpt: Path) -> dict[str, float] | None:
    """The run's searched branch weights when it reports them and they were found for this checkpoint."""
    if run_dir is None or not (run_dir / "metrics.json").is_file():
        return None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluated = metrics.get("evaluated_checkpoint") or metrics.get("best_checkpoint")
    if metrics.get("reported") != "searched" or not evaluated or Path(evaluated).name != ckpt.name:
        return None
    return {str(b): float(w) for b, w in metrics["search"]["weights"].items()}


def load_predictor(checkpoint: str | Path, device: str = "cpu", which: str = "best") -> Predictor:
    """Rebuild the trained module from a checkpoint file or a run directory (its ``which`` checkpoint)."""
    import torch
    from omegaconf import OmegaConf

    import skinlesion.config  # noqa: F401  (resolvers, in case the saved config still names one)
    from skinlesion.build import build_module
    from skinlesion.checkpoints import locate
    from skinlesion.data.info import DataInfo
    from skinlesion.data.metadata import MetadataVectorizer
    from skinlesion.data.tasks import Task

    ckpt, run_dir = locate(Path(checkpoint), which)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:   # not a torch file, truncated, or pickled objects beyond plain values
        raise ConfigError(f"{ckpt}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    payload = state.get(PAYLOAD_KEY)
    if payload is None:
        payload = _payload_from_run(ckpt, run_dir)
    if payload.get("version") != PAYLOAD_VERSION:
        raise ConfigError(f"{ckpt}: inference payload version {payload.get('version')!r}; this version reads "
                          f"{PAYLOAD_VERSION}")
    cfg = OmegaConf.create(payload["config"])
    tasks = tuple(Task(name, tuple(classes)) for name, classes in payload["tasks"].items())
    info = DataInfo(payload["dataset"], tasks, tuple(payload["dataset_image_keys"]), int(payload["meta_dim"]))
    vec = None if payload["metadata"] is None else MetadataVectorizer.from_state(payload["metadata"])
    # build_module reads these from a DataModule; this stand-in carries them (and the payload itself)
    data = SimpleNamespace(info=info, normalize=payload["normalize"], table=SimpleNamespace(case_ids=None),
                           class_counts=lambda: [np.ones(t.num_classes) for t in tasks], vectorizer=vec,
                           inference_payload=payload)
    module = build_module(cfg, data, pretrained=False)   # the checkpoint has the weights
    module.load_state_dict(state["state_dict"])
    module = module.to(device).eval()
    weights = _searched_weights(run_dir, ckpt)
    notes = []
    if weights is None and payload.get("search") and run_dir is None:
        notes.append(f"the run reports a searched weighting of its branches, which lives in its metrics.json, not "
                     f"in the checkpoint; predicting its '{payload['report']}' output (pass the run directory to "
                     f"use the searched weights)")
    elif weights is None and payload.get("search") and (run_dir / "metrics.json").is_file():
        evaluated = json.loads((run_dir / "metrics.json").read_text()).get("evaluated_checkpoint") or "?"
        notes.append(f"the run's searched branch weights were found for {Path(evaluated).name}, not for "
                     f"{ckpt.name}: they do not carry over to other weights, so this predicts {ckpt.name}'s "
                     f"'{payload['report']}' output (--checkpoint best gives the searched output)")
    return Predictor(module, payload, ckpt, vec, "searched" if weights else payload["report"], weights, notes,
                     run_dir)


def _payload_from_run(ckpt: Path, run_dir: Path | None) -> dict:
    """A checkpoint written before checkpoints carried the payload: rebuilt from its run (config + dataset)."""
    if run_dir is None:
        raise ConfigError(f"{ckpt}: the checkpoint carries no inference payload (written by an older version); pass "
                          "the run directory it belongs to, with its dataset reachable, to rebuild it")
    from omegaconf import OmegaConf

    from skinlesion.build import build_module, prepare_data

    cfg = OmegaConf.load(run_dir / "config.yaml")
    return build_module(cfg, prepare_data(cfg), pretrained=False).inference_payload
