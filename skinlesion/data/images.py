"""Image decoding (always 3-channel RGB) and the optional pre-resized image cache."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from skinlesion.errors import DataError


def load_rgb(path: Path, where: str = "") -> np.ndarray:
    """Decode to an HxWx3 uint8 array; RGBA, palette and greyscale images are converted to RGB."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # writable copy (torch warns on read-only arrays)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found{where}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image{where} ({type(e).__name__}: {e})") from None


# How a complete file of each format ends, and how far before the end that mark may sit (JPEG writers sometimes
# append a few padding bytes after the end-of-image marker).
_END_MARK = {"PNG": (b"IEND", 64), "JPEG": (b"\xff\xd9", 4096), "MPO": (b"\xff\xd9", 4096)}


def header_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable image, judged from its header and its last bytes without decoding the
    pixels (a few hundred microseconds per file); None when it looks complete."""
    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
    except FileNotFoundError:
        return "image file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"not a readable image ({type(e).__name__}: {e})"
    if w <= 0 or h <= 0:
        return f"{fmt} header gives an empty size {w}x{h}"
    mark, within = _END_MARK.get(fmt, (None, 0))
    if mark is not None:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - within))
            if mark not in f.read():
                return f"truncated {fmt} file (no end marker {mark!r}; an interrupted copy or download?)"
    return None


def check_images(paths: list[Path], workers: int = 8, progress: bool = True) -> list[str | None]:
    """:func:`header_problem` of every path, in order, read by ``workers`` threads (the work is file I/O)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        it = pool.map(header_problem, paths, chunksize=64)
        return list(tqdm(it, total=len(paths), desc="checking images", disable=not progress))


def source_key(src: Path, root: Path | None = None) -> str:
    """Identity of a source file's contents, shared by the pre-resized cache and the image store: its path, size
    and modification time (a changed file gets a new key). The path is relative to the dataset's ``root`` when the
    file lies under it, prefixed with the root's name, so a dataset moved or staged to another folder (copies that
    keep modification times: ``cp -p``, ``rsync -a``) keeps its keys instead of being stored again."""
    st = src.stat()
    name = str(src.resolve())
    if root is not None:
        root = Path(root).resolve()
        try:
            name = f"{root.name}/{src.resolve().relative_to(root).as_posix()}"
        except ValueError:   # outside the dataset (a cached copy): its own path
            pass
    return f"{name}|{st.st_size}|{st.st_mtime_ns}"


class ImageCache:
    """Pre-resized copies of source images, keyed by path, size and modification time.

    Decoding full-size photographs dominates the input pipeline; a 256-px copy is decoded several times
    faster. A changed source file (new mtime or size) gets a new key, so stale copies are never read.
    """

    def __init__(self, directory: str | os.PathLike, size: int = 256, root: str | os.PathLike | None = None):
        self.dir = Path(directory).expanduser() / f"{size}px"
        self.size, self.root = size, root

    def key(self, src: Path) -> Path:
        digest = hashlib.sha1(f"{source_key(src, self.root)}|{self.size}".encode()).hexdigest()
        return self.dir / digest[:2] / f"{digest[2:20]}.png"

    def _build_one(self, src: Path) -> Path:
        dst = self.key(src)
        if not dst.is_file():
            img = Image.fromarray(load_rgb(src)).resize((self.size, self.size), Image.Resampling.BILINEAR)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(f".{os.getpid()}.tmp")
            img.save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, dst)   # atomic: a crash never leaves a truncated cache file behind
        return dst

    def build(self, sources: list[Path], workers: int = 4, progress: bool = True) -> dict[Path, Path]:
        """Make sure every source has a cached copy; returns source -> cached path."""
        unique = list(dict.fromkeys(sources))
        with ThreadPoolExecutor(max(1, workers)) as pool:
            it = pool.map(self._build_one, unique)
            done = list(tqdm(it, total=len(unique), desc=f"image cache {self.size}px", disable=not progress))
        return dict(zip(unique, done))
