"""Train and evaluate one model on one split: `python -m jobs.train --config FILE --out DIR`."""

import sys

from thyro.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
