"""Score an archive with a saved run (the entry point `ray job submit` runs).

    python -m jobs.score --model RUN_DIR_OR_URI --input URI --output URI [--config FILE]
"""

import sys

from thyro.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
