"""Train mnist-sum: `accelerate launch train.py [--config FILE] [section.key=value ...]`."""

import sys

from mnist_sum.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
