"""python train.py [data=...] [model=...] [backbone=...] [key=value ...]  (see README.md)"""
from skinlesion.train import main

if __name__ == "__main__":
    main()
