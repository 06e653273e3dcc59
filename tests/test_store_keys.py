"""The decoded-image store across moves and time: keys that survive staging a dataset to another folder, a
``compact`` that reclaims the rows of removed or changed images, and two real builders at once."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from skinlesion.data.store import ImageStore, main
from skinlesion.testing import started


def _images(root: Path) -> list[Path]:
    return sorted((root / "images").rglob("*.png"))[:12]


def test_a_dataset_staged_to_another_folder_is_not_stored_again(pad_root, tmp_path):
    store = ImageStore(tmp_path / "cache", 16, root=pad_root)
    rows = store.build(_images(pad_root), progress=False)
    size = store.data.stat().st_size
    staged = Path(shutil.copytree(pad_root, tmp_path / "scratch" / pad_root.name))   # copy2 keeps mtimes
    again = ImageStore(tmp_path / "cache", 16, root=staged).build(_images(staged), progress=False)
    assert np.array_equal(rows, again) and store.data.stat().st_size == size           # nothing decoded again


def test_compact_reclaims_the_rows_of_removed_and_changed_images(pad_root, tmp_path, capsys):
    root = Path(shutil.copytree(pad_root, tmp_path / pad_root.name))
    files = _images(root)
    store = ImageStore(tmp_path / "cache", 16, root=root)
    store.build(files, progress=False)
    before = store.open().copy()
    os.utime(files[0], ns=(time.time_ns(), time.time_ns() + 10**9))   # changed: stored again under a new key
    store.build(files, progress=False)
    files[1].unlink()                                                  # removed
    assert len(store.open()) == len(files) + 1
    assert main(["compact", str(tmp_path / "cache"), "--size", "16", "--root", str(root)]) == 0
    assert f"{len(files) - 1} row(s) kept" in capsys.readouterr().out
    rows = store.build([files[0], *files[2:]], progress=False)       # nothing to decode: all still stored
    assert len(store.open()) == len(files) - 1
    arr = store.open()
    for i, f in enumerate(files[2:]):                                 # the unchanged images, byte for byte
        assert np.array_equal(arr[rows[i + 1]], before[i + 2])


BUILD = """
import logging, sys
from pathlib import Path
from skinlesion.data.store import ImageStore
logging.basicConfig(level=logging.INFO, format="%(message)s")
root = Path(sys.argv[2])
ImageStore(sys.argv[1], 32, root=root).build(sorted((root / "images").rglob("*.png")), workers=1, progress=False)
print("built", flush=True)
"""


def _until_waiting(proc) -> str:
    """What a builder printed up to and including its line that it waits for the store (a blocking read of its
    output; the test's timeout bounds it)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("waiting for the image store lock"):
            break
    return "".join(lines)


def test_two_builders_at_once_store_each_image_once_and_say_whom_they_wait_for(pad_root, tmp_path):
    """Two real builders started while a third holder has the store: both say in one line whom they wait for, then
    build in turn; every image is stored once."""
    from skinlesion.locks import FileLock

    store_dir = ImageStore(tmp_path / "cache", 32).dir
    store_dir.mkdir(parents=True)
    holder = FileLock(store_dir / "store.lock").acquire(blocking=False)
    cmd = [sys.executable, "-c", BUILD, str(tmp_path / "cache"), str(pad_root)]
    with started(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as a, \
            started(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as b:
        early = [_until_waiting(p) for p in (a, b)]    # both started and found the store held, however slowly
        holder.release()
        outs = [e + p.communicate(timeout=300)[0] for e, p in zip(early, (a, b))]
    assert [a.returncode, b.returncode] == [0, 0], outs
    n = len(list((pad_root / "images").rglob("*.png")))
    assert len(ImageStore(tmp_path / "cache", 32).open()) == n                          # each image once
    said = [line for o in outs for line in o.splitlines() if line.startswith("waiting for the image store lock")]
    assert len(said) == 2 and all(f"pid {os.getpid()}" in line for line in said)
