"""Figures of a width x L2 x dropout grid: python experiments/grid_figures.py RUN [--out DIR]

For a run such as `--preset grid` (every width x L2 penalty x dropout rate, several seeds): the
figures the run itself writes (jaxreg.run_figures decides, for the sweep and report.py alike):
grid_loss_heatmaps.png (L2 x dropout, one panel per width, best and final validation data loss),
grid_main_effects.png and grid_interactions.png (jaxreg.grid_plots); and it prints the ten best
configurations by best and by final validation data loss, mean ± std over seeds, and which are
indistinguishable from the best (paired over seeds), as the run's summary.md holds them
(jaxreg.summaries.top_configurations_sections). Works on running (epochs every variant has) and
finished runs; writes into RUN/figures/ unless --out is given. experiments/report.py makes the
summary and these figures together.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder written by experiments/sweep.py")
    p.add_argument("--out", type=Path, help="the folder to write into (default RUN/figures)")
    args = p.parse_args(argv)
    from jaxreg import load_run, report, run_figures
    from jaxreg.specs import training_descriptions
    from jaxreg.summaries import ranks_configurations, top_configurations_sections

    run = load_run(args.run)
    histories, epochs = report.common_epochs(run.histories)
    variants = run.config.get("variants", [])
    training = training_descriptions(variants)
    grid = run_figures.run_grid(variants, list(histories), training)
    if grid is None:
        print(
            f"grid_figures.py: {args.run} is not a full width x L2 x dropout grid of (w, w) models (every cell "
            "once, two values of each factor at least, one optimizer and schedule)",
            file=sys.stderr,
        )
        return 2
    out = args.out or Path(args.run) / "figures"
    name = run.config.get("config", {}).get("name", "run")
    paths = run_figures.make_figures(histories, out, training=training, grid=grid, title=f"{name}, {epochs} epochs")
    if ranks_configurations(histories):
        print(top_configurations_sections(histories))
    print("Wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
