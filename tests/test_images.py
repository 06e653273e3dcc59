"""Image decoding, normalisation, test-time views and the pre-resized cache."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from skinlesion.data.images import ImageCache, load_rgb
from skinlesion.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, TTA_VIEWS, geometric, normalize_batch, to_tensor,
                                       tta_views)


def test_rgba_and_grey_become_rgb(tmp_path):
    Image.new("RGBA", (5, 4), (10, 20, 30, 128)).save(tmp_path / "a.png")
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    a, g = load_rgb(tmp_path / "a.png"), load_rgb(tmp_path / "g.png")
    assert a.shape == g.shape == (4, 5, 3) and (a[0, 0] == [10, 20, 30]).all() and (g == 77).all()


def test_normalisation_matches_imagenet_formula():
    img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    ref = (img / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    x = to_tensor(img)
    assert x.dtype == torch.uint8 and x.shape == (3, 9, 7)
    assert np.allclose(normalize_batch(x[None]).numpy()[0], ref.transpose(2, 0, 1), atol=1e-6)
    assert np.allclose(normalize_batch(x[None], "raw_bgr").numpy()[0], img[..., ::-1].transpose(2, 0, 1) / 255.0)


def test_six_tta_views():
    x = torch.arange(4.0).view(1, 1, 2, 2)          # [[0, 1], [2, 3]]
    assert tta_views("six") == ("identity", "vflip", "hflip", "vhflip", "rot90_cw", "rot90_ccw")
    out = {v: TTA_VIEWS[v](x)[0, 0].tolist() for v in tta_views("six")}
    assert out["vflip"] == [[2, 3], [0, 1]] and out["hflip"] == [[1, 0], [3, 2]]
    assert out["vhflip"] == [[3, 2], [1, 0]]
    assert out["rot90_cw"] == [[2, 0], [3, 1]] and out["rot90_ccw"] == [[1, 3], [0, 2]]
    assert len({str(v) for v in out.values()}) == 6


def test_pair_gets_identical_geometry():
    img = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    aug = geometric(24, train=True, aug={"p": 1.0}, extra_keys=["clinic"])
    aug.set_random_seed(3)
    for _ in range(5):
        out = aug(image=img, clinic=img.copy())
        assert out["image"].shape == (24, 24, 3) and (out["image"] == out["clinic"]).all()


def test_cache_builds_once_and_invalidates_on_change(tmp_path):
    src = tmp_path / "x.png"
    Image.new("RGB", (300, 200), (200, 10, 10)).save(src)
    cache = ImageCache(tmp_path / "cache", size=64)
    first = cache.build([src, src], workers=1, progress=False)[src]
    assert load_rgb(first).shape == (64, 64, 3)
    mtime = first.stat().st_mtime_ns
    assert cache.build([src], workers=1, progress=False)[src] == first and first.stat().st_mtime_ns == mtime
    Image.new("RGB", (300, 200), (10, 200, 10)).save(src)
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    second = cache.build([src], workers=1, progress=False)[src]
    assert second != first and load_rgb(second)[0, 0, 1] > 150
