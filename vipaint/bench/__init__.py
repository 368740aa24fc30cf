"""Benchmarks: several methods on the same prior, images, masks and seeds, then one table.

    python -m vipaint.bench --spec benchmarks/<name>.yaml        (`__main__`: the command line)

- `run`: the LightningCLI of a spec (`build_cli`) and the runs of its methods (`run_methods`).
- `features`: Inception features per image with their per-(method, dataset index) cache files.
- `report`: tables, summary and plots from the method folders (`report`).
- `bootstrap`: paired bootstrap of FID differences (`python -m vipaint.bench.bootstrap`).

The submodules are imported by name; this package imports none of them.
"""
