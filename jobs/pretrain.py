"""Self-supervised pretraining on an unlabelled archive (the entry point `ray job submit` runs).

    python -m jobs.pretrain --input URI --out RUN [--config FILE] [--set key=value ...]
"""

import sys

from thyro.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
