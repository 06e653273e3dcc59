"""Dataset readers on the real official files (CSV parsing, labels, images) and on generated layouts."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from skinlesion.data import derm7pt, isic2019, pad_ufes
from skinlesion.data.images import load_rgb
from skinlesion.data.synthetic import generate
from skinlesion.errors import DataError
from skinlesion.testing import shared


def counts(table, task=0):
    t = table.tasks[task]
    return dict(zip(t.classes, np.bincount(table.targets[:, task], minlength=t.num_classes).tolist()))


def test_pad_ufes_real_csv():
    table = pad_ufes.read(shared("pad_ufes_20"))
    assert len(table) == 2298
    assert counts(table) == {"ACK": 730, "BCC": 845, "MEL": 52, "NEV": 244, "SCC": 192, "SEK": 235}
    assert len(set(table.groups)) == 1891          # lesion key is (patient_id, lesion_id)
    assert table.case_ids[1] == "PAT_46_881_939.png"
    # 24 real images sit in the three part folders; the rest are absent from the test copy
    present = [p for p in table.images["clinic"] if p.is_file()]
    assert len(present) == 24
    assert {p.parent.name for p in present} == {"imgs_part_1", "imgs_part_2", "imgs_part_3"}


def test_pad_ufes_real_images_are_rgb():
    table = pad_ufes.read(shared("pad_ufes_20"))
    from PIL import Image
    modes = set()
    for p in (p for p in table.images["clinic"] if p.is_file()):
        with Image.open(p) as im:
            modes.add(im.mode)
        img = load_rgb(p)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert "RGBA" in modes   # the release mixes RGBA and RGB PNGs


def test_isic_real_csvs():
    table = isic2019.read(shared("isic_2019"), image_dir="images")
    assert len(table) == 25331
    assert counts(table) == {"AK": 867, "BCC": 3323, "BKL": 2624, "DF": 239, "MEL": 4522, "NV": 12875,
                             "SCC": 628, "VASC": 253}
    assert sum(n.endswith("_downsampled") for n in table.case_ids) == 2074
    assert "UNK" not in table.tasks[0].classes
    present = [p for p in table.images["derm"] if p.is_file()]
    assert len(present) == 16      # the other 16 sample files are named without the _downsampled suffix


def test_isic_large_jpeg_decodes():
    sizes = [load_rgb(p).shape for p in sorted(shared("isic_2019", "images").glob("*.jpg"))]
    assert (2304, 3072, 3) in sizes or (3072, 2304, 3) in sizes
    assert all(s[2] == 3 for s in sizes)


def test_derm7pt_real_csv_and_split():
    root = shared("derm7pt")
    table = derm7pt.read(root)
    assert len(table) == 1011
    part = derm7pt.partition(table, root)
    assert [(part == p).sum() for p in ("train", "val", "test")] == [413, 203, 395]
    # whole-set class counts of every task (thesis Table 5.1, with VS-ABS 823 as in the data)
    expected = [[42, 575, 252, 97, 45], [400, 381, 230], [653, 107, 251], [588, 118, 305], [758, 253],
                [229, 334, 448], [816, 195], [823, 117, 71]]
    assert [list(counts(table, j).values()) for j in range(8)] == expected
    diag = {p: np.bincount(table.targets[part == p, 0], minlength=5).tolist() for p in ("train", "val", "test")}
    assert diag == {"train": [19, 256, 90, 32, 16], "val": [7, 100, 61, 25, 10], "test": [16, 219, 101, 40, 19]}
    assert any("clinic == derm" in n and "565" in n for n in table.notes)


def test_readers_on_real_csvs_with_generated_images(tmp_path):
    d7 = generate("derm7pt", tmp_path / "d7", size=16, from_csv=shared("derm7pt", "meta", "meta.csv"),
                  progress=False)
    table = derm7pt.read(d7)
    assert all(p.is_file() for k in ("derm", "clinic") for p in table.images[k])
    img = load_rgb(table.images["derm"][0])
    assert img.shape[2] == 3 and 15 <= img.shape[0] <= 16 and img.shape[1] >= img.shape[0]   # landscape, as released
    pad = generate("pad_ufes", tmp_path / "pad", size=16, from_csv=shared("pad_ufes_20", "metadata.csv"),
                   progress=False)
    table = pad_ufes.read(pad)
    assert len(table) == 2298 and all(p.is_file() for p in table.images["clinic"])


def test_unknown_label_is_named(tmp_path):
    root = tmp_path / "d7"
    (root / "meta").mkdir(parents=True)
    src = shared("derm7pt", "meta", "meta.csv").read_text().splitlines()
    line = next(i for i, row in enumerate(src) if ",clark nevus," in row)
    src[line] = src[line].replace("clark nevus", "clark nevvus", 1)
    (root / "meta" / "meta.csv").write_text("\n".join(src) + "\n")
    with pytest.raises(DataError, match=rf"meta\.csv, line {line + 1}, column 'diagnosis'.*clark nevvus"):
        derm7pt.read(root)


def test_missing_column_is_named(tmp_path):
    root = tmp_path / "pad"
    root.mkdir()
    import pandas as pd
    pd.read_csv(shared("pad_ufes_20", "metadata.csv")).drop(columns=["img_id"]).to_csv(root / "metadata.csv",
                                                                                     index=False)
    with pytest.raises(DataError, match=r"metadata\.csv: missing column\(s\) \['img_id'\]"):
        pad_ufes.read(root)


def test_isic_unk_and_multilabel_rows_rejected(tmp_path):
    src = shared("isic_2019")
    for name in (isic2019.GROUND_TRUTH, isic2019.METADATA):
        shutil.copy(src / name, tmp_path / name)
    gt = (tmp_path / isic2019.GROUND_TRUTH).read_text().splitlines()
    gt[3] = gt[3].rsplit(",", 1)[0] + ",1.0"      # a positive UNK
    (tmp_path / isic2019.GROUND_TRUTH).write_text("\n".join(gt) + "\n")
    with pytest.raises(DataError, match=r"line 4, column 'UNK'"):
        isic2019.read(tmp_path)


# --- labelled=False: new cases for prediction, read by the same readers -----------------------------------------
@pytest.mark.parametrize("module,root,kw", [(pad_ufes, "pad_ufes_20", {}), (isic2019, "isic_2019", {"image_dir": "images"}),
                                            (derm7pt, "derm7pt", {})])
def test_unlabelled_read_gives_the_training_cases_and_paths(module, root, kw):
    """Prediction reads new cases with the training reader: same case ids and image paths in the same order."""
    from skinlesion.data import unlabelled

    labelled, new = module.read(shared(root), **kw), module.read(shared(root), labelled=False, **kw)
    assert list(new.case_ids) == list(labelled.case_ids)
    assert (new.targets == unlabelled.UNKNOWN).all() and new.targets.shape == labelled.targets.shape
    for key, paths in labelled.images.items():
        assert [str(p) for p in new.images[key]] == [str(p) for p in paths]
    missing = unlabelled.missing_images(new.frame, new.images, module.IMAGE_COLUMNS, module.IMAGE_KEYS)
    present = sum(not m for m in missing)
    assert present == sum(all(labelled.images[k][i].is_file() for k in module.IMAGE_KEYS) for i in range(len(new)))
    assert present == {"pad_ufes_20": 24, "isic_2019": 16, "derm7pt": 0}[root]


def test_unlabelled_read_needs_no_label_columns_and_says_what_each_case_lacks(tmp_path):
    """A metadata file of new cases: no diagnosis or lesion columns, an empty image cell, an image not there."""
    from skinlesion.data import unlabelled

    root = tmp_path / "d7"
    generate("derm7pt", root, n=12, size=32, seed=0)
    df = pd.read_csv(root / "meta" / "meta.csv").drop(columns=["diagnosis", "pigment_network", "case_num"])
    df.loc[1, "clinic"] = None
    df.loc[2, "derm"] = "nowhere/x.jpg"
    df.to_csv(root / "meta" / "meta.csv", index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['case_num', 'diagnosis'"):
        derm7pt.read(root)
    table = derm7pt.read(root, labelled=False)
    assert list(table.case_ids[:3]) == ["line 2", "line 3", "line 4"]   # no case_num: the CSV line
    missing = unlabelled.missing_images(table.frame, table.images, derm7pt.IMAGE_COLUMNS, ("derm", "clinic"))
    assert missing[1] == {"clinic": "empty 'clinic'"} and table.images["clinic"][1] is None
    assert list(missing[2]) == ["derm"] and "'nowhere/x.jpg': no such image file" in missing[2]["derm"]
    assert not any(missing[i] for i in range(len(table)) if i not in (1, 2))
    table.images["derm"][3] = None   # a named image that a lookup elsewhere did not find
    named = unlabelled.missing_images(table.frame, table.images, derm7pt.IMAGE_COLUMNS, ("derm",), "among x/")
    assert named[3] == {"derm": f"derm {df.loc[3, 'derm']!r}: no such image file among x/"}
