"""python fusionm4net.py [data.root=...] [seed=...] [cluster=svm|logreg|mlp] [train.py overrides]  (see README.md)"""
from skinlesion.fusionm4net.cli import main

if __name__ == "__main__":
    main()
