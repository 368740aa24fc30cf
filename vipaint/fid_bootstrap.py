"""`python -m vipaint.fid_bootstrap` is `python -m vipaint.bench.bootstrap` (the paired FID bootstrap moved to
the `vipaint.bench` package)."""

from vipaint.bench.bootstrap import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
