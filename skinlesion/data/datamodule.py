"""LightningDataModules for the three datasets: official files -> partitions -> tensors.

:class:`SkinLesionDataModule` holds the logic for every dataset; :class:`PadUfes20DataModule`,
:class:`Isic2019DataModule` and :class:`Derm7ptDataModule` fix the dataset and its defaults, so a notebook can
write ``PadUfes20DataModule(root="data/pad-ufes-20", fold=2)`` without composing a config.
"""
from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from types import ModuleType

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from skinlesion.data import derm7pt, isic2019, pad_ufes
from skinlesion.data.audit import span_warning
from skinlesion.data.images import ImageCache, check_images, load_rgb
from skinlesion.data.info import DataInfo
from skinlesion.data.metadata import MetadataVectorizer, build_vectorizer
from skinlesion.data.table import CaseTable, check_root, check_unique_ids
from skinlesion.data.tasks import DERM7PT_TASK_COLUMNS, select_tasks
from skinlesion.data.transforms import block_gated, geometric, photometric, resize, resolve_augment, to_tensor
from skinlesion.errors import ConfigError, DataError

log = logging.getLogger(__name__)
DATASETS: dict[str, ModuleType] = {m.NAME: m for m in (pad_ufes, isic2019, derm7pt)}
_SPAN_WARNED: set[tuple] = set()   # settings already warned about lesions spanning partitions (once per run)


class CaseDataset(Dataset):
    """Cases of one partition; returns images (same geometric transform for all modalities), metadata, targets."""

    def __init__(self, table: CaseTable, positions: np.ndarray, keys: tuple[str, ...], meta: np.ndarray,
                 image_size: int, train: bool, augment: dict, cached: dict[Path, Path] | None = None):
        self.table, self.positions, self.keys, self.image_size = table, positions, keys, image_size
        self.meta = torch.from_numpy(meta.astype(np.float32))
        self.targets = torch.from_numpy(table.targets[positions])
        self.resize = resize(image_size)   # per image: the images of a case may differ in size
        self.geo = geometric(image_size, train, augment, extra_keys=keys[1:])
        self.photo = photometric(train, augment)
        # brightness/contrast inside the block: this dataset draws whether the block fires (probability p)
        self.block_p = resolve_augment(augment)["p"] if train and block_gated(augment) else None
        self.cached = cached or {}
        # albumentations keeps its own random state, independent of the global seeds. Training reads items as
        # (index, epoch) from an EpochSampler and reseeds per case and epoch, so a case's augmentation depends on
        # (seed, epoch, case) only: not on workers, batch order or an interruption. Plain integer reads (other
        # loaders) fall back to one stream per DataLoader worker. The seed comes from the (seeded) torch generator.
        self.seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        self._seed_transforms(self.seed)
        self._worker_seeded: int | None = None

    def _seed_transforms(self, seed: int) -> None:
        self.geo.set_random_seed(seed)
        if self.photo is not None:
            self.photo.set_random_seed(seed + 1)
        self._block_rng = np.random.default_rng(seed + 2)

    def __len__(self) -> int:
        return len(self.positions)

    def _load(self, key: str, row: int) -> np.ndarray:
        src = self.table.images[key][row]
        if src is None:   # an absent image of a case to predict: a blank stand-in the branches reading it ignore
            return np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
        where = f" (case {self.table.case_ids[row]}, {self.table.source.name} line {self.table.csv_line(row)})"
        return load_rgb(self.cached.get(src, src), where)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, tuple):
            i, epoch = key
            self._seed_transforms(int(np.random.SeedSequence([self.seed, epoch, int(i)]).generate_state(1)[0]))
        else:
            i, worker = key, get_worker_info()
            if worker is not None and self._worker_seeded != worker.seed:
                self._seed_transforms(worker.seed % 2**31)
                self._worker_seeded = worker.seed
        row = int(self.positions[i])
        item: dict = {"meta": self.meta[i], "target": self.targets[i], "index": row}
        if self.keys:
            try:
                item["images"] = self._images(row)
            except DataError:
                raise
            except Exception as e:  # noqa: BLE001  (inside a loader worker: name the case and its files)
                files = ", ".join(str(self.table.images[k][row]) for k in self.keys)
                raise DataError(f"case {self.table.case_ids[row]} ({self.table.source.name} line "
                                f"{self.table.csv_line(row)}; {files}): {type(e).__name__}: "
                                f"{' '.join(str(e).split())}") from None
        return item

    def _images(self, row: int) -> dict[str, torch.Tensor]:
        # each image to the input size on its own, then the geometry the images of the case share
        imgs = {k: self.resize(image=self._load(k, row))["image"] for k in self.keys}
        fires = self.block_p is None or self._block_rng.random() < self.block_p
        out = self.geo(image=imgs[self.keys[0]], **{k: imgs[k] for k in self.keys[1:]}) if fires else \
            {"image" if k == self.keys[0] else k: imgs[k] for k in self.keys}
        images = {}
        for k in self.keys:
            img = out["image" if k == self.keys[0] else k]
            if self.photo is not None and fires:
                img = self.photo(image=img)["image"]
            images[k] = to_tensor(img)
        return images


class EpochSampler(DistributedSampler):
    """The training order as a function of (seed, epoch) — torch's DistributedSampler, one replica unless DDP —
    yielding ``(index, epoch)`` so that each case's augmentation is seeded by its epoch too (:class:`CaseDataset`).
    Lightning sets the epoch; a resumed run therefore replays exactly the batches an uninterrupted one would see."""

    def __iter__(self):
        epoch = self.epoch
        return ((i, epoch) for i in super().__iter__())


class SkinLesionDataModule(L.LightningDataModule):
    def __init__(self, dataset: str, root: str | None = None, fold: int = 0, image_size: int = 224,
                 batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 4,
                 tasks: list[str] | None = None, image_keys: list[str] | None = None,
                 meta: str | None = "default", meta_clean: bool = False, meta_fields: list[str] | None = None,
                 scale_numeric: bool = False, split: str = "stratified", split_seed: int | None = None,
                 image_dir: str = "ISIC_2019_Training_Input", missing_images: str = "error",
                 augment: dict | None = None, normalize: str = "imagenet", cache: dict | None = None,
                 pin_memory: bool = True, persistent_workers: bool = True, progress: bool = True,
                 hold_out: str | None = None, augment_on: str = "cpu"):
        super().__init__()
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset={dataset!r}: expected one of {sorted(DATASETS)}")
        if missing_images not in ("error", "skip"):
            raise ConfigError(f"data.missing_images={missing_images!r}: expected 'error' or 'skip'")
        self.spec = DATASETS[dataset]
        self.dataset, self.root, self.fold = dataset, root, fold
        self.image_size, self.batch_size = image_size, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.persistent_workers = num_workers, pin_memory, persistent_workers
        self.task_names = list(tasks) if tasks else None
        keys = tuple(image_keys) if image_keys else self.spec.IMAGE_KEYS
        unknown = [k for k in keys if k not in self.spec.IMAGE_KEYS]
        if unknown:
            raise ConfigError(f"data.image_keys={list(keys)}: {dataset} has images {list(self.spec.IMAGE_KEYS)}")
        self.image_keys = keys
        self.meta_variant = None if meta in (None, "none") else meta
        self.meta_clean, self.meta_fields, self.scale_numeric = meta_clean, meta_fields, scale_numeric
        self.split, self.split_seed, self.image_dir = split, split_seed, image_dir
        if hold_out is not None and (dataset != "derm7pt" or hold_out not in derm7pt.HOLD_OUT):
            raise ConfigError(f"data.hold_out={hold_out!r}: expected null, or 'second_half' with derm7pt (the second "
                              "half of train_indexes.csv, in file order, held out of training and predicted)")
        self.hold_out = hold_out
        if normalize not in ("imagenet", "raw_bgr"):
            raise ConfigError(f"data.normalize={normalize!r}: expected 'imagenet' or 'raw_bgr'")
        self.missing_images, self.normalize = missing_images, normalize   # applied on the device by the module
        self.augment = resolve_augment(augment)   # None: the default training augmentation
        if augment_on not in ("cpu", "device"):
            raise ConfigError(f"data.augment_on={augment_on!r}: expected 'cpu' (decode and augment in loader "
                              "workers) or 'device' (a decoded-once uint8 store, augmentation on the device)")
        self.augment_on = augment_on
        # data.augment_on=device: the device augmentation the module applies to training batches (set up in setup())
        self.batch_augment = None
        self.cache_cfg = dict(cache or {})
        self.progress = progress
        self.input_keys: tuple[str, ...] = keys   # narrowed to what the model reads (set_input_keys)
        self.table: CaseTable | None = None
        tasks = select_tasks(dataset, self.task_names)
        dim, fields = self._describe_meta()
        # A task whose label column is also a metadata field (derm7pt m14 holds the raw criteria) would leak.
        leaks = tuple(t.name for t in tasks
                      if dataset == "derm7pt" and DERM7PT_TASK_COLUMNS.get(t.name) in fields)
        self._info = DataInfo(dataset, tasks, keys, dim, leaks)

    # --- description known from the config alone ----------------------------------------------------
    def _describe_meta(self) -> tuple[int, list[str]]:
        """Width of the encoded metadata and the CSV fields it reads (-1: learned vocabulary, known after setup).

        Building the vectorizer here checks the variant and field names before any file is read."""
        if self.meta_variant is None:
            return 0, []
        vec = self._vectorizer()
        return (-1 if self.meta_fields else vec.dim), vec.field_names

    def _vectorizer(self, source: str | None = None) -> MetadataVectorizer:
        if self.meta_fields:
            setting = f"data.meta_fields={list(self.meta_fields)}"
            kwargs = {"variant": "custom", "fields": list(self.meta_fields)}
        else:
            setting = f"data.meta={self.meta_variant}"
            kwargs = {"variant": None if self.meta_variant == "default" else self.meta_variant}
        if self.meta_clean:
            setting += ", data.meta_clean=true"
        try:
            return build_vectorizer(self.dataset, clean=self.meta_clean, scale_numeric=self.scale_numeric,
                                    source=source, **kwargs)
        except ConfigError as e:
            raise ConfigError(f"{setting}: {e}") from None

    @property
    def info(self) -> DataInfo:
        return self._info

    def set_input_keys(self, keys: tuple[str, ...]) -> None:
        """Load only the modalities the model reads."""
        self.input_keys = tuple(keys)

    # --- reading --------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        table, partition, fold_col = self.read_partitions()
        for note in table.notes:
            log.warning("%s: %s", self.dataset, note)
        table, partition, fold_col = self._handle_missing(table, partition, fold_col)
        self._warn_spanning(table, partition)
        self.table, self.partition, self.fold_col = table, partition, fold_col
        try:
            self._fit_meta()
            self._check_images()
            cached = self._build_store() if self.augment_on == "device" else self._build_cache()
            self.datasets = {part: self._make(part, cached) for part in ("train", "val", "test", "holdout")
                             if (partition == part).any()}
        except BaseException:
            self.table = None   # a failed setup leaves nothing that a second call would mistake for done
            raise
        log.info("%s: %s", self.dataset, {p: len(d) for p, d in self.datasets.items()})

    def read_partitions(self, check_ids: bool = True) -> tuple[CaseTable, np.ndarray, np.ndarray]:
        """Every case of the dataset (no image opened), its partition and its fold in this setting: where
        :meth:`setup` starts, and what the data audit reads. ``check_ids=False`` lets duplicated case ids through
        (the audit lists them; training refuses them)."""
        root = check_root(self.root, self.dataset)
        table = self.spec.read(root, image_dir=self.image_dir)
        if check_ids:
            check_unique_ids(table)
        task_pos = [i for i, t in enumerate(table.tasks) if t in self._info.tasks]
        table.targets, table.tasks = table.targets[:, task_pos], self._info.tasks
        if self.dataset == "derm7pt":
            partition = derm7pt.partition(table, root)
            if self.hold_out == "second_half":
                partition = derm7pt.hold_out_second_half(partition, root)
            fold_col = np.full(len(table), -1)
        else:
            kwargs = {"split": self.split} | ({"seed": self.split_seed} if self.split_seed is not None else {})
            try:
                fold_col = self.spec.folds(table, **kwargs)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            from skinlesion.data.splits import cv_partition
            try:
                partition = cv_partition(fold_col, self.fold)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        return table, partition, fold_col

    def _warn_spanning(self, table: CaseTable, partition: np.ndarray) -> None:
        """One warning per process and setting when an image-level split puts a lesion's (or patient's) images
        in several partitions: the evaluation then sees lesions that training saw."""
        if self.split != "stratified":
            return
        key = (self.dataset, str(Path(self.root).expanduser().resolve()), self.split, self.split_seed, self.fold)
        if key in _SPAN_WARNED:
            return
        message = span_warning(table, partition, self.split)
        if message is not None:
            _SPAN_WARNED.add(key)
            log.warning("%s", message)

    def _handle_missing(self, table, partition, fold_col):
        keys = self.input_keys
        missing = np.zeros(len(table), dtype=bool)
        for k in keys:
            missing |= np.array([not p.is_file() for p in table.images[k]])
        if not missing.any():
            return table, partition, fold_col
        first = int(np.flatnonzero(missing)[0])
        paths = [str(table.images[k][first]) for k in keys if not table.images[k][first].is_file()]
        msg = (f"{int(missing.sum())} of {len(table)} case(s) have missing image files; first: case "
               f"{table.case_ids[first]} ({table.source.name} line {table.csv_line(first)}) expects {paths}")
        if self.missing_images == "error":
            raise DataError(msg + ". Fix the dataset or set data.missing_images=skip to drop these cases.")
        log.warning("%s; skipping them (data.missing_images=skip). Per partition: %s", msg,
                    pd.Series(partition[missing]).value_counts().to_dict())
        keep = ~missing
        return table.subset(keep), partition[keep], fold_col[keep]

    def _fit_meta(self) -> None:
        n = len(self.table)
        self.vectorizer = None   # the fitted encoding, which a run's checkpoints carry for prediction
        if self.meta_variant is None:
            self.meta = np.zeros((n, 0), dtype=np.float32)
            return
        vec = self.vectorizer = self._vectorizer(source=str(self.table.source))
        vec.check(self.table.frame)          # every row, so the error names the first bad line of the file
        train = self.partition == "train"
        vec.fit(self.table.frame.iloc[np.flatnonzero(train)])   # learned parts (scaling, vocab) see train only
        self.meta = vec.transform(self.table.frame)
        self.meta_columns = list(vec.columns)
        if self._info.meta_dim == -1:
            self._info = DataInfo(self.dataset, self._info.tasks, self.image_keys, vec.dim, self._info.meta_leaks)

    def _check_images(self) -> None:
        """Every image the model reads must open: a corrupt file fails here, not epochs into training."""
        keys = self.input_keys
        paths = [p for k in keys for p in self.table.images[k]]
        if not paths:
            return
        unique = list(dict.fromkeys(paths))      # derm7pt cases with clinic == derm list one file twice
        found = dict(zip(unique, check_images(unique, workers=min(32, 4 * (os.cpu_count() or 1)),
                                              progress=self.progress)))
        problems = [found[p] for p in paths]
        bad = [i for i, p in enumerate(problems) if p is not None]
        if not bad:
            return
        n = len(self.table)
        # report the first bad case in CSV order (paths are grouped by modality)
        first = min(bad, key=lambda i: (i % n, i // n))
        row = first % n
        n_bad = len({paths[i] for i in bad})
        raise DataError(f"{paths[first]}: cannot decode image (case {self.table.case_ids[row]}, "
                        f"{self.table.source.name} line {self.table.csv_line(row)}): {problems[first]}; "
                        f"{n_bad} of {len(unique)} image file(s) fail this check. Replace the file(s) or remove "
                        f"their rows.")

    def _build_cache(self) -> dict[Path, Path] | None:
        if not self.cache_cfg.get("enabled", False) or not self.input_keys:
            return None
        cache = ImageCache(self.cache_cfg["dir"], int(self.cache_cfg.get("size", 256)), root=self.root)
        sources = [p for k in self.input_keys for p in self.table.images[k]]
        return cache.build(sources, workers=max(1, self.num_workers), progress=self.progress)

    def _build_store(self) -> dict | None:
        """data.augment_on=device: every image the model reads, decoded and resized once into one uint8 array
        (:class:`ImageStore`, reused by later runs), and the device augmentation for the training batches."""
        from skinlesion.data.gpu_augment import BatchAugment
        from skinlesion.data.store import ImageStore

        if not self.input_keys:
            return None
        t = self.table
        where: dict[Path, str] = {}   # first case reading each file, for decode errors
        for k in self.input_keys:
            for row, src in enumerate(t.images[k]):
                if src not in where:
                    where[src] = f" (case {t.case_ids[row]}, {t.source.name} line {t.csv_line(row)})"
        sources = list(where)
        # with data.cache.enabled the CPU path resizes the cached copies: so does the store (identical inputs)
        cached = self._build_cache() or {}
        directory = self.cache_cfg.get("dir") or os.environ.get("SKINLESION_CACHE") or ".cache/images"
        store = ImageStore(directory, self.image_size, root=self.root)
        rows = store.build([cached.get(s, s) for s in sources], [where[s] for s in sources],
                           workers=min(32, os.cpu_count() or 1), progress=self.progress)
        row_of = dict(zip(sources, rows.tolist()))
        aug = BatchAugment(self.augment, self.input_keys)
        self.batch_augment = aug if aug.active else None
        return {"store": store.data, "size": self.image_size,
                "rows": {k: np.array([row_of[s] for s in t.images[k]]) for k in self.input_keys},
                "n_draws": aug.n_draws if aug.active else 0}

    def _make(self, part: str, cached) -> Dataset:
        pos = np.flatnonzero(self.partition == part)
        if self.augment_on == "device" and cached is not None:
            from skinlesion.data.store import StoreDataset
            return StoreDataset(self.table, pos, self.input_keys, self.meta[pos], cached["store"], cached["size"],
                                cached["rows"], n_draws=cached["n_draws"] if part == "train" else 0)
        return CaseDataset(self.table, pos, self.input_keys, self.meta[pos], self.image_size, part == "train",
                           self.augment, cached)

    # --- outputs ---------------------------------------------------------------------------------------
    def fold_frame(self) -> pd.DataFrame:
        """Every case's fold and partition in this run (written to folds.csv)."""
        return pd.DataFrame({"case_id": self.table.case_ids, "csv_line": [self.table.csv_line(i) for i in
                             range(len(self.table))], "fold": self.fold_col, "partition": self.partition})

    def class_counts(self) -> list[np.ndarray]:
        """Per task, the number of training cases of each class."""
        y = self.table.targets[self.partition == "train"]
        return [np.bincount(y[:, j], minlength=t.num_classes) for j, t in enumerate(self._info.tasks)]

    # --- loaders ---------------------------------------------------------------------------------------
    def _loader(self, part: str, train: bool) -> DataLoader:
        if part not in self.datasets:
            raise ConfigError(f"{self.dataset} has no '{part}' partition in this setting")
        ds = self.datasets[part]
        sampler = None
        if train:
            trainer = self.trainer   # attached by Lightning; None when the module is used on its own
            replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            sampler = EpochSampler(ds, num_replicas=replicas, rank=rank, shuffle=True, seed=ds.seed)
        # Drop the last training batch only when it would hold a single case (BatchNorm cannot train on it):
        # every other case is seen every epoch, as in the reference recipe.
        # A generator of the loader's own: creating an iterator draws the workers' base seed from it, not from the
        # global random state, which a resumed run restores from its checkpoint at a point where an uninterrupted
        # run has not yet created its next iterator (dropout would then draw other numbers after a resume).
        return DataLoader(ds, batch_size=self.batch_size if train else self.eval_batch_size, sampler=sampler,
                          drop_last=train and len(sampler) % self.batch_size == 1, num_workers=self.num_workers,
                          pin_memory=self.pin_memory and torch.cuda.is_available(),
                          persistent_workers=self.persistent_workers and self.num_workers > 0,
                          generator=torch.Generator().manual_seed(int(ds.seed)))

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def eval_dataloader(self, part: str) -> DataLoader:
        """An evaluation loader (no augmentation, no shuffling) for any partition: val, test or holdout."""
        return self._loader(part, False)

    def has_partition(self, part: str) -> bool:
        return part in self.datasets


_SETTINGS = tuple(inspect.signature(SkinLesionDataModule.__init__).parameters)[1:]


class _DatasetDataModule(SkinLesionDataModule):
    """A :class:`SkinLesionDataModule` whose dataset is fixed by the class."""

    DATASET: str = ""
    DEFAULTS: dict = {}

    def __init__(self, root: str | None = None, fold: int = 0, **settings):
        dataset = settings.pop("dataset", self.DATASET)
        if dataset != self.DATASET:
            other = _CLASS_OF.get(dataset, f"one of {sorted(_CLASS_OF.values())}")
            raise ConfigError(f"data.dataset={dataset!r}: {type(self).__name__} reads {self.DATASET!r}; use {other}")
        unknown = sorted(set(settings) - set(_SETTINGS))
        if unknown:
            raise ConfigError(f"data: unknown setting(s) {unknown} for {type(self).__name__}; expected some of "
                              f"{list(_SETTINGS)}")
        augment = {**self.DEFAULTS.get("augment", {}), **(settings.pop("augment", None) or {})}
        super().__init__(self.DATASET, root=root, fold=fold, **{**self.DEFAULTS, **settings, "augment": augment})


class PadUfes20DataModule(_DatasetDataModule):
    """PAD-UFES-20: ``metadata.csv`` + ``images/imgs_part_{1,2,3}/``; 6-class diagnosis from the clinical photo.

    ``fold`` 0..4 selects the validation fold of the 5-fold split; the held-out test partition is the same for
    every fold. Metadata defaults to the 81-wide encoding (``meta="m45"`` for the 45-wide one, None for none).
    """

    DATASET = "pad_ufes"
    DEFAULTS = {"meta": "m81"}


class Isic2019DataModule(_DatasetDataModule):
    """ISIC-2019 training set: ground-truth and metadata CSVs + ``ISIC_2019_Training_Input/``; 8 classes.

    ``fold`` 0..4 is the validation (and reported) partition; there is no labelled test partition.
    """

    DATASET = "isic2019"
    DEFAULTS = {"meta": "isic11"}


class Derm7ptDataModule(_DatasetDataModule):
    """derm7pt release_v0: ``meta/meta.csv``, the official index files and ``images/``.

    Defaults to the two-image, eight-task setting (dermoscopy first, 20-wide metadata, brightness/contrast
    jitter drawn per image). The one-image diagnosis setting: ``tasks=["DIAG"], image_keys=["derm"],
    meta="m14", augment={"brightness_contrast": False}``. The split is the official one (``fold`` is unused).
    """

    DATASET = "derm7pt"
    DEFAULTS = {"meta": "m20", "augment": {"brightness_contrast": True}}


_CLASS_OF = {c.DATASET: c.__name__ for c in (PadUfes20DataModule, Isic2019DataModule, Derm7ptDataModule)}
