"""The data audit finds problems planted in a generated dataset, and no others; training refuses a duplicated case
id and warns once about lesions in several partitions."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinlesion.data import Derm7ptDataModule, Isic2019DataModule, PadUfes20DataModule
from skinlesion.data import datamodule as datamodule_module
from skinlesion.data.audit import THRESHOLD, audit_table, main, near_pairs
from skinlesion.data.synthetic import generate
from skinlesion.errors import DataError
from skinlesion.testing import python

FAST = {"image_size": 32, "batch_size": 16, "num_workers": 0, "progress": False}


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def _write_rows(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _read(root: Path, **settings):
    return PadUfes20DataModule(root=str(root), **FAST, **settings).read_partitions(check_ids=False)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """Generated PAD-UFES-20 (60 distinct images) with an identical image pair (train/test), a near-duplicate pair
    (train/val) and one more lesion spanning train/test. None of these changes the stratified split (labels only)."""
    root = generate("pad_ufes", tmp_path_factory.mktemp("audit") / "pad", n=60, size=32, seed=0, progress=False)
    table, part, _ = _read(root)
    before = audit_table(table, part, images=False)
    paths = table.images["clinic"]
    train, val, test = (np.flatnonzero(part == p) for p in ("train", "val", "test"))
    same = (int(train[0]), int(test[0]))
    near = (int(train[1]), int(val[0]))
    paths[same[1]].write_bytes(paths[same[0]].read_bytes())
    with Image.open(paths[near[0]]) as im:   # 90% size, re-encoded as JPEG (under the case's .png name)
        buf = io.BytesIO()
        im.convert("RGB").resize((round(im.width * 0.9), round(im.height * 0.9))).save(buf, "JPEG", quality=70)
    paths[near[1]].write_bytes(buf.getvalue())
    # a lesion of one train image gets a second image: a test row of another single-image lesion joins it
    sizes = {k: int((table.groups == k).sum()) for k in table.groups}
    lone = [i for i in range(len(table)) if sizes[table.groups[i]] == 1 and i not in (*same, *near)]
    r1 = next(i for i in lone if part[i] == "train")
    r2 = next(i for i in lone if part[i] == "test")
    rows = _rows(root / "metadata.csv")
    rows[r2 + 1][:2] = rows[r1 + 1][:2]        # patient_id, lesion_id (the release's first two columns)
    _write_rows(root / "metadata.csv", rows)
    table2, part2, _ = _read(root)
    assert (part2 == part).all()               # the planted problems left the split as it was
    return {"root": root, "table": table2, "part": part2, "before": before, "same": same, "near": near,
            "lesion": str(table2.groups[r2]), "patient": rows[r1 + 1][0], "spanning": (r1, r2)}


@pytest.fixture(scope="module")
def duplicated(planted, tmp_path_factory) -> dict:
    """A copy with a repeated row, a repeated case id (other fields differ), an absent and an unreadable image."""
    root = tmp_path_factory.mktemp("audit_dup") / "pad"
    shutil.copytree(planted["root"], root)
    rows = _rows(root / "metadata.csv")
    header, body = rows[0], rows[1:]
    col = header.index("img_id")
    a, b, c = 2, 3, 4                         # rows 2, 3, 4: CSV lines 4, 5, 6
    extra_id = list(body[b])
    extra_id[col] = body[c][col]
    _write_rows(root / "metadata.csv", [header, *body, list(body[a]), extra_id])   # lines 62 and 63
    table, _, _ = _read(root)
    absent, broken = table.images["clinic"][10], table.images["clinic"][11]
    absent.unlink()
    broken.write_bytes(b"not an image")
    return {"root": root, "ids": (body[a][col], body[c][col]), "lines": (a + 2, c + 2), "n": len(body),
            "broken": broken}


def test_audit_finds_the_planted_images_and_spanning_lesion_and_nothing_else(planted):
    table, part = planted["table"], planted["part"]
    result = audit_table(table, part, progress=False)
    counts, d = result.summary["counts"], result.details
    img = result.summary["images"]
    assert (img["files"], img["hashed"], img["absent_files"], img["unreadable"]) == (60, 60, 0, 0)
    assert img["threshold"] == THRESHOLD and "pHash" in img["perceptual_hash"]

    ids = table.case_ids
    same, near = planted["same"], planted["near"]
    assert len(d["identical_images"]) == 1 and counts["identical_images"]["by_partitions"] == {"train/test": 1}
    pair = d["identical_images"].iloc[0]
    assert {pair.case_a, pair.case_b} == {ids[same[0]], ids[same[1]]} and not pair.same_file
    assert {pair.csv_line_a, pair.csv_line_b} == {same[0] + 2, same[1] + 2}
    assert len(d["near_duplicate_images"]) == 1 and counts["near_duplicate_images"]["by_partitions"] == {
        "train/val": 1}
    pair = d["near_duplicate_images"].iloc[0]
    assert {pair.case_a, pair.case_b} == {ids[near[0]], ids[near[1]]} and 0 < pair.distance <= THRESHOLD

    assert counts["duplicated_rows"]["count"] == 0 and counts["duplicated_case_ids"]["count"] == 0
    # exactly one lesion more than the generator's own spans: the planted one, train/test, at its two lines
    lesions = d["spanning_lesions"].set_index("key")
    assert len(lesions) == result.summary["counts"]["spanning_lesions"]["count"] == \
        planted["before"].summary["counts"]["spanning_lesions"]["count"] + 1
    r1, r2 = planted["spanning"]
    assert lesions.loc[planted["lesion"], "partitions"] == "train/test"
    assert lesions.loc[planted["lesion"], "csv_lines"] == f"{r1 + 2};{r2 + 2}"
    assert planted["patient"] in set(d["spanning_patients"]["key"])
    assert counts["spanning_lesions"]["of"] == planted["before"].summary["counts"]["spanning_lesions"]["of"] - 1


def test_lesion_grouped_split_has_no_spanning_lesion(planted):
    table, part, _ = _read(planted["root"], split="lesion_grouped")
    result = audit_table(table, part, images=False)
    assert result.summary["counts"]["spanning_lesions"]["count"] == 0 and result.summary["images"] is None


def test_audit_lists_duplicated_rows_and_ids_with_their_lines(duplicated):
    table, part, _ = _read(duplicated["root"])
    result = audit_table(table, part, progress=False)
    d, n = result.details, duplicated["n"]
    (id_a, id_c), (line_a, line_c) = duplicated["ids"], duplicated["lines"]
    rows = d["duplicated_rows"]
    assert rows[["case_id", "csv_line", "same_as_line"]].values.tolist() == [[id_a, n + 2, line_a]]
    dup_ids = d["duplicated_case_ids"]
    assert dup_ids[["case_id", "csv_line", "first_line", "identical_row"]].values.tolist() == [
        [id_a, n + 2, line_a, True], [id_c, n + 3, line_c, False]]
    # the two extra rows name the files of their first listing: the same file, not a copy
    same_file = d["identical_images"][d["identical_images"]["same_file"]]
    assert sorted(same_file[["csv_line_a", "csv_line_b"]].values.tolist()) == [[line_a, n + 2], [line_c, n + 3]]
    img = result.summary["images"]
    assert (img["files"], img["absent_files"], img["unreadable"], img["hashed"]) == (60, 1, 1, 58)
    assert d["unreadable_images"]["path"].tolist() == [str(duplicated["broken"])]


def test_training_refuses_a_duplicated_case_id_naming_the_file_and_both_lines(duplicated):
    dm = PadUfes20DataModule(root=str(duplicated["root"]), **FAST)
    with pytest.raises(DataError) as err:
        dm.setup()
    msg = str(err.value)
    assert "\n" not in msg and str(duplicated["root"] / "metadata.csv") in msg
    assert f"lines {duplicated['lines'][0]} and {duplicated['n'] + 2}" in msg
    assert repr(duplicated["ids"][0]) in msg and "2 ids are repeated" in msg


def test_training_warns_once_with_counts_about_lesions_spanning_partitions(planted, monkeypatch, caplog):
    monkeypatch.setattr(datamodule_module, "_SPAN_WARNED", set())
    spans = audit_table(planted["table"], planted["part"], images=False).summary["counts"]
    with caplog.at_level("WARNING", logger="skinlesion.data.datamodule"):
        for split in ("stratified", "stratified", "lesion_grouped"):
            PadUfes20DataModule(root=str(planted["root"]), split=split, **FAST).setup()
    warned = [r.getMessage() for r in caplog.records if "more than one partition" in r.getMessage()]
    assert len(warned) == 1
    msg = warned[0]
    lesions, patients = spans["spanning_lesions"], spans["spanning_patients"]
    assert msg.startswith(f"PAD-UFES-20: {lesions['count']} lesions (of {lesions['of']}) and "
                          f"{patients['count']} patients (of {patients['of']})")
    assert "data.split=stratified" in msg and "data.split=lesion_grouped keeps each lesion" in msg
    assert all(f"{k}: {v}" in msg for k, v in lesions["by_partitions"].items())


def test_isic_lesions_and_derm7pt_without_ids(isic_root, derm7pt_root):
    for split in ("stratified", "lesion_grouped"):
        table, part, _ = Isic2019DataModule(root=str(isic_root), split=split, **FAST).read_partitions()
        counts = audit_table(table, part, images=False).summary["counts"]
        assert "spanning_patients" not in counts
        assert (counts["spanning_lesions"]["count"] > 0) == (split == "stratified")
    table, part, _ = Derm7ptDataModule(root=str(derm7pt_root), **FAST).read_partitions()
    result = audit_table(table, part, images=False)
    assert not any(k.startswith("spanning") for k in result.summary["counts"])
    assert any("lists no lesion or patient ids" in note for note in result.summary["notes"])


def test_an_image_listed_twice_in_the_isic_ground_truth_is_noted_or_refused_when_its_rows_disagree(isic_root,
                                                                                                    tmp_path):
    from skinlesion.data.isic2019 import GROUND_TRUTH

    root = tmp_path / "isic2019"
    shutil.copytree(isic_root, root, ignore=shutil.ignore_patterns("*.jpg"))
    gt = root / GROUND_TRUTH
    rows = _rows(gt)
    repeat = list(rows[5])                     # the image on line 6, listed again at the end with its diagnosis
    _write_rows(gt, [*rows, repeat])
    table, part, _ = Isic2019DataModule(root=str(root), **FAST).read_partitions()
    assert table.targets[:, 0].tolist() == Isic2019DataModule(root=str(isic_root), **FAST).read_partitions()[
        0].targets[:, 0].tolist()              # same cases, same labels
    said = [n for n in audit_table(table, part, images=False).summary["notes"] if GROUND_TRUTH in n]
    assert len(said) == 1 and f"{repeat[0]!r}, lines 6 and {len(rows) + 1}" in said[0]

    other = [repeat[0], *repeat[2:-1], repeat[1], repeat[-1]]   # the class columns rotated: another diagnosis
    assert other[1:-1] != repeat[1:-1] and other[-1] == "0.0"
    _write_rows(gt, [*rows, other])
    with pytest.raises(DataError) as err:
        Isic2019DataModule(root=str(root), **FAST).setup()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{gt}, lines 6 and {len(rows) + 1}: image {repeat[0]!r}")
    assert "different diagnoses" in msg


def test_near_pairs_compares_every_pair_across_blocks():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=600, dtype=np.int64).astype(np.uint64)
    hashes[550] = hashes[3] ^ np.uint64(0b1011)    # 3 bits apart, in different blocks
    i, j, d = near_pairs(hashes, 5)
    assert list(zip(i.tolist(), j.tolist(), d.tolist())) == [(3, 550, 3)]


def test_bad_command_lines_say_what_is_wrong(tmp_path, capsys):
    assert main(["data=pad_ufes", f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert "error: data.root=" in capsys.readouterr().err
    assert main(["data=pad_ufes", "--threshold", "65"]) == 2
    assert "--threshold 65" in capsys.readouterr().err
    assert main(["data=no_such_dataset"]) == 2
    assert "error:" in capsys.readouterr().err


def test_command_line_end_to_end_writes_csvs_and_summary(duplicated, tmp_path):
    out = tmp_path / "audit"
    proc = python("-m", "skinlesion.data.audit", "data=pad_ufes", f"data.root={duplicated['root']}", "--out", out,
                  timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "duplicated case ids: 2" in proc.stdout and "58 of 60 file(s) hashed (1 absent, 1 unreadable" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["duplicated_rows"]["count"] == 1 and summary["images"]["threshold"] == THRESHOLD
    assert {p.name for p in out.glob("*.csv")} == {
        "duplicated_rows.csv", "duplicated_case_ids.csv", "identical_images.csv", "near_duplicate_images.csv",
        "unreadable_images.csv", "spanning_lesions.csv", "spanning_patients.csv"}
