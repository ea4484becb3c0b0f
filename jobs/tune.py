"""Hyperparameter search on Ray Tune (the entry point `ray job submit` runs).

    python -m jobs.tune --config configs/tune.yaml [--data DIR_OR_CSV] [--out URI]
"""

import sys

from thyro.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
