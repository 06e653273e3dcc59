"""python predict.py CKPT_OR_RUN_DIR --images FILES_OR_DIRS... [--metadata CSV] [--out FILE]  (docs/evaluation.md)"""
from skinlesion.predict import main

raise SystemExit(main())
