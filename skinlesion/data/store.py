"""``data.augment_on=device``: every image decoded and resized once into a uint8 store, read back by batches.

The store (:class:`ImageStore`) is one append-only file of (3, S, S) rows (S = ``data.image_size``) under
``<cache dir>/store/<S>px/``, memory-mapped when read, with an index from each source file (path, size,
modification time) to its row: a changed or added image is decoded into a row of its own, every other image is
reused, by every run and sweep point of any dataset root. Rows are resized exactly like the CPU path's
(:func:`skinlesion.data.transforms.resize`), so evaluation inputs are byte-for-byte those of ``data.augment_on=cpu``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from tqdm.auto import tqdm

from skinlesion.data.images import load_rgb, source_key
from skinlesion.data.table import CaseTable
from skinlesion.data.transforms import resize
from skinlesion.locks import hold
from skinlesion.provenance import atomic_path

log = logging.getLogger(__name__)


class ImageStore:
    """Decoded, resized copies of source images: one append-only file of uint8 rows (3, S, S) under
    ``directory/store/<S>px/`` and an index from each source's key (resolved path, size, modification time) to its
    row. :meth:`build` decodes only the sources the index lacks, so a changed or added image gets a row of its own
    and every other image is reused; rows are appended in chunks and the index, replaced atomically after each
    chunk, only names rows that are on disk: a killed build loses at most its last chunk, never a finished row.
    One builder at a time (a lock file); readers map the file (:meth:`open`)."""

    CHUNK = 64

    def __init__(self, directory: str | os.PathLike, size: int, root: str | os.PathLike | None = None):
        if size < 2:
            raise ValueError(f"image store: size must be >= 2, got {size}")
        self.dir = Path(directory).expanduser() / "store" / f"{size}px"
        self.size, self.root = size, root
        self.row_bytes = 3 * size * size

    @property
    def data(self) -> Path:
        """The data file the index names (``compact`` writes a new one; before any, ``images.u8``)."""
        return self._load()[1]

    def _load(self) -> tuple[dict[str, int], Path]:
        """One read of the index: its entries (unchecked) and the data file it names."""
        try:
            saved = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            saved = {}
        return dict(saved.get("rows") or {}), self.dir / saved.get("data", "images.u8")

    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    def key(self, src: Path) -> str:
        """A source's key (:func:`source_key`): relative to the dataset root, so a moved dataset is not stored
        again."""
        return source_key(src, self.root)

    def _rows_on_disk(self, data: Path) -> int:
        return data.stat().st_size // self.row_bytes if data.is_file() else 0

    def _entries(self) -> tuple[dict[str, int], Path]:
        """Entries whose rows are complete on disk (a file cut short drops the entries beyond its end), and the
        data file."""
        rows, data = self._load()
        n = self._rows_on_disk(data)
        return {k: int(r) for k, r in rows.items() if 0 <= int(r) < n}, data

    def _read_index(self) -> dict[str, int]:
        return self._entries()[0]

    def rows(self, sources: Sequence[Path], keys: Sequence[str] | None = None) -> np.ndarray | None:
        """The row of every source when all are stored (None otherwise); ``keys``: the sources' keys, if known."""
        index = self._read_index()
        keys = [self.key(Path(s)) for s in sources] if keys is None else keys
        return np.array([index[k] for k in keys], dtype=np.int64) if all(k in index for k in keys) else None

    def build(self, sources: Sequence[Path], where: Sequence[str] | None = None, workers: int = 8,
              progress: bool = True) -> np.ndarray:
        """The row of every source, decoding (a thread pool, a progress bar) only those not stored yet;
        ``where[i]`` says which case reads ``sources[i]``, for decode errors (``" (case X, meta.csv line 7)"``)."""
        sources = [Path(s) for s in sources]
        where = list(where) if where is not None else [""] * len(sources)
        keys = [self.key(s) for s in sources]
        rows = self.rows(sources, keys)
        if rows is not None:
            return rows
        self.dir.mkdir(parents=True, exist_ok=True)
        # one builder per store at a time (concurrent sweep jobs, DDP ranks); the lock dies with its process
        with hold(self.dir / "store.lock", f"image store lock of {self.dir}"):
            index, data = self._entries()   # another builder may have added rows while this one waited
            n = self._rows_on_disk(data)
            if data.is_file() and data.stat().st_size != n * self.row_bytes:
                with open(data, "r+b") as f:   # a row cut short by a kill: drop it
                    f.truncate(n * self.row_bytes)
            todo: dict[str, int] = {}
            for i, k in enumerate(keys):
                if k not in index:
                    todo.setdefault(k, i)
            with tqdm(total=len(todo), desc=f"image store {self.size}px", disable=not progress or not todo) as bar:
                pending = list(todo.items())
                for start in range(0, len(pending), self.CHUNK):
                    chunk = pending[start:start + self.CHUNK]
                    block = self._decode([sources[i] for _, i in chunk], [where[i] for _, i in chunk], workers)
                    with open(data, "ab") as f:
                        f.write(block.tobytes())
                        f.flush()
                        os.fsync(f.fileno())   # the rows on disk before the index names them
                    index.update({k: n + j for j, (k, _) in enumerate(chunk)})
                    n += len(chunk)
                    self._write_index(index, data)
                    bar.update(len(chunk))
        if todo:
            log.info("image store: %d image(s) decoded at %dpx, %d reused (%s, %.2f GB)", len(todo), self.size,
                     len(sources) - len(todo), data, data.stat().st_size / 1e9)
        return np.array([index[k] for k in keys], dtype=np.int64)

    def compact(self, roots: Sequence[str | os.PathLike] = ()) -> tuple[int, int]:
        """Reclaim rows no index entry needs: entries whose source is gone or changed (another size or modification
        time — the new version has its own row) are dropped, and the remaining rows are copied to a new data file;
        replacing the index, which names its data file, is the one step that switches to it, so a kill at any
        moment leaves a consistent store. A key relative to a dataset root is checked under the root of that name
        in ``roots``; keys of roots not given are kept. Returns (rows kept, bytes freed)."""
        by_name = {Path(r).resolve().name: Path(r).resolve() for r in roots}
        with hold(self.dir / "store.lock", f"image store lock of {self.dir}"):
            index, old = self._entries()
            if not old.is_file():
                return 0, 0
            before = old.stat().st_size
            order = sorted(((k, r) for k, r in index.items() if _current(k, by_name)), key=lambda kr: kr[1])
            generation = int(old.stem.rpartition(".")[2]) + 1 if old.stem.rpartition(".")[2].isdigit() else 1
            new = self.dir / f"images.{generation}.u8"
            with open(old, "rb") as src, open(new, "wb") as dst:
                for _, row in order:
                    src.seek(row * self.row_bytes)
                    dst.write(src.read(self.row_bytes))
                dst.flush()
                os.fsync(dst.fileno())
            self._write_index({k: i for i, (k, _) in enumerate(order)}, new)
            old.unlink()
        return len(order), before - len(order) * self.row_bytes

    def _write_index(self, index: dict[str, int], data: Path) -> None:
        with atomic_path(self.index_path) as tmp:
            tmp.write_text(json.dumps({"size": self.size, "data": data.name, "rows": index}))

    def _decode(self, sources: list[Path], where: list[str], workers: int) -> np.ndarray:
        out = np.empty((len(sources), 3, self.size, self.size), dtype=np.uint8)
        to_size = resize(self.size)

        def one(i: int) -> None:
            # the CPU path's resize (cv2 INTER_LINEAR via albumentations), so eval inputs are identical
            out[i] = to_size(image=load_rgb(sources[i], where[i]))["image"].transpose(2, 0, 1)

        with ThreadPoolExecutor(max(1, workers)) as pool:   # decoding and resizing release the GIL
            list(pool.map(one, range(len(sources))))
        return out

    def open(self, in_memory: bool = False) -> np.ndarray:
        """Every stored row as an (N, 3, S, S) array: memory-mapped (pages shared by all loader workers), or read
        into memory."""
        return open_store(self.data, self.size, in_memory)


def _current(key: str, roots: dict[str, Path]) -> bool:
    """Whether the source a store key names is still there, unchanged (True where that cannot be checked)."""
    name, size, mtime = key.rsplit("|", 2)
    if not Path(name).is_absolute():
        top, _, rel = name.partition("/")
        if top not in roots:
            return True
        path = roots[top] / rel
    else:
        path = Path(name)
    try:
        st = path.stat()
    except OSError:
        return False
    return str(st.st_size) == size and str(st.st_mtime_ns) == mtime


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m skinlesion.data.store compact DIR --size S [--root DATASET_ROOT ...]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m skinlesion.data.store",
                                 description="Reclaim the rows of an image store that no current source needs.")
    ap.add_argument("command", choices=["compact"])
    ap.add_argument("directory", help="the cache directory (data.cache.dir, default .cache/images)")
    ap.add_argument("--size", type=int, required=True, help="the store's image size (data.image_size)")
    ap.add_argument("--root", action="append", default=[], help="a dataset root whose entries are checked")
    args = ap.parse_args(argv)
    store = ImageStore(args.directory, args.size)
    if not store.index_path.is_file():
        print(f"error: {store.dir}: no image store there", file=sys.stderr)
        return 1
    kept, freed = store.compact(args.root)
    print(f"{store.dir}: {kept} row(s) kept, {freed / 1e9:.2f} GB freed")
    return 0


def open_store(data: str | os.PathLike, size: int, in_memory: bool = False) -> np.ndarray:
    """The rows of an :class:`ImageStore` data file of images of ``size`` pixels."""
    n = Path(data).stat().st_size // (3 * size * size)
    arr = np.memmap(data, dtype=np.uint8, mode="r", shape=(n, 3, size, size))
    return np.array(arr) if in_memory else arr


# SplitMix64 (Steele et al. 2014): its n-th output is a fixed mix of seed + n * gamma, so any (case, column) of a
# stream is computed directly, for a whole batch at once
_GAMMA, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def keyed_draws(seed: int, epochs: np.ndarray | int, positions: np.ndarray, k: int) -> np.ndarray:
    """``k`` uniform numbers in [0, 1) per position, a function of (seed, epoch, position) only: a case's
    augmentation does not depend on workers, batch composition or an interruption (as on the CPU path)."""
    positions = np.asarray(positions, dtype=np.int64)
    epochs = np.broadcast_to(np.asarray(epochs, dtype=np.int64), positions.shape)
    out = np.empty((len(positions), k), dtype=np.float32)
    for e in np.unique(epochs):
        sel = epochs == e
        base = np.random.SeedSequence([seed, int(e)]).generate_state(1, np.uint64)[0]   # one stream per epoch
        n = positions[sel].astype(np.uint64)[:, None] * np.uint64(k) + np.arange(1, k + 1, dtype=np.uint64)
        z = base + n * _GAMMA   # uint64 arrays wrap around, as the algorithm intends
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z ^= z >> np.uint64(31)
        out[sel] = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)   # 24 bits: exact, < 1
    return out


class StoreDataset(Dataset):
    """Cases of one partition read from an :class:`ImageStore`: uint8 images (no CPU augmentation), metadata,
    targets. Training items also carry ``aug``: the uniform draws from which the device augmentation
    (:class:`skinlesion.data.gpu_augment.BatchAugment`) builds the case's parameters.

    ``__getitems__`` reads a whole batch with one indexed read of the store, so one loader worker keeps up."""

    def __init__(self, table: CaseTable, positions: np.ndarray, keys: tuple[str, ...], meta: np.ndarray,
                 store: Path, size: int, rows: dict[str, np.ndarray], n_draws: int = 0):
        self.positions, self.keys = positions, keys
        self.meta = torch.from_numpy(meta.astype(np.float32))
        self.targets = torch.from_numpy(table.targets[positions])
        self.store, self.size = Path(store), size
        self.rows = {k: np.asarray(rows[k])[positions] for k in keys}   # store row of each case's image
        self.n_draws = n_draws
        self.seed = int(torch.randint(0, 2**31 - 1, (1,)).item())   # as CaseDataset: from the seeded generator
        self._array: np.ndarray | None = None
        self._rng: np.random.Generator | None = None
        self._rng_worker: int | None = None

    def __getstate__(self) -> dict:
        # a spawned worker maps the file itself instead of receiving a pickled copy of the array
        return {**self.__dict__, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = open_store(self.store, self.size)
        return self._array

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        return self.__getitems__([key])[0]

    def _draws(self, keys: list, idx: np.ndarray) -> np.ndarray:
        if all(isinstance(k, tuple) for k in keys):   # (index, epoch) from the training sampler
            return keyed_draws(self.seed, np.array([int(k[1]) for k in keys]), idx, self.n_draws)
        # plain integer reads (other loaders): one stream per process / DataLoader worker, as CaseDataset does
        worker = get_worker_info()
        wseed = None if worker is None else worker.seed
        if self._rng is None or self._rng_worker != wseed:
            self._rng = np.random.default_rng([self.seed] + ([] if wseed is None else [wseed % 2**63]))
            self._rng_worker = wseed
        return self._rng.random((len(idx), self.n_draws), dtype=np.float32)

    def __getitems__(self, keys: list) -> list[dict]:
        idx = np.array([k[0] if isinstance(k, tuple) else k for k in keys], dtype=np.int64)
        draws = self._draws(keys, idx) if self.n_draws else None
        images = {k: torch.from_numpy(np.ascontiguousarray(self.array[self.rows[k][idx]])) for k in self.keys}
        items = []
        for j, i in enumerate(idx):
            item = {"meta": self.meta[i], "target": self.targets[i], "index": int(self.positions[i])}
            if self.keys:
                item["images"] = {k: images[k][j] for k in self.keys}
            if draws is not None:
                item["aug"] = torch.from_numpy(draws[j])
            items.append(item)
        return items


if __name__ == "__main__":
    raise SystemExit(main())
