"""Figures and table of a width x L2 x dropout grid: python experiments/grid_figures.py RUN [--out DIR]

For a run such as `--preset grid` (every width x L2 penalty x dropout rate, several seeds):
grid_loss_heatmaps.png (L2 x dropout, one panel per width, best and final validation data
loss), grid_main_effects.png and grid_interactions.png (jaxreg.grid_plots), and grid_top.md:
the ten best configurations by best and by final validation data loss, mean ± std over seeds,
and which are indistinguishable from the best (paired over seeds, within 2 standard errors;
jaxreg.summaries.top_configurations_table), also printed. Works on running (epochs every
variant has) and finished runs; writes into RUN/figures/ unless --out is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TOP_TABLE = "grid_top.md"


def top_tables(histories: dict, n: int = 10) -> str:
    """The Markdown of grid_top.md: the `n` best configurations by best and by final validation data loss."""
    from jaxreg.summaries import TIE_STANDARD_ERRORS, top_configurations_table

    note = (
        f"Mean ± std over seeds; paired difference: per seed, the configuration minus the best, mean ± std; "
        f"indistinguishable: that mean is within {TIE_STANDARD_ERRORS:g} standard errors (std / sqrt(seeds)) of 0."
    )
    sections = [
        f"## The {n} best configurations by {which} validation data loss\n\n"
        + top_configurations_table(histories, which, n)
        for which in ("best", "final")
    ]
    return "\n\n".join(sections) + f"\n\n{note}\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder written by experiments/sweep.py")
    p.add_argument("--out", type=Path, help="the folder to write into (default RUN/figures)")
    args = p.parse_args(argv)
    from jaxreg import grid_plots, load_run, report
    from jaxreg.specs import training_descriptions

    run = load_run(args.run)
    histories, epochs = report.common_epochs(run.histories)
    factors = grid_plots.grid_factors([v for v in run.config.get("variants", []) if v["name"] in histories])
    if not grid_plots.is_grid(factors):
        print(
            f"grid_figures.py: {args.run} does not vary width, L2 and dropout (two values each at least)",
            file=sys.stderr,
        )
        return 2
    out = args.out or Path(args.run) / "figures"
    name = run.config.get("config", {}).get("name", "run")
    training = training_descriptions(run.config.get("variants", []))
    try:
        paths = grid_plots.make_grid_figures(
            histories, factors, out, title=f"{name}, {epochs} epochs", training=training
        )
    except ValueError as e:  # variants that differ in optimizer or schedule
        print(f"grid_figures.py: {args.run}: {e}", file=sys.stderr)
        return 2
    tables = top_tables(histories)
    (out / TOP_TABLE).write_text(f"# {name}, {epochs} epochs\n\n{tables}")
    print(tables)
    print("Wrote " + ", ".join(str(p) for p in [*paths, out / TOP_TABLE]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
