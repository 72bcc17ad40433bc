"""Summarize a run folder again: python experiments/report.py FOLDER [--out DIR] [--no-figures]

Rewrites summary.md/.csv and figures/*.png of a run folder from its history so far and prints
the summary table (for a sweep of several series along an axis, e.g. a learning curve per model,
also tables of the best and final validation loss against it: jaxreg.axis_tables; for a
finished run with a proximal L1 variant, also each variant's fraction
of exact zeros in its hidden kernels: jaxreg.params.exact_zero_fractions); works on running,
interrupted and finished runs (an unfinished one is summarized from the epochs done, and says
so). Where the files go (jaxreg.report): into --out DIR if given; else into the run folder when
no run is writing it; else (a run is training into it) nowhere: the table is printed only.
--out DIR must be new, empty, or a folder report.py wrote before (its report.json lists the files);
a folder holding a symbolic link is never written.
Exit status: 0 done, 2 not a run folder or a folder it may not write (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"report.py: error: {message} (see --help)\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(
        prog="report.py",
        description="Summary table, summary.md/.csv and figures of a run folder (running, interrupted or finished).",
        epilog="Files go into --out DIR, else into the run folder unless a run is training into it (then the "
        "table is only printed). --out DIR: a new or empty folder, or one report.py wrote before. "
        "Exit status: 0 done, 2 not a run folder or a folder it may not write.",
    )
    p.add_argument("folder", help="a run folder written by experiments/sweep.py")
    p.add_argument("--out", help="write summary.md/.csv and figures/ here instead of into the run folder")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from jaxreg import report, summaries
    from jaxreg.config import SweepError
    from jaxreg.params import exact_zero_fractions, exact_zeros_table, has_proximal_l1

    try:
        made = report.report(args.folder, args.out, figures=not args.no_figures)
    except report.ReportError as e:  # not a run folder, a --out it may not write, a symbolic link
        print(f"report.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    run = made.run
    total = run.config.get("config", {}).get("epochs", "?")
    so_far = " (summary of the epochs so far)" if made.summaries and not run.finished else ""
    print(f"{run.folder}: {run.state}, {made.epochs}/{total} epochs{so_far}")
    if made.summaries:
        print("\n" + summaries.summary_table(made.summaries))
        print(summaries.summary_notes(divergence_threshold=run.divergence_threshold))
        tested = summaries.early_stopping_table(made.summaries)
        if tested:
            print("\n" + tested + "\n" + summaries.early_stopping_notes())
    axis = report.run_axis(run)
    if made.summaries and axis and len(set((axis[2] or {}).values())) > 1:
        from jaxreg.axis_tables import axis_table
        from jaxreg.specs import training_descriptions

        histories, _ = report.common_epochs(run.histories)
        for quantity, what in (("best", "best validation data loss"), ("final", "final validation data loss")):
            print(f"\n{what} against {axis[0]} (rows: series; mean ± std over seeds)\n")
            training = training_descriptions(run.config.get("variants", []))
            print(axis_table(histories, axis[1], axis[2], quantity, axis[0], training))
    if run.finished and has_proximal_l1(run.folder):
        try:
            print("\n" + exact_zeros_table(exact_zero_fractions(run.folder)))
        except SweepError as e:
            print(f"\nno exact-zero count: {e}")
    if made.written:
        print(f"Wrote {made.destination}: {', '.join(str(p.relative_to(made.destination)) for p in made.written)}")
    if made.note:
        print(made.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
