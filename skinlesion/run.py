"""A finished training run as a Python object: its config, metrics and best checkpoint, ready to predict.

    from skinlesion import load_run
    run = load_run("outputs/train/2025-01-01/12-00-00")
    frame = run.predict()                       # the run's own validation partition
    frame = run.predict(partition="test")
    frame = run.predict(my_datamodule)           # or any DataLoader of the project's batches

``predict`` rebuilds the network from the run's ``config.yaml``, loads the checkpoint the run reported
(its best by the validation score), normalises images as the run did and averages the run's test-time
views; the result has the columns of the saved ``predictions/*.parquet``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from skinlesion.checkpoints import resolve
from skinlesion.errors import ConfigError


class Run:
    """One run directory; see the module docstring."""

    def __init__(self, run_dir: str | Path, checkpoint: str = "best", root: str | None = None):
        import skinlesion.config  # noqa: F401  (resolvers, in case the saved config still names one)

        self.dir = Path(run_dir)
        if not (self.dir / "config.yaml").is_file():
            raise ConfigError(f"{self.dir}: not a run directory (no config.yaml)")
        self.cfg: DictConfig = OmegaConf.load(self.dir / "config.yaml")
        if root is not None:
            self.cfg.data.root = str(root)
        self.checkpoint = resolve(self.dir, checkpoint)
        self._dm = None
        self._module = None

    # --- what the run recorded --------------------------------------------------------------------
    @property
    def record(self) -> dict:
        return json.loads((self.dir / "run.json").read_text())

    @property
    def metrics(self) -> dict:
        return json.loads((self.dir / "metrics.json").read_text())

    def predictions(self, partition: str = "val") -> pd.DataFrame:
        from skinlesion.evaluation.predictions import read_predictions
        return read_predictions(self.dir / "predictions" / f"{partition}.parquet")

    # --- the model --------------------------------------------------------------------------------
    def datamodule(self):
        """The run's DataModule (same dataset, fold, split, metadata encoding), set up."""
        if self._dm is None:
            from skinlesion.build import prepare_data
            self._dm = prepare_data(self.cfg)
        return self._dm

    @property
    def module(self):
        """The trained LightningModule (network + normalisation + test-time views), on the CPU, in eval mode."""
        if self._module is None:
            import torch

            from skinlesion.build import build_module

            module = build_module(self.cfg, self.datamodule(), pretrained=False)   # the checkpoint has the weights
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
            module.eval_views = module.tta
            self._module = module.eval()
        return self._module

    @property
    def network(self):
        return self.module.network

    def predict(self, data=None, partition: str = "val", tta: str | None = None, accelerator: str = "auto",
                precision: str | None = None, root: str | Path | None = None, split: str | None = None,
                skip_unusable: bool = False) -> pd.DataFrame:
        """Per-case predictions (the saved predictions' columns) for ``data``: ``None`` (the run's own
        ``partition``), a LightningDataModule (its ``partition`` loader) or a DataLoader of the project's
        batches. ``tta`` overrides the run's test-time views (``none``, ``flips``, ``six``).

        ``root=DIR``: new cases instead, every case of a directory in the dataset's official layout (``split``:
        one official split of it) — the frame of ``python predict.py RUN_DIR --root DIR`` (:mod:`skinlesion.predict`:
        an ``inputs`` column, every branch and the reported output, cases lacking an input predicted from the
        outputs that do not need it)."""
        if root is not None:
            from skinlesion.predict import predict as predict_cases

            device = None if accelerator in ("auto", "gpu", "cuda") else "cpu"   # None: the GPU where there is one
            return predict_cases(self.dir, root=root, split=split, tta=tta, device=device,
                                 which=str(self.checkpoint), skip_unusable=skip_unusable)
        import lightning as L
        from lightning.pytorch import LightningDataModule

        from skinlesion.data.transforms import tta_views

        if partition not in ("val", "test"):
            raise ConfigError(f"partition={partition!r}: expected 'val' or 'test'")
        if data is None:
            data = self.datamodule()
        if isinstance(data, LightningDataModule):
            data.setup()
            loader = data.val_dataloader() if partition == "val" else data.test_dataloader()
        else:
            loader = data
        module = self.module
        module.eval_views = tta_views(tta) if tta is not None else module.tta
        table = getattr(getattr(loader, "dataset", None), "table", None)
        module.case_ids = None if table is None else table.case_ids
        trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            precision=precision or self.cfg.trainer.get("precision") or "32-true")
        trainer.test(module, dataloaders=loader, verbose=False)
        return module.predictions


def load_run(run_dir: str | Path, checkpoint: str = "best", root: str | None = None) -> Run:
    """Open a finished run for prediction. ``checkpoint``: ``best`` (the one its metrics came from), ``last``
    or a file; ``root`` points the run's dataset at another location."""
    return Run(run_dir, checkpoint=checkpoint, root=root)
