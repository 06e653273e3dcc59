"""``data.pipeline=gpu``: every image decoded and resized once into one uint8 array, read back by batches.

The array is an ``.npy`` file of shape (N, 3, S, S) (S = ``data.image_size``), memory-mapped when read, under
``<cache dir>/store/``. Its name is a digest of the sources' paths, sizes and modification times and of S, so a
changed or added source file gives a new store rather than stale pixels. Rows are resized exactly like the CPU
path's (``A.Resize(S, S)``), so evaluation inputs are byte-for-byte those of ``data.pipeline=cpu``.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from tqdm.auto import tqdm

from skinlesion.data.images import load_rgb
from skinlesion.data.table import CaseTable

log = logging.getLogger(__name__)


@contextmanager
def _exclusive(lock: Path):
    """One builder per store at a time (concurrent sweep jobs, DDP ranks); the lock dies with its process."""
    try:
        import fcntl
    except ImportError:   # no POSIX locks: concurrent builders only waste work (each writes its own partial file)
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether ``path`` is a finished store of ``shape``: header as expected and every byte of the data there."""
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            found, fortran, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable image store (%s); rebuilding it", path, e)
        return False
    if tuple(found) != shape or dtype != np.uint8 or fortran:
        log.warning("%s: holds %s %s, expected %s uint8; rebuilding it", path, found, dtype, shape)
        return False
    if path.stat().st_size != offset + int(np.prod(shape)):
        log.warning("%s: truncated image store; rebuilding it", path)
        return False
    return True


class ImageStore:
    """Decoded, resized copies of ``sources`` in one (N, 3, S, S) uint8 ``.npy`` file under ``directory/store``.

    :meth:`build` writes it once (a thread pool, a progress bar) into a partial file that is renamed into place
    only when complete, so a killed build never leaves a file that a later run would read; :meth:`open` maps it.
    """

    def __init__(self, directory: str | os.PathLike, size: int):
        if size < 2:
            raise ValueError(f"image store: size must be >= 2, got {size}")
        self.dir = Path(directory).expanduser() / "store"
        self.size = size

    def shape(self, sources: Sequence[Path]) -> tuple[int, int, int, int]:
        return (len(sources), 3, self.size, self.size)

    def path(self, sources: Sequence[Path]) -> Path:
        h = hashlib.sha1(f"store|{self.size}".encode())
        for src in sources:
            st = src.stat()
            h.update(f"\n{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return self.dir / f"{self.size}px-{len(sources)}-{h.hexdigest()[:20]}.npy"

    def build(self, sources: Sequence[Path], where: Sequence[str] | None = None, workers: int = 8,
              progress: bool = True) -> Path:
        """The complete store of ``sources`` (built unless it exists); ``where[i]`` says which case reads
        ``sources[i]``, for decode errors (e.g. ``" (case X, metadata.csv line 7)"``)."""
        sources = [Path(s) for s in sources]
        where = list(where) if where is not None else [""] * len(sources)
        shape = self.shape(sources)
        path = self.path(sources)
        if _complete(path, shape):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(path.with_name(path.name + ".lock")):
            if _complete(path, shape):   # another process finished it while this one waited
                return path
            for stale in path.parent.glob(path.name + ".*.partial"):   # left by a killed build
                stale.unlink(missing_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
            try:
                self._write(tmp, shape, sources, where, workers, progress)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        log.info("image store: %d images at %dpx in %s (%.2f GB)", len(sources), self.size, path,
                 path.stat().st_size / 1e9)
        return path

    def _write(self, tmp: Path, shape: tuple[int, ...], sources: list[Path], where: list[str], workers: int,
               progress: bool) -> None:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        size = self.size

        def one(i: int) -> None:
            # the CPU path's resize (cv2 INTER_LINEAR via albumentations), so eval inputs are identical
            img = A.Resize(size, size)(image=load_rgb(sources[i], where[i]))["image"]
            arr[i] = img.transpose(2, 0, 1)

        pool = ThreadPoolExecutor(max(1, workers))   # decoding and resizing release the GIL
        try:
            for _ in tqdm(pool.map(one, range(len(sources))), total=len(sources), desc=f"image store {size}px",
                          disable=not progress):
                pass
        finally:
            pool.shutdown(wait=True, cancel_futures=True)   # a decode error stops the build without draining it
        arr.flush()
        del arr
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())   # on disk before the rename makes it visible as complete

    @staticmethod
    def open(path: str | os.PathLike, in_memory: bool = False) -> np.ndarray:
        """The store as an array: memory-mapped (pages shared by all loader workers), or read into memory."""
        return np.load(path, mmap_mode=None if in_memory else "r")


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
                 store: Path, rows: dict[str, np.ndarray], n_draws: int = 0, in_memory: bool = False):
        self.positions, self.keys = positions, keys
        self.meta = torch.from_numpy(meta.astype(np.float32))
        self.targets = torch.from_numpy(table.targets[positions])
        self.store, self.in_memory = Path(store), in_memory
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
            self._array = ImageStore.open(self.store, self.in_memory)
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
