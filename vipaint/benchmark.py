"""`python -m vipaint.benchmark` is `python -m vipaint.bench` (the runner moved to the `vipaint.bench` package)."""

from vipaint.bench.__main__ import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
