"""Classify new text with a trained model: python experiments/predict.py RUN TEXT [TEXT ...] [--variant NAME] [--seed N]

RUN: a run folder written by experiments/sweep.py, or runs/<preset>, whose LATEST file names the newest
run. Prints one line per text: its probability of label 1 (on IMDB: positive), the label it gets
(positive when the probability is above 0.5, else negative) and the text. The texts are encoded with
the run's vocabulary.json and the model is applied without dropout (jaxreg.predict).
Exit status: 0 done, 2 bad input (one line on stderr: no run folder, no vocabulary, an unknown variant or seed).
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_BAD_INPUT = 2
SHOWN_CHARACTERS = 70  # of a long text, in its line


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"predict.py: error: {message} (see --help)\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(
        prog="predict.py",
        description="Each text's probability of label 1 (IMDB: a positive review) from a run folder's trained model.",
        epilog="Exit status: 0 done, 2 bad input (no run folder, no vocabulary.json, an unknown variant or seed).",
    )
    p.add_argument("run", help="a run folder, or runs/<preset> (the run its LATEST file names)")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="a review to classify")
    p.add_argument("--variant", help="the variant whose model answers (default: the run's first)")
    p.add_argument("--seed", type=int, default=0, help="which seed's model (default 0)")
    p.add_argument(
        "--which", choices=("best", "final"), default="best", help="the best epoch's parameters (default) or the last's"
    )
    return p.parse_args(argv)


def line(probability: float, text: str) -> str:
    """One text's line: probability, label, and the text on one line (shortened when long)."""
    label = "positive" if probability > 0.5 else "negative"
    shown = text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."
    return f"{probability:.4f}  {label}  {json.dumps(shown, ensure_ascii=False)}"


def main(argv=None) -> int:
    args = parse_args(argv)
    from jaxreg.errors import SweepError
    from jaxreg.predictions import predict

    try:
        probabilities = predict(args.run, args.texts, variant=args.variant, seed=args.seed, which=args.which)
    except SweepError as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for probability, text in zip(probabilities, args.texts):
        print(line(float(probability), text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
