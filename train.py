"""Train mnist-sum: `accelerate launch train.py [--config FILE] [section.key=value ...]` (as `mnist-sum-train`)."""

from mnist_sum.commands import train_cli

if __name__ == "__main__":
    train_cli()
