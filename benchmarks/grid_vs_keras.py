"""The grid preset (1,008 models) against Keras 3: a sample timed side by side, Keras extrapolated to the grid.

Training all 1,008 models of `--preset grid` one after the other in Keras would take hours, so
this times a sample of the grid's configurations in Keras 3 (JAX backend, dense float32
input, model.fit as benchmarks/vs_keras.py does it) and the same sample in jaxreg
(variants.run, all at once), in one run, each in its own process. The default sample is one
configuration per width (L2 1e-3, dropout 0.5): a model's cost in Keras depends on its width;
L2 and dropout change it little (check with --l2/--dropout).

Extrapolation: Keras trains models one after the other, so the grid would take, per width,
(models of that width) x (build/compile overhead + 20 x its median epoch); summed over the
widths. The jaxreg side of the grid is the preset run itself: pass its folder (--grid-run) and
its measured wall time (status.json) is set beside the extrapolation.

    python benchmarks/grid_vs_keras.py --epochs 3 --grid-run runs/grid/LATEST_FOLDER
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))

import _common as C  # noqa: E402
import vs_keras  # noqa: E402
from presets import grid  # noqa: E402


def sample_names(l2: float, dropout: float) -> list[str]:
    """One grid configuration per width, with the given L2 and dropout."""
    return [grid.variant_name(w, l2, dropout) for w in grid.WIDTHS]


def keras_grid_seconds(keras_models: dict, epochs: int) -> tuple[float, list[list]]:
    """Keras' extrapolated time for the whole grid, and a row per width (sampled model, per-model seconds, models)."""
    per_width = len(grid.L2) * len(grid.DROPOUT) * grid.SEEDS
    total, rows = 0.0, []
    for name, m in keras_models.items():
        one_model = m["overhead_s"] + epochs * m["median_epoch_s"]
        total += per_width * one_model
        rows.append(
            [name, C.fmt(m["median_epoch_s"], ".2f"), C.fmt(m["overhead_s"], ".1f"), f"{one_model:.1f}", per_width]
        )
    return total, rows


def grid_run_seconds(folder: Path | None) -> float | None:
    """The wall time a finished grid run recorded (status.json 'seconds'), or None."""
    if folder is None:
        return None
    status = json.loads((folder / "status.json").read_text())
    if status.get("state") != "finished":
        raise SystemExit(f"{folder} is not a finished run (state {status.get('state')!r})")
    if status.get("resumed_from_epoch"):  # its seconds count only the part after the resume
        raise SystemExit(f"{folder} was resumed: its status.json times only the resumed part; give --grid-seconds")
    return float(status["seconds"])


def report(args, keras: dict, jaxreg: dict, grid_seconds: float | None) -> str:
    grid_epochs = grid.get_config().epochs
    keras_total, rows = keras_grid_seconds(keras["models"], grid_epochs)
    lines = [
        f"# The grid preset against Keras 3 ({C.describe_machine(keras['machine'])})\n",
        f"Sample: {', '.join(args.models)}; {args.epochs} epochs each, batch {vs_keras.BATCH_SIZE}, RMSprop(1e-3).\n",
        C.markdown_table(
            ["sampled model (Keras)", "median epoch s", "overhead s", f"one model, {grid_epochs} epochs, s", "models"],
            rows,
        ),
        "",
        f"- Keras 3 on the sample: {keras['train_wall_s']:.1f} s of training ({keras['process_wall_s']:.1f} s process)",
        f"- jaxreg on the same sample, all at once: {jaxreg['train_wall_s']:.1f} s of training "
        f"({jaxreg['process_wall_s']:.1f} s process); ratio Keras/jaxreg "
        f"{keras['train_wall_s'] / jaxreg['train_wall_s']:.1f}x",
        f"- Keras 3 extrapolated to the grid ({len(grid.variants()) * grid.SEEDS} models, {grid_epochs} epochs): "
        f"{keras_total / 3600:.1f} h",
    ]
    if grid_seconds is not None:
        lines.append(
            f"- jaxreg, the whole grid preset measured ({args.grid_run or 'given'}): {grid_seconds / 60:.1f} min; "
            f"Keras extrapolated / jaxreg measured: {keras_total / grid_seconds:.0f}x"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_data_args(parser)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per sampled model (default 3)")
    parser.add_argument("--l2", type=float, default=1e-3, help="the sample's L2 strength (default 1e-3)")
    parser.add_argument("--dropout", type=float, default=0.5, help="the sample's dropout rate (default 0.5)")
    parser.add_argument(
        "--grid-run", type=Path, help="a finished `--preset grid` run folder: its wall time is reported"
    )
    parser.add_argument(
        "--grid-seconds", type=float, help="the grid preset's wall time, measured otherwise (e.g. time)"
    )
    parser.add_argument("--json", type=Path, help="write both children's results here")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the median epoch leaves out the first)")
    grid_seconds = args.grid_seconds if args.grid_seconds is not None else grid_run_seconds(args.grid_run)
    args.models = sample_names(args.l2, args.dropout)
    # what vs_keras' children read from their command line
    args.seed, args.cache_dir, args.keras_dtype, args.bucket_epochs = 0, args.cache_dir, "float32", 0
    args.jaxreg_product, args.jaxreg_optimizer = "auto", "keras3"
    results = {fw: vs_keras.launch(fw, args) for fw in ("keras", "jaxreg")}
    failed = {fw: r["error"] for fw, r in results.items() if "error" in r}
    if failed:
        raise SystemExit(f"a child failed: {failed}")
    C.write_json(args.json, results)
    print(report(args, results["keras"], results["jaxreg"], grid_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
