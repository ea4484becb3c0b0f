"""The study's protocol on Ray (the entry point `ray job submit` runs).

    python -m jobs.experiment --config configs/demo.yaml [--data DIR_OR_CSV] [--out URI]
"""

import sys

from thyro.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
