"""Training throughput: end-to-end (files -> decode -> augment -> Lightning loop) vs the raw step rate of the
same network on the same device with one batch already in memory. Prints both and their ratio.

    python benchmarks/bench_throughput.py                                   # CPU, generated data, small net
    python benchmarks/bench_throughput.py backbone=mobilenetv2 backbone.pretrained=false trainer=gpu \\
        data.batch_size=128 data.num_workers=16 --generate 4096 --source-size 600 --steps 60
    python benchmarks/bench_throughput.py data.root=/data/isic2019 data=isic2019 trainer=gpu ...

Arguments other than the flags below are config overrides, exactly as for train.py.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from skinlesion.data.synthetic import generate
from skinlesion.train import CONFIG_DIR, build_module, prepare_data

REPO = Path(__file__).resolve().parents[1]


class StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.images = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.images += batch["target"].shape[0]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t1 = time.perf_counter()


def end_to_end(cfg, steps: int, warmup: int) -> float:
    dm = prepare_data(cfg)
    module = build_module(cfg, dm)
    timer = StepTimer(warmup)
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                        max_epochs=1, limit_train_batches=steps + warmup, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return timer.images / (timer.t1 - timer.t0), dm


def raw_steps(cfg, dm, steps: int, warmup: int) -> float:
    """The same network, loss and optimizer on one batch kept on the device: the ceiling for the loop."""
    device = torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
                          else "cpu")
    module = build_module(cfg, dm).to(device).train()
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    batch = next(iter(dm.train_dataloader()))
    batch = module.on_after_batch_transfer(L.pytorch.utilities.move_data_to_device(batch, device), 0)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in str(cfg.trainer.precision)
           else torch.autocast(device.type, dtype=torch.float16) if "16" in str(cfg.trainer.precision)
           else nullcontext())
    n = batch["target"].shape[0]
    for i in range(steps + warmup):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with amp:
            loss, _ = module.loss(module.network(batch)["logits"], batch["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (worker start-up, cudnn tuning)")
    ap.add_argument("--generate", type=int, default=640, help="without data.root: generate this many cases")
    ap.add_argument("--source-size", type=int, default=256, help="side of the generated source images")
    args, overrides = ap.parse_known_args()
    defaults = ["backbone=test_efficientnet", "backbone.pretrained=false", "data.image_size=128",
                "data.batch_size=32", "data.num_workers=2", "trainer=cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        if not any(o.startswith("data.root=") for o in overrides):
            layout = next((o.split("=", 1)[1] for o in overrides if o.startswith("data=")), "pad_ufes")
            layout = "derm7pt" if layout.startswith("derm7pt") else layout
            root = generate(layout, Path(tmp) / "data", n=args.generate, size=args.source_size, progress=False)
            overrides = [*overrides, f"data.root={root}"]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[*defaults, *overrides, f"paths.root_dir={REPO}",
                                              f"paths.output_dir={tmp}/out"])
        with open_dict(cfg):
            cfg.data.progress = False
        L.seed_everything(0)
        e2e, dm = end_to_end(cfg, args.steps, args.warmup)
        raw = raw_steps(cfg, dm, args.steps, args.warmup)
    print(f"config: backbone={cfg.backbone.name} image_size={cfg.data.image_size} batch={cfg.data.batch_size} "
          f"workers={cfg.data.num_workers} precision={cfg.trainer.precision} "
          f"device={'cuda:' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
    print(f"end-to-end training : {e2e:10.1f} images/s")
    print(f"raw step (in memory): {raw:10.1f} images/s")
    print(f"ratio end-to-end/raw: {e2e / raw:10.3f}")


if __name__ == "__main__":
    main()
