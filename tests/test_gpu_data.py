"""data.augment_on=device: the uint8 image store (same bytes as the CPU path's evaluation images, never a partial file)
and the device augmentation (the CPU path's distribution, one geometry per case, reflected borders)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skinlesion.config import validate_config
from skinlesion.data import Derm7ptDataModule, PadUfes20DataModule
from skinlesion.data.gpu_augment import BatchAugment
from skinlesion.data.store import ImageStore, StoreDataset, keyed_draws
from skinlesion.data.transforms import geometric, normalize_batch, photometric
from skinlesion.errors import ConfigError, DataError
from skinlesion.module import MultiTaskModule
from skinlesion.testing import TINY, compose_cfg, run_record, started, train

N_DRAWS = 4000


def _images(tmp: Path, n: int, size=(30, 22)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _expected(paths: list[Path], s: int) -> np.ndarray:
    return np.stack([A.Resize(s, s)(image=np.array(Image.open(p).convert("RGB")))["image"].transpose(2, 0, 1)
                     for p in paths])


# --------------------------------------------------------------------------------------------- the store

@pytest.mark.parametrize("size,cache", [(20, False), (48, False), (40, True)])
def test_store_rows_are_the_cpu_paths_eval_images(derm7pt_root, tmp_path, size, cache):
    """Both images of every derm7pt case, shrunk and enlarged, with and without the PNG cache: the same bytes."""
    kw = dict(root=str(derm7pt_root), image_size=size, batch_size=16, num_workers=0, progress=False,
              cache={"enabled": cache, "size": 36, "dir": str(tmp_path / "cache")})
    cpu = Derm7ptDataModule(**kw)
    gpu = Derm7ptDataModule(augment_on="device", **kw)
    cpu.setup()
    gpu.setup()
    assert isinstance(gpu.datasets["val"], StoreDataset) and not isinstance(cpu.datasets["val"], StoreDataset)
    for part in ("val", "test"):
        a, b = cpu.datasets[part], gpu.datasets[part]
        batch = b.__getitems__(list(range(len(b))))
        for i in range(len(a)):
            x, y = a[i], batch[i]
            assert x["index"] == y["index"] and torch.equal(x["meta"], y["meta"])
            assert torch.equal(x["target"], y["target"]) and "aug" not in y
            for k in ("derm", "clinic"):
                assert x["images"][k].dtype == torch.uint8 and torch.equal(x["images"][k], y["images"][k]), (i, k)


def _counting_decodes(monkeypatch) -> list[Path]:
    import skinlesion.data.store as store_mod

    decoded: list[Path] = []
    real = store_mod.load_rgb
    monkeypatch.setattr(store_mod, "load_rgb", lambda p, where="": decoded.append(Path(p)) or real(p, where))
    return decoded


def test_a_second_build_reuses_the_store_and_a_changed_image_rebuilds_its_entry_only(tmp_path, monkeypatch):
    paths = _images(tmp_path, 5)
    store = ImageStore(tmp_path / "cache", 16)
    rows = store.build(paths, progress=False)
    np.testing.assert_array_equal(store.open()[rows], _expected(paths, 16))
    np.testing.assert_array_equal(store.open(in_memory=True)[rows], _expected(paths, 16))
    assert isinstance(store.open(), np.memmap)

    decoded = _counting_decodes(monkeypatch)
    assert (ImageStore(tmp_path / "cache", 16).build(paths, progress=False) == rows).all() and decoded == []
    # a changed source file (new content, new mtime): its entry alone is decoded again, into a row of its own
    Image.fromarray(np.full((30, 22, 3), 7, np.uint8)).save(paths[2])
    os.utime(paths[2], ns=(time.time_ns(), time.time_ns() + 10**9))
    again = store.build(paths, progress=False)
    assert decoded == [paths[2]] and again[2] != rows[2] and (np.delete(again, 2) == np.delete(rows, 2)).all()
    np.testing.assert_array_equal(store.open()[again[2]], np.full((3, 16, 16), 7, np.uint8))
    # an added image (another dataset, another root): decoded alone
    (tmp_path / "more").mkdir()
    added = _images(tmp_path / "more", 1)[0]
    decoded.clear()
    both = store.build([*paths, added], progress=False)
    assert decoded == [added] and (both[:5] == again).all()
    np.testing.assert_array_equal(store.open()[both], _expected([*paths, added], 16))
    assert ImageStore(tmp_path / "cache", 17).dir != store.dir                      # the size is part of the key


def test_a_failed_build_names_the_case_and_keeps_only_finished_rows(tmp_path, monkeypatch):
    paths = _images(tmp_path, 6)
    good = paths[4].read_bytes()
    paths[4].write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    store = ImageStore(tmp_path / "cache", 8)
    monkeypatch.setattr(ImageStore, "CHUNK", 2)
    with pytest.raises(DataError) as e:
        store.build(paths, where=[f" (case C{i}, meta.csv line {i + 2})" for i in range(6)], workers=2,
                    progress=False)
    assert str(paths[4]) in str(e.value) and "case C4, meta.csv line 6" in str(e.value)
    assert store.rows(paths[:4]) is not None and store.rows(paths) is None            # two chunks of two kept
    paths[4].write_bytes(good)
    os.utime(paths[4], ns=(time.time_ns(), time.time_ns() + 10**9))
    decoded = _counting_decodes(monkeypatch)
    rows = store.build(paths, progress=False)
    assert sorted(decoded) == sorted(paths[4:])
    np.testing.assert_array_equal(store.open()[rows], _expected(paths, 8))


def test_a_killed_or_truncated_build_keeps_what_it_finished(tmp_path, monkeypatch):
    paths = _images(tmp_path, 40)
    store = ImageStore(tmp_path / "cache", 24)
    # a real kill: a build whose decoding is slowed down is SIGKILLed after some chunks of four are on disk
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "import skinlesion.data.store as s\n"
        "real = s.load_rgb\n"
        "s.load_rgb = lambda p, w='': (time.sleep(0.1), real(p, w))[1]\n"
        "s.ImageStore.CHUNK = 4\n"
        f"s.ImageStore({str(tmp_path / 'cache')!r}, 24).build([Path(p) for p in sys.argv[1:]], workers=1, "
        "progress=False)\n")
    with started([sys.executable, "-c", script, *paths]) as proc:   # leaving the block SIGKILLs it
        deadline = time.monotonic() + 60
        while len(store._read_index()) < 8:
            assert proc.poll() is None and time.monotonic() < deadline, "the build did not get going"
            time.sleep(0.05)
    done = len(store._read_index())
    assert 8 <= done < 40 and store.rows(paths) is None
    decoded = _counting_decodes(monkeypatch)
    rows = store.build(paths, progress=False)
    assert len(decoded) == 40 - done                                   # what was finished is reused
    np.testing.assert_array_equal(store.open()[rows], _expected(paths, 24))

    # a data file cut short (a copy interrupted outside this code): the rows past its end are decoded again
    with open(store.data, "r+b") as f:
        f.truncate(store.data.stat().st_size - 100)
    decoded.clear()
    rows = store.build(paths, progress=False)
    assert len(decoded) == 1
    np.testing.assert_array_equal(store.open()[rows], _expected(paths, 24))


# --------------------------------------------------------------------------- the augmentation's distribution

def _cpu_draws(size: int, n: int) -> dict[str, np.ndarray]:
    """The parameters albumentations (the CPU path) applied in ``n`` draws of the training block."""
    block = geometric(size, True, {}).transforms[1]
    comp = A.Compose([block], save_applied_params=True, seed=11)
    img = np.zeros((size, size, 1), np.uint8)
    c = np.array([size / 2 - 0.5, size / 2 - 0.5])
    rec = {k: [] for k in ("vflip", "hflip", "affine", "rot90", "shift", "scale", "angle")}
    for _ in range(n):
        d = dict(comp(image=img)["applied_transforms"])
        rec["vflip"].append("VerticalFlip" in d)
        rec["hflip"].append("HorizontalFlip" in d)
        rec["affine"].append("Affine" in d)
        rec["rot90"].append(d.get("RandomRotate90", {"factor": 0})["factor"])
        if "Affine" in d:
            m = d["Affine"]["matrix"]
            rec["shift"].append(np.round(m[:2, 2] - (c - m[:2, :2] @ c), 6))
            rec["scale"].append(d["Affine"]["scale"]["x"])
            rec["angle"].append(d["Affine"]["rotate"])
    return {k: np.array(v) for k, v in rec.items()}


def _gpu_draws(size: int, n: int, aug: dict | None = None) -> tuple[BatchAugment, object]:
    ba = BatchAugment(aug or {}, ["clinic", "derm"])
    return ba, ba.sample(ba.draws(n, torch.Generator().manual_seed(5)), size)


def test_geometric_parameters_follow_the_cpu_distribution():
    size = 224
    cpu = _cpu_draws(size, N_DRAWS)
    _, p = _gpu_draws(size, N_DRAWS)
    on = p.affine.numpy()
    gpu = {"vflip": p.vflip.numpy(), "hflip": p.hflip.numpy(), "affine": on, "rot90": p.rot90.numpy(),
           "shift": p.shift.numpy()[on], "scale": p.scale.numpy()[on], "angle": p.angle.numpy()[on]}
    # probabilities: each op 0.5 inside a block of probability 0.5; rot90 also draws 0 quarter turns
    theory = {"vflip": 0.25, "hflip": 0.25, "affine": 0.25}
    for k, v in theory.items():
        assert abs(cpu[k].mean() - v) < 0.04 and abs(gpu[k].mean() - v) < 0.04, k
    for q, v in enumerate([1 - 3 * 0.0625, 0.0625, 0.0625, 0.0625]):
        assert abs((cpu["rot90"] == q).mean() - v) < 0.03 and abs((gpu["rot90"] == q).mean() - v) < 0.03, q
    assert not p.vflip[~p.block].any() and not p.affine[~p.block].any() and (p.rot90[~p.block] == 0).all()
    # shift: per axis, whole pixels within +-6.25 % of the size (truncated towards 0, so 0 is twice as likely)
    lim = 0.0625 * size
    for d in (cpu, gpu):
        sh = d["shift"]
        assert np.array_equal(sh, np.round(sh)) and np.abs(sh).max() <= lim and np.abs(sh).max() >= lim - 2
        assert abs(sh.mean()) < 1.0 and abs(sh.std() - cpu["shift"].std()) < 0.1 * cpu["shift"].std()
        assert abs((sh == 0).mean() - 2 / (2 * lim)) < 0.03
        assert abs(np.corrcoef(sh[:, 0], sh[:, 1])[0, 1]) < 0.1                 # drawn per axis
    # scale in [0.5, 1.5] and rotation in [-45, 45] degrees, uniform
    for d in (cpu, gpu):
        assert 0.5 <= d["scale"].min() < 0.55 and 1.45 < d["scale"].max() <= 1.5
        assert abs(d["scale"].mean() - 1) < 0.03 and abs(d["scale"].std() - 1 / np.sqrt(12)) < 0.02
        assert -45 <= d["angle"].min() < -42 and 42 < d["angle"].max() <= 45
        assert abs(d["angle"].mean()) < 2.5 and abs(d["angle"].std() - 90 / np.sqrt(12)) < 1.5


OUTSIDE = {"brightness_contrast": True, "brightness_contrast_in_block": False}


def test_brightness_contrast_follows_the_cpu_distribution():
    """Drawn on its own (brightness_contrast_in_block=false), both paths give 0.5·p per image, the same ranges."""
    photo = photometric(True, OUTSIDE)
    comp = A.Compose(photo.transforms, save_applied_params=True, seed=4)
    img = np.zeros((4, 4, 3), np.uint8)
    cpu = [dict(comp(image=img)["applied_transforms"]).get("RandomBrightnessContrast") for _ in range(N_DRAWS)]
    cpu_on = np.array([c is not None for c in cpu])
    cpu_alpha = np.array([c["alpha"] for c in cpu if c is not None])
    cpu_beta = np.array([c["beta"] for c in cpu if c is not None])
    _, p = _gpu_draws(32, N_DRAWS, OUTSIDE)
    for k in ("clinic", "derm"):
        on, alpha, beta = (t.numpy() for t in p.photo[k])
        for o, a, b in ((cpu_on, cpu_alpha, cpu_beta), (on, alpha[on], beta[on])):
            assert abs(o.mean() - 0.25) < 0.03                                    # 0.5 * p, outside the block
            assert 0.8 <= a.min() < 0.82 and 1.18 < a.max() <= 1.2 and abs(a.mean() - 1) < 0.01
            assert -51 <= b.min() < -49 and 49 < b.max() <= 51 and abs(b.mean()) < 2.5
            assert abs(b.std() - 102 / np.sqrt(12)) < 1.5
    # drawn per image: the two images of a case are independent
    assert (p.photo["clinic"][0] != p.photo["derm"][0]).float().mean() > 0.3
    assert not BatchAugment({}, ["derm"]).sample(torch.rand(10, 13), 8).photo   # off unless the recipe says so


def test_brightness_contrast_inside_the_block_on_the_device():
    """Inside the block (the default): only where the block fires, then 0.5 per image: 0.25 overall per image and
    0.125 for both images of a case (0.0625 when drawn on its own)."""
    _, p = _gpu_draws(32, N_DRAWS, {"brightness_contrast": True})
    on = {k: p.photo[k][0].numpy() for k in ("clinic", "derm")}
    block = p.block.numpy()
    assert not (on["clinic"] & ~block).any() and not (on["derm"] & ~block).any()
    assert abs(on["clinic"].mean() - 0.25) < 0.03 and abs((on["clinic"] & on["derm"]).mean() - 0.125) < 0.025


# ---------------------------------------------------------------------------------- the augmentation itself

def _smooth(size: int, offset: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([128 + 100 * np.sin(x / 5.0 + offset) * np.cos(y / 7.0), 60 + 2 * x, 50 + 2 * y],
                    -1).astype(np.uint8)


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def test_the_warp_is_the_cpu_warp_given_the_same_parameters():
    """Flips, affine (reflect-101 borders) and quarter turns as albumentations recorded them, replayed on tensors:
    the same image up to OpenCV's fixed-point interpolation (at most one grey level)."""
    size = 64
    block = geometric(size, True, {"p": 1.0}).transforms[1]
    comp = A.Compose([block], save_applied_params=True, seed=2)
    img = _smooth(size)
    ba = BatchAugment({"p": 1.0}, ["image"])
    c = np.array([size / 2 - 0.5] * 2)
    for _ in range(120):
        out = comp(image=img)
        d = dict(out["applied_transforms"])
        m = d["Affine"]["matrix"] if "Affine" in d else np.eye(3)
        params = BatchAugment.given(
            size, ["VerticalFlip" in d], ["HorizontalFlip" in d], np.round(m[:2, 2] - (c - m[:2, :2] @ c), 6)[None],
            [d["Affine"]["scale"]["x"] if "Affine" in d else 1.0], [d["Affine"]["rotate"] if "Affine" in d else 0.0],
            [d.get("RandomRotate90", {"factor": 0})["factor"]])
        got = ba.apply({"image": _chw(img)}, params)["image"][0].numpy().transpose(1, 2, 0)
        diff = np.abs(got.astype(int) - out["image"].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01


@pytest.mark.parametrize("contrast,brightness", [(0.2, 0.2), (-0.2, -0.2), (0.13, -0.07), (-0.05, 0.19)])
def test_brightness_contrast_on_the_device_is_the_cpu_result_pixel_for_pixel(contrast, brightness):
    """Given the same contrast and brightness, the device's adjustment of a uint8 image is albumentations'
    RandomBrightnessContrast on the CPU path, pixel for pixel (saturated pixels included)."""
    size = 48
    img = _smooth(size)
    img[:4] = 255                                    # saturated rows: the clipping must agree too
    img[-4:] = 0
    cpu = A.RandomBrightnessContrast(brightness_limit=(brightness, brightness), contrast_limit=(contrast, contrast),
                                     p=1.0)(image=img)["image"]
    params = BatchAugment.given(size, [False], [False], [[0.0, 0.0]], [1.0], [0.0], [0],
                                photo={"image": (torch.tensor([True]), torch.tensor([1.0 + contrast]),
                                                 torch.tensor([brightness * 255.0]))})
    ba = BatchAugment({"p": 1.0, "brightness_contrast": True}, ["image"])
    got = ba.apply({"image": _chw(img)}, params)["image"][0].numpy().transpose(1, 2, 0)
    assert got.dtype == np.uint8 and np.array_equal(got, cpu)


def test_scale_is_one_factor_for_both_axes():
    ba, p = _gpu_draws(128, 500)
    lin = p.matrix[:, :2, :2]
    gram = lin.transpose(1, 2) @ lin                       # s^2 * identity for a rotation times one scale
    s2 = p.scale ** 2
    assert torch.allclose(gram, s2[:, None, None] * torch.eye(2), atol=1e-4)
    # on pixels: a square stays a square while its size varies over 1 +- 0.5
    img = np.zeros((128, 128, 3), np.uint8)
    img[48:80, 48:80] = 255                                   # a 32-px square
    only = BatchAugment({"p": 1.0, "flips": False, "rotate90": False, "rotate": 0}, ["image"])
    out = only({"image": _chw(img).expand(150, -1, -1, -1)}, generator=torch.Generator().manual_seed(1))["image"]
    boxes = np.array([_central_box(o) for o in out[:, 0].numpy()])
    widths, heights = boxes[:, 0], boxes[:, 1]
    assert np.abs(widths - heights).max() <= 2, list(zip(widths, heights))
    assert widths.min() <= 32 * 0.65 and widths.max() >= 32 * 1.35 and (widths == 32).sum() >= 30


def _central_box(img: np.ndarray) -> tuple[int, int]:
    """Width and height of the bright blob nearest the centre (reflected copies sit at the borders)."""
    from scipy import ndimage

    labels, k = ndimage.label(img > 127)
    centre = np.array(img.shape) / 2
    best = min(range(1, k + 1), key=lambda i: np.linalg.norm(np.argwhere(labels == i).mean(0) - centre))
    rows, cols = np.nonzero(labels == best)
    return int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


def test_borders_are_reflected_not_filled():
    # a gradient without dark pixels: a constant fill would show as values below its minimum
    y, x = np.mgrid[0:96, 0:96]
    img = np.stack([80 + x, 80 + y, np.full_like(x, 150)], -1).astype(np.uint8)
    ba = BatchAugment({"p": 1.0, "flips": False, "rotate90": False}, ["image"])
    u = ba.draws(200, torch.Generator().manual_seed(3))
    p = ba.sample(u, 96)
    out = ba.apply({"image": _chw(img).expand(200, -1, -1, -1)}, p)["image"]
    shrunk = p.affine & (p.scale < 0.8)
    assert shrunk.sum() >= 15                                       # corners then lie outside the source
    assert int(out[:, :2].min()) >= 79 and (out[:, 2] == 150).all()
    # the corners of a shrunk image are mirrored image content, not one constant colour
    for o in out[shrunk]:
        corner = o[:2, :8, :8].reshape(2, -1)
        assert corner.float().std(1).min() > 0.5
    # ... and mirrored about the edge pixel (BORDER_REFLECT_101), as the CPU path does: on a noise image the
    # two mirrorings differ by a pixel's shift in every border region
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    warped = ba.apply({"image": _chw(noise).expand(200, -1, -1, -1)}, p)["image"]
    for i in torch.nonzero(shrunk)[:5, 0].tolist():
        m = p.matrix[i, :2].numpy().astype(np.float64)
        got = warped[i].numpy().transpose(1, 2, 0).astype(int)
        err101 = np.abs(got - cv2.warpAffine(noise, m, (96, 96), borderMode=cv2.BORDER_REFLECT_101)).mean()
        err = np.abs(got - cv2.warpAffine(noise, m, (96, 96), borderMode=cv2.BORDER_REFLECT)).mean()
        assert err101 < 1.0 and err > 10 * err101, (err101, err)


def test_the_images_of_a_case_share_the_geometry():
    ba = BatchAugment({"p": 1.0}, ["clinic", "derm"])
    img = _smooth(48)
    x = _chw(img).expand(64, -1, -1, -1)
    gen = torch.Generator().manual_seed(7)
    same = ba({"clinic": x, "derm": x.clone()}, generator=gen)
    assert torch.equal(same["clinic"], same["derm"])
    assert (same["clinic"] != x).flatten(1).any(1).float().mean() > 0.5     # the warps did act
    # different images: the derm image is the clinical one with its channels reversed, so the same warp gives
    # the clinical output with its channels reversed
    other = _chw(_smooth(48, offset=3))
    diff = ba({"clinic": other.expand(64, -1, -1, -1), "derm": other.flip(1).expand(64, -1, -1, -1)},
              generator=torch.Generator().manual_seed(8))
    assert torch.equal(diff["derm"], diff["clinic"].flip(1))
    # brightness/contrast stays per image
    bc = BatchAugment({"p": 1.0, "brightness_contrast": True}, ["clinic", "derm"])
    out = bc({"clinic": x, "derm": x.clone()}, generator=torch.Generator().manual_seed(9))
    assert not torch.equal(out["clinic"], out["derm"])


def test_training_draws_depend_on_seed_epoch_and_case_only(pad_root, tmp_path):
    dm = PadUfes20DataModule(root=str(pad_root), image_size=16, batch_size=8, num_workers=0, progress=False,
                             augment_on="device", cache={"dir": str(tmp_path)})
    dm.setup()
    ds = dm.datasets["train"]
    a = ds.__getitems__([(3, 0), (5, 0)])
    b = ds.__getitems__([(9, 0), (5, 0), (3, 0)])
    c = ds.__getitems__([(3, 1)])
    assert torch.equal(a[0]["aug"], b[2]["aug"]) and torch.equal(a[1]["aug"], b[1]["aug"])
    assert not torch.equal(a[0]["aug"], c[0]["aug"]) and not torch.equal(a[0]["aug"], a[1]["aug"])
    assert a[0]["aug"].shape == (dm.batch_augment.n_draws,) and 0 <= float(a[0]["aug"].min())
    assert float(a[0]["aug"].max()) < 1
    assert "aug" not in dm.datasets["val"].__getitems__([0])[0]
    # the keyed draws are uniform and independent across columns, neighbouring cases and epochs
    u = keyed_draws(7, 0, np.arange(20000), 13)
    v = keyed_draws(7, 1, np.arange(20000), 13)
    assert np.abs(u.mean(0) - 0.5).max() < 0.01 and np.abs(u.std(0) - 1 / np.sqrt(12)).max() < 0.005
    assert 0 <= u.min() and u.max() < 1
    assert np.abs(np.corrcoef(u.T) - np.eye(13)).max() < 0.04
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.04 and abs(np.corrcoef(u[:, 0], v[:, 0])[0, 1]) < 0.04


def test_the_module_augments_training_batches_only():
    ba = BatchAugment({"p": 1.0}, ["derm"])
    img = _chw(_smooth(32)).expand(16, -1, -1, -1).contiguous()
    host = SimpleNamespace(batch_augment=ba, normalize="imagenet")
    u = ba.draws(16, torch.Generator().manual_seed(0))
    train_batch = MultiTaskModule.on_after_batch_transfer(host, {"images": {"derm": img}, "aug": u}, 0)
    expected = normalize_batch(ba({"derm": img}, u)["derm"])
    assert "aug" not in train_batch and torch.equal(train_batch["images"]["derm"], expected)
    assert not torch.equal(expected, normalize_batch(img))
    # evaluation batches (no draws) are only normalised
    eval_batch = MultiTaskModule.on_after_batch_transfer(host, {"images": {"derm": img}}, 0)
    assert torch.equal(eval_batch["images"]["derm"], normalize_batch(img))
    with pytest.raises(ConfigError, match="batch_augment"):
        MultiTaskModule.on_after_batch_transfer(SimpleNamespace(batch_augment=None, normalize="imagenet"),
                                                {"images": {"derm": img}, "aug": u}, 0)


# ------------------------------------------------------------------------------------------- integration

def test_pipeline_setting_is_checked(tmp_path):
    cfg = compose_cfg(["data.augment_on=tpu", *TINY], tmp_path)
    with pytest.raises(ConfigError, match="data.augment_on"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match="data.augment_on='tpu'"):
        PadUfes20DataModule(root=str(tmp_path), augment_on="tpu")


def test_checkpoints_gain_no_keys(derm7pt_root, tmp_path):
    from skinlesion.train import build_module, prepare_data

    keys = {}
    for pipeline in ("cpu", "device"):
        cfg = compose_cfg([*TINY, "data=derm7pt", f"data.root={derm7pt_root}", "model=two_image",
                           "backbone.pretrained=false", f"data.augment_on={pipeline}"], tmp_path / pipeline)
        dm = prepare_data(cfg)
        module = build_module(cfg, dm, pretrained=False)
        assert (module.batch_augment is not None) == (pipeline == "device")
        keys[pipeline] = set(module.state_dict())
    assert keys["cpu"] == keys["device"]


def test_training_with_augmentation_on_the_device_writes_predictions(derm7pt_root, tmp_path):
    run = train(["data=derm7pt", f"data.root={derm7pt_root}", "model=two_image", "data.augment_on=device",
                 "data.augment.brightness_contrast=true", "trainer.limit_train_batches=2"], tmp_path / "run")
    assert run_record(run)["status"] == "completed"
    store = ImageStore(tmp_path / "run" / "cache", 32)
    assert store.data.is_file() and len(store._read_index()) == 2 * 200 - 2   # both images of every case, once
    for part in ("val", "test"):
        pred = pd.read_parquet(run / "predictions" / f"{part}.parquet")
        assert len(pred) > 0 and pred.filter(like="prob/").notna().all().all()
