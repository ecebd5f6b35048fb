"""Run ``python -m shared.partition``: print the label histogram of a partitioning."""

from shared.partition.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
