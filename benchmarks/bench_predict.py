"""Prediction throughput: cases per second of ``predict.py --root`` on a generated PAD-UFES-20 folder, with one
loader process and with ``--num-workers`` (default: one per core, at most 8), against the rate at which the run's own
evaluation loader delivers the same cases (no network) in the same run.

    python benchmarks/bench_predict.py                  # 1141 cases (PAD-UFES-20's test-sized batch), 256-px sources
    python benchmarks/bench_predict.py --n 4000 --source-size 600 backbone=test_efficientnet
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from skinlesion.data.synthetic import generate
from skinlesion.predict import default_workers, load_predictor, predict
from skinlesion.testing import TINY, compose_cfg, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1141, help="generated cases")
    ap.add_argument("--source-size", type=int, default=256, help="side of the generated source images")
    args, overrides = ap.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate("pad_ufes", Path(tmp) / "pad", n=args.n, size=args.source_size, seed=0, progress=False)
        run = train([f"data.root={root}", "model=jif_cat", "data.image_size=64", "trainer.limit_train_batches=1",
                     "tta=none", *overrides], Path(tmp) / "run")
        from skinlesion.train import prepare_data

        cfg = compose_cfg([*TINY, f"data.root={root}", "model=jif_cat", "data.image_size=64", "tta=none",
                           f"data.num_workers={default_workers()}", *overrides], Path(tmp) / "run")
        dm = prepare_data(cfg)
        loader = dm.eval_dataloader("test")
        t0 = time.perf_counter()
        cases = sum(len(b["target"]) for b in loader)
        loader_rate = cases / (time.perf_counter() - t0)
        pred = load_predictor(run, device="cpu")
        rates = {}
        for workers in (0, default_workers()):
            t0 = time.perf_counter()
            frame = predict(pred, root=root, device="cpu", num_workers=workers)
            rates[workers] = len(frame) / (time.perf_counter() - t0)
    print(f"{args.n} generated PAD-UFES-20 cases, {args.source_size}-px sources, 64-px model input, one view")
    print(f"evaluation loader ({default_workers()} workers, no network): {loader_rate:8.1f} cases/s")
    for workers, rate in rates.items():
        print(f"predict.py --num-workers {workers:<2}                  : {rate:8.1f} cases/s   "
              f"ratio to the loader {rate / loader_rate:5.2f}")


if __name__ == "__main__":
    main()
