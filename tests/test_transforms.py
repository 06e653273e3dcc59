"""Training augmentation: one isotropic scale, reflected borders, one geometry for both images of a pair."""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from skinlesion.data import Derm7ptDataModule
from skinlesion.data.transforms import DEFAULT_AUGMENT, geometric, photometric, resolve_augment
from skinlesion.errors import ConfigError

# only the shift-scale-rotate, without rotation, always applied: the shape's bounding box then shows the scale
SCALE_ONLY = {"p": 1.0, "flips": False, "rotate90": False, "rotate": 0}


def _draws(transform, image: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    transform.set_random_seed(seed)
    return [transform(image=image)["image"] for _ in range(n)]


def _central_box(img: np.ndarray) -> tuple[int, int]:
    """Width and height of the bright blob nearest the centre (reflected copies sit at the borders)."""
    labels, k = ndimage.label(img[..., 0] > 127)
    centre = np.array(img.shape[:2]) / 2
    best = min(range(1, k + 1), key=lambda i: np.linalg.norm(np.argwhere(labels == i).mean(0) - centre))
    rows, cols = np.nonzero(labels == best)
    return int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


def test_scale_is_one_factor_for_both_axes():
    img = np.zeros((128, 128, 3), np.uint8)
    img[48:80, 48:80] = 255                                   # a 32-px square
    boxes = [_central_box(out) for out in _draws(geometric(128, True, SCALE_ONLY), img, 150)]
    widths = np.array([w for w, _ in boxes])
    heights = np.array([h for _, h in boxes])
    # the square keeps its aspect ratio within interpolation rounding ...
    assert np.abs(widths - heights).max() <= 2, list(zip(widths, heights))
    # ... while the scale really varies over the documented range 1 +- 0.5 (and is skipped half the time)
    assert widths.min() <= 32 * 0.65 and widths.max() >= 32 * 1.35 and (widths == 32).sum() >= 40


def test_borders_are_reflected_not_filled():
    # a gradient without dark pixels: a constant (black) fill would show as values below its minimum
    y, x = np.mgrid[0:96, 0:96]
    img = np.stack([80 + x, 80 + y, np.full_like(x, 150)], -1).astype(np.uint8)
    outs = _draws(geometric(96, True, {"p": 1.0, "flips": False, "rotate90": False}), img, 100)
    changed = [o for o in outs if not np.array_equal(o, img)]
    assert len(changed) >= 30                                 # the transform did act
    assert min(int(o[..., :2].min()) for o in outs) >= 79     # no fill value anywhere
    assert all((o[..., 2] == 150).all() for o in outs)


def test_shift_scale_rotate_matches_an_opencv_warp_with_reflect_101_borders():
    """Each draw's output is the OpenCV warp of its own matrix with mirrored borders (edge pixel not repeated),
    and its parameters lie in the documented ranges: one scale in [0.5, 1.5], rotation within +-45 degrees."""
    block = geometric(64, True, {"p": 1.0}).transforms[1]
    affine = next(t for t in block.transforms if isinstance(t, A.Affine))
    affine.p = 1.0                                            # record the parameters of every draw
    recorded = A.Compose([affine], save_applied_params=True, seed=3)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    scales, angles = [], []
    for _ in range(40):
        out = recorded(image=img)
        params = out["applied_transforms"][0][1]
        scales.append(params["scale"]["x"])
        angles.append(params["rotate"])
        assert params["scale"]["x"] == params["scale"]["y"]
        m = params["matrix"][:2]
        reflect_101 = cv2.warpAffine(img, m, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        np.testing.assert_array_equal(out["image"], reflect_101)
        if params["scale"]["x"] < 0.9:
            plain_reflect = cv2.warpAffine(img, m, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            assert not np.array_equal(out["image"], plain_reflect)
    assert 0.5 <= min(scales) < 0.7 and 1.3 < max(scales) <= 1.5
    assert -45 <= min(angles) < -30 and 30 < max(angles) <= 45


def _coordinates(size: int, swap: bool) -> np.ndarray:
    """Each pixel holds its own (x, y) in two channels: where a pixel lands shows the transform exactly."""
    y, x = np.mgrid[0:size, 0:size] * (256 // size)
    a, b = (y, x) if swap else (x, y)
    return np.stack([a, b, np.full_like(x, 7 if swap else 200)], -1).astype(np.uint8)


@pytest.fixture
def coordinate_pair(derm7pt_root, tmp_path):
    size = 32
    Image.fromarray(_coordinates(size, False)).save(derm := tmp_path / "derm.png")
    Image.fromarray(_coordinates(size, True)).save(clinic := tmp_path / "clinic.png")
    return derm7pt_root, derm, clinic, size


def _pair_dataset(coordinate_pair, **augment):
    root, derm, clinic, size = coordinate_pair
    dm = Derm7ptDataModule(root=str(root), image_size=size, batch_size=4, num_workers=0, progress=False,
                           augment={"p": 1.0, **augment})
    dm.setup()
    n = len(dm.table)
    dm.table.images["derm"], dm.table.images["clinic"] = [derm] * n, [clinic] * n
    return dm.datasets["train"]


def test_both_images_of_a_pair_get_the_same_geometry(coordinate_pair):
    ds = _pair_dataset(coordinate_pair, brightness_contrast=False)
    start = _coordinates(coordinate_pair[3], False).transpose(2, 0, 1)
    moved = 0
    for _ in range(60):
        item = ds[0]["images"]
        d, c = item["derm"].numpy(), item["clinic"].numpy()
        # the clinical image's swapped coordinate channels went exactly where the dermoscopic ones did
        np.testing.assert_array_equal(c[0], d[1])
        np.testing.assert_array_equal(c[1], d[0])
        assert (d[2] == 200).all() and (c[2] == 7).all()
        moved += not np.array_equal(d, start)
    assert moved >= 30                                        # geometry was applied, not skipped


def test_photometric_jitter_is_drawn_per_image(coordinate_pair):
    ds = _pair_dataset(coordinate_pair, brightness_contrast=True, flips=False, affine=False, rotate90=False)
    blues = [(int(it["derm"][2].float().mean()), int(it["clinic"][2].float().mean()))
             for it in (ds[0]["images"] for _ in range(60))]
    derm_changed = {d != 200 for d, _ in blues}
    clinic_changed = {c != 7 for _, c in blues}
    assert derm_changed == clinic_changed == {True, False}
    # independent draws: some cases jitter one image and leave the other as it was
    assert any((d != 200) != (c != 7) for d, c in blues)


@pytest.mark.parametrize("in_block,both", [(True, 0.125), (False, 0.0625)])
def test_brightness_contrast_inside_or_outside_the_block(coordinate_pair, in_block, both):
    """Each image is jittered with probability 0.25 either way (p = 0.5, then 0.5); inside the block the two images
    of a case are jittered together more often (0.5 · 0.5 · 0.5) than when each is drawn on its own (0.25²)."""
    ds = _pair_dataset(coordinate_pair, p=0.5, flips=False, affine=False, rotate90=False, brightness_contrast=True,
                       brightness_contrast_in_block=in_block)
    changed = np.array([((it["derm"][2] != 200).any().item(), (it["clinic"][2] != 7).any().item())
                        for it in (ds[0]["images"] for _ in range(1200))])
    assert np.abs(changed.mean(0) - 0.25).max() < 0.04
    assert abs(changed.all(1).mean() - both) < 0.03


def test_evaluation_views_are_not_augmented():
    img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    t = geometric(40, False, DEFAULT_AUGMENT)
    assert all(np.array_equal(o, img) for o in _draws(t, img, 5))
    assert photometric(False, {**DEFAULT_AUGMENT, "brightness_contrast": True}) is None


def test_augment_settings_are_checked():
    assert resolve_augment(None) == DEFAULT_AUGMENT
    assert resolve_augment({"p": 0})["p"] == 0 and resolve_augment({"p": 0})["scale"] == 0.5
    with pytest.raises(ConfigError, match="rotation"):
        resolve_augment({"rotation": 10})
