"""Training throughput of the clinical + dermoscopy networks (AMMFM, PEMM) beside the raw step rate of their
dermoscopy backbone alone, all measured in the same run on the same device.

    python benchmarks/bench_two_image.py                          # CPU, tiny test backbones (wiring check)
    python benchmarks/bench_two_image.py --full trainer=gpu data.num_workers=16 --steps 40
                                                                  # GPU: Swin-T / MobileNetV3-Small, 224 px, batch 24

For each model it prints cases/s end to end (files -> decode -> augment -> Lightning loop), the raw step rate with
one batch in memory, peak GPU memory, and the ratio of the model's raw rate to the raw rate of a single-image
network on the same dermoscopy backbone (the cost of the second encoder and the fusion blocks). A case is a
clinical + dermoscopic pair. Arguments other than the flags below are config overrides, as for train.py.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import end_to_end, raw_steps  # noqa: E402

from skinlesion.data.synthetic import generate  # noqa: E402
from skinlesion.train import CONFIG_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = {"AMMFM": ["model=ammfm"], "PEMM": ["model=pemm"], "backbone alone": ["model=single_image"]}
TINY = ["backbone=test_resnet", "structure.clinic_backbone.name=test_efficientnet", "data.image_size=64",
        "trainer=cpu", "data.num_workers=2"]
FULL = ["backbone=swin_t", "data.image_size=224", "trainer=gpu"]


def _peak_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--generate", type=int, default=240, help="generated derm7pt cases")
    ap.add_argument("--source-size", type=int, default=256, help="side of the generated source images")
    ap.add_argument("--full", action="store_true", help="the thesis's backbones at 224 px (for a GPU)")
    args, overrides = ap.parse_known_args()
    base = ["data=derm7pt", "data.batch_size=24", "backbone.pretrained=false",
            "structure.clinic_backbone.pretrained=false", *(FULL if args.full else TINY)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = generate("derm7pt", Path(tmp) / "d7", n=args.generate, size=args.source_size, progress=False)
        for name, model in MODELS.items():
            ov = [*model, *base, *overrides, f"data.root={root}"]
            if name != "AMMFM":   # only AMMFM has a separate clinical encoder to configure
                ov = [o for o in ov if not o.startswith("structure.")]
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose("train", overrides=[*ov, f"paths.root_dir={REPO}", f"paths.output_dir={tmp}/out"])
            with open_dict(cfg):
                cfg.data.progress = False
                cfg.callbacks.swa = None
            L.seed_everything(0)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            e2e, dm = end_to_end(cfg, args.steps, args.warmup)
            raw = raw_steps(cfg, dm, args.steps, args.warmup)
            results[name] = (e2e, raw, _peak_mb())
    device = "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device={device} batch=24 steps={args.steps} {'full' if args.full else 'tiny'} backbones")
    print(f"{'model':<16}{'end-to-end cases/s':>20}{'raw cases/s':>14}{'e2e/raw':>9}{'raw/backbone':>14}{'peak MiB':>10}")
    backbone_raw = results["backbone alone"][1]
    for name, (e2e, raw, peak) in results.items():
        print(f"{name:<16}{e2e:>20.1f}{raw:>14.1f}{e2e / raw:>9.3f}{raw / backbone_raw:>14.3f}"
              f"{'' if peak is None else f'{peak:>10.0f}'}")


if __name__ == "__main__":
    main()
