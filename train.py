"""Train mnist-sum: `accelerate launch train.py [--config FILE] [section.key=value ...]` (as `mnist-sum-train`)."""

import sys

from mnist_sum.commands import train_main

if __name__ == "__main__":
    sys.exit(train_main())
