"""``experiment=table6_4``: the stage-2 classifiers of a seed share that seed's stage 1, which is trained once —
in the sweep's process (basic launcher) and when each job runs as a process of its own (a GPU pool, here of
injected devices on the CPU), where the job keeps the sweep's Hydra context (``${hydra:sweep.dir}``)."""
from __future__ import annotations

import json

import pytest

from skinlesion.testing import FUSIONM4NET_FAST, run_record, sweep


def _stage1_runs(out) -> list[str]:
    return sorted(str(p.parent.relative_to(out)) for p in out.rglob("run.json")
                  if str(json.loads(p.read_text()).get("role", "")).startswith("stage1"))


def _table6_4(derm7pt_root, out, *extra) -> None:
    sweep(["experiment=table6_4", f"data.root={derm7pt_root}", *FUSIONM4NET_FAST, "seed=0,1", "cluster=svm,logreg",
           f"hydra.sweep.dir={out}", *extra], entry="fusionm4net")
    jobs = sorted(d for d in out.iterdir() if d.name.isdigit())
    assert len(jobs) == 4 and all((d / "metrics.json").is_file() for d in jobs)
    # two seeds, one stage 1 each (a main and a sub model), each trained by one job in one attempt
    assert _stage1_runs(out) == ["stage1_s0/main", "stage1_s0/sub", "stage1_s1/main", "stage1_s1/sub"]
    assert all(len(run_record(out / r)["attempts"]) == 1 for r in _stage1_runs(out))


@pytest.mark.timeout(600)
def test_table6_4_trains_one_stage1_per_seed(derm7pt_root, tmp_path):
    _table6_4(derm7pt_root, tmp_path / "sweep")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_table6_4_on_a_gpu_pool_trains_one_stage1_per_seed(derm7pt_root, tmp_path):
    _table6_4(derm7pt_root, tmp_path / "sweep", "gpu_pool=[0,1]")
