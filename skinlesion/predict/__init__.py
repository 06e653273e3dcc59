"""Predict new cases with a trained run: ``python predict.py RUN_DIR --root DIR [--split NAME] [--out FILE]``.

Every checkpoint written during training carries an *inference payload* (:func:`inference_payload`, saved by
``MultiTaskModule.on_save_checkpoint``): the resolved config, tasks and classes, the image keys the network reads,
image size, normalisation, test-time views, the fitted metadata vectorizer and the inputs each branch needs. A
prediction therefore needs the run directory (or a checkpoint) and the new files only; nothing is refitted, and the
training data may be gone.

Input convention (one case = one row of the output):

* ``--root DIR``: every case of a directory in the official layout of the run's dataset (PAD-UFES-20
  ``metadata.csv`` + ``images/``; ISIC-2019 ``ISIC_2019_Training_Metadata.csv`` + ``ISIC_2019_Training_Input/``;
  derm7pt ``meta/meta.csv`` + ``images/``); label columns and index files are optional. ``--split`` keeps one
  official split (derm7pt's index files; for PAD-UFES-20 and ISIC-2019 the run's own partition in its folds.csv).
  Without a metadata file, PAD-UFES-20 and ISIC-2019 give one case per image file.
* or ``--metadata CSV`` with the dataset's official columns and ``--images`` files or directories: images are
  matched to rows by the dataset's image-id column (PAD-UFES-20 ``img_id``, ISIC-2019 ``image``, derm7pt ``derm``
  and ``clinic``); every image named on the command line must match a row; without ``--metadata``, one case per
  image (one-image models). Case ids: ``img_id``, ``image``, derm7pt ``case_num``.

The output has ``case_id``, ``inputs`` (what the row was predicted from, e.g. ``clinic+meta``), the
``prob/<output>/<task>/<class>`` columns of every branch of the network and of the run's reported output (for
chapter-5/6 runs the searched weighting, with the run's saved weights), named and ordered as the run's
``predictions/*.parquet``, then ``pred/<task>`` (the reported output's class code), ``missing`` and ``notes``; one
row per case, in the order of the metadata file (or of the image files).

A case that lacks an input (a metadata column absent, or in a row an empty field the training split never left
empty; an image not there) is predicted from the branches that do not need it (the reported column is then the mean
of their probabilities, as the ``all`` output is; the other branches' columns are empty), and ``inputs`` and
``missing`` say so; a case no branch can predict stops the run with one line naming the file, row and field, or is
left out with ``--skip-unusable`` (counted). Empty fields that were also empty in training rows are encoded as in
training (that is what the model learned). A category outside the fitted vocabulary is encoded as an all-zero block,
as during training, with a warning and a ``notes`` entry. A case id listed more than once is predicted once per row,
with a warning and a ``notes`` entry naming the other lines.

The package: :mod:`~skinlesion.predict.model` rebuilds the trained model from its checkpoint's payload;
:mod:`~skinlesion.predict.cases` reads new cases with the training readers (``labelled=False``: labels optional,
inputs may be absent) and records what each lacks; :mod:`~skinlesion.predict.inference` runs them through
training's evaluation dataset and test-time views and picks each case's output; :mod:`~skinlesion.predict.cli` is the
command line. It imports neither training nor :func:`skinlesion.load_run`.
"""
from __future__ import annotations

from skinlesion.payload import PAYLOAD_KEY, PAYLOAD_VERSION, inference_payload
from skinlesion.predict.cases import Cases, cases_from_root
from skinlesion.predict.cli import check_out, class_counts, default_workers, main, write
from skinlesion.predict.inference import predict
from skinlesion.predict.model import Predictor, load_predictor

__all__ = ["PAYLOAD_KEY", "PAYLOAD_VERSION", "Cases", "Predictor", "cases_from_root", "check_out", "class_counts",
           "default_workers", "inference_payload", "load_predictor", "main", "predict", "write"]
