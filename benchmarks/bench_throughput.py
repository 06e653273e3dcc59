"""Training throughput: end-to-end (files -> decode -> augment -> Lightning loop) with the CPU input pipeline and
with the device path (``data.augment_on=device``: a decoded-once uint8 store, augmentation on the device), beside
the raw step rate of the same network on the same device with one batch already in memory. Prints each and its
ratio.

    python benchmarks/bench_throughput.py                                   # CPU, generated data, small net

One GPU, bf16, generated 600-px sources (the store is built once per run, before the timed steps):

    python benchmarks/bench_throughput.py backbone=mobilenetv2 backbone.pretrained=false trainer=gpu \
        data.image_size=224 data.batch_size=128 data.num_workers=16 --generate 4096 --source-size 600 --steps 60
    python benchmarks/bench_throughput.py backbone=resnet50 backbone.pretrained=false trainer=gpu \
        data.image_size=224 data.batch_size=128 data.num_workers=16 --generate 4096 --source-size 600 --steps 60
    python benchmarks/bench_throughput.py backbone=swin_t backbone.pretrained=false trainer=gpu \
        data.image_size=224 data.batch_size=128 data.num_workers=16 --generate 4096 --source-size 600 --steps 60
    python benchmarks/bench_throughput.py data=isic2019 data.root=/data/isic2019 trainer=gpu ...   # real files

Arguments other than the flags below are config overrides, exactly as for train.py (``--paths device`` times
only the device path).
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
    """Wall time from the start of training step ``warmup`` (counted across epochs) to the end of the last step,
    and the steps and images in between: what the reported rate is made of."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.images, self.steps, self._seen = warmup, None, None, 0, 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._seen == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._seen >= self.warmup:
            self.images += batch["target"].shape[0]
            self.steps += 1
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t1 = time.perf_counter()
        self._seen += 1


def end_to_end(cfg, steps: int, warmup: int, t0: float) -> tuple[float, object, float]:
    """Images/s of the Lightning loop from files, the DataModule, and the seconds its setup took since ``t0``
    (with data.augment_on=device: building or opening the image store)."""
    dm = prepare_data(cfg)
    setup_s = time.perf_counter() - t0
    module = build_module(cfg, dm)
    timer = StepTimer(warmup)
    # steps, not epochs: a small generated set has fewer batches per epoch than the steps asked for
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                        max_epochs=-1, max_steps=steps + warmup, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    if timer.steps != steps:
        raise SystemExit(f"timed {timer.steps} steps, not the {steps} asked for")
    return timer.images / (timer.t1 - timer.t0), dm, setup_s


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
    ap.add_argument("--paths", default="cpu,device", help="input paths to time end to end (data.augment_on)")
    args, overrides = ap.parse_known_args()
    pipelines = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not pipelines or set(pipelines) - {"cpu", "device"}:
        ap.error(f"--paths {args.paths!r}: expected a comma-separated list of cpu and device")
    defaults = ["backbone=test_efficientnet", "backbone.pretrained=false", "data.image_size=128",
                "data.batch_size=32", "data.num_workers=2", "trainer=cpu"]
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not any(o.startswith("data.root=") for o in overrides):
            layout = next((o.split("=", 1)[1] for o in overrides if o.startswith("data=")), "pad_ufes")
            layout = "derm7pt" if layout.startswith("derm7pt") else layout
            root = generate(layout, Path(tmp) / "data", n=args.generate, size=args.source_size, progress=False)
            overrides = [*overrides, f"data.root={root}"]
        if not any(o.startswith(("paths.cache_dir=", "data.cache.dir=")) for o in overrides):
            overrides = [*overrides, f"paths.cache_dir={tmp}/cache"]   # the store of generated data is temporary
        dm = None
        for pipeline in pipelines:
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose("train", overrides=[*defaults, *overrides, f"paths.root_dir={REPO}",
                                                  f"paths.output_dir={tmp}/out", f"data.augment_on={pipeline}"])
            with open_dict(cfg):
                cfg.data.progress = False
            L.seed_everything(0)
            t0 = time.perf_counter()
            rate, dm, setup_s = end_to_end(cfg, args.steps, args.warmup, t0)
            results[pipeline] = (rate, setup_s)
        raw = raw_steps(cfg, dm, args.steps, args.warmup)
    print(f"config: backbone={cfg.backbone.name} image_size={cfg.data.image_size} batch={cfg.data.batch_size} "
          f"workers={cfg.data.num_workers} precision={cfg.trainer.precision} "
          f"device={'cuda:' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
    print(f"timed: {args.steps} steps of each path after {args.warmup} untimed (epochs restart as needed)")
    print(f"raw step (in memory)              : {raw:10.1f} images/s")
    for pipeline, (rate, setup_s) in results.items():
        print(f"end-to-end, data.augment_on={pipeline:<6} : {rate:10.1f} images/s   ratio {rate / raw:6.3f}   "
              f"(setup {setup_s:.1f} s{', store build included' if pipeline == 'device' else ''})")


if __name__ == "__main__":
    main()
