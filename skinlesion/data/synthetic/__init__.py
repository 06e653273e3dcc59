"""Generated datasets in the official on-disk layouts of PAD-UFES-20, ISIC-2019 and derm7pt.

``python -m skinlesion.data.synthetic --layout pad_ufes --out /tmp/pad`` writes a dataset that the real
readers accept unchanged: the same file names, columns, value spellings and parsing quirks as the official
release, metadata correlated with the label the way the real data are, and images whose content depends on
every label (lesion colour/shape/texture per diagnosis; for derm7pt one marker per seven-point criterion, and
complementary cues in the clinical and dermoscopic images). A small CNN learns it in a few CPU epochs, which
makes it the test bed for the pipeline, and ``from_csv`` pairs real metadata files (e.g. derm7pt's, whose
images may not be redistributed) with generated images.

Modules: :mod:`.lesion_images` renders the images; :mod:`.pad_ufes`, :mod:`.isic2019` and :mod:`.derm7pt`
draw each dataset's metadata and write its layout; :mod:`.cli` is the command line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skinlesion.data.pad_ufes import IMAGE_FOLDERS as PAD_IMAGE_FOLDERS
from skinlesion.data.synthetic import derm7pt, isic2019, pad_ufes
from skinlesion.data.synthetic.derm7pt import seven_point_score
from skinlesion.data.synthetic.lesion_images import write_images

__all__ = ["DEFAULT_N", "LAYOUTS", "PAD_IMAGE_FOLDERS", "generate", "main", "seven_point_score"]

LAYOUTS = ("pad_ufes", "derm7pt", "isic2019")     # the order seeds each layout's generator: keep it
# Official sizes for PAD/derm7pt; ISIC defaults to a tenth of the 25,331 images to stay quick.
DEFAULT_N = {"pad_ufes": 2298, "derm7pt": 1011, "isic2019": 2533}
_WRITERS = {"pad_ufes": pad_ufes, "derm7pt": derm7pt, "isic2019": isic2019}

_README = """SYNTHETIC DATA - not a real dataset.

Written by skinlesion.data.synthetic (layout={layout}, seed={seed}, size={size}, difficulty={difficulty}{src}).
The files follow the official on-disk layout of the dataset so that the real readers accept them, but every
image is drawn by a program (a coloured blob on a skin-tone background whose appearance depends on the labels)
and shows no patient. {meta}
Do not report results on these data as results on the real dataset.
"""


def generate(layout: str, out: str | Path, n: int | None = None, size: int = 96, seed: int = 0,
             from_csv: str | Path | None = None, progress: bool = True, difficulty: float = 0.5) -> Path:
    """Write a synthetic dataset in the official layout ``layout`` under ``out`` and return ``out``.

    ``n`` rows (images for PAD/ISIC, cases for derm7pt; default per layout in ``DEFAULT_N``); ``size``-pixel
    square images; ``difficulty`` in [0, 1] blends class cues and adds noise. With ``from_csv`` the given
    official metadata file (and its companions) is copied and only the images are generated, from its labels.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"synthetic: unknown layout {layout!r}; expected one of {LAYOUTS}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"synthetic: size must be an integer >= 16, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"synthetic: seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ValueError(f"synthetic: difficulty must lie in [0, 1], got {difficulty!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"synthetic: n must be a positive integer, got {n!r}")
    if from_csv is not None and n is not None:
        raise ValueError("synthetic: n cannot be combined with from_csv (the file fixes the rows)")
    root = Path(out)
    rng = np.random.default_rng([int(seed), LAYOUTS.index(layout)])
    if from_csv is not None:
        jobs = _WRITERS[layout].from_csv(rng, root, Path(from_csv))
    else:
        root.mkdir(parents=True, exist_ok=True)
        jobs = _WRITERS[layout].generate(rng, root, int(n if n is not None else DEFAULT_N[layout]))
    write_images(jobs, int(size), int(seed), float(difficulty), LAYOUTS.index(layout), f"synthetic {layout}",
                 progress)
    meta = (f"The metadata file(s) were copied from {from_csv}; only the images are synthetic."
            if from_csv is not None else "The metadata are synthetic as well, drawn to resemble the real ones.")
    (root / "README.txt").write_text(_README.format(
        layout=layout, seed=seed, size=size, difficulty=difficulty, meta=meta,
        src=f", from_csv={Path(from_csv).name}" if from_csv is not None else ""), encoding="utf-8")
    return root


def main(argv: list[str] | None = None) -> int:
    """The command line (``python -m skinlesion.data.synthetic``); returns the exit status."""
    from skinlesion.data.synthetic.cli import main as cli_main

    return cli_main(argv)
