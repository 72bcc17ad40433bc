"""Measures IMDB loading: cold (read + tokenize + encode) and cached load times, memory, review sizes.

    python benchmarks/data_load.py --data ../shared/data/aclImdb_v1_labeled.tar.gz --repeats 3

Prints a Markdown table. Cold loads use a fresh temporary cache directory each time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxreg.data import DEFAULT_NUM_WORDS, load_imdb

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aclImdb_v1_labeled.tar.gz"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("JAXREG_DATA") or DEFAULT_DATA))
    parser.add_argument("--repeats", type=int, default=1, help="cold loads to take the median of")
    parser.add_argument("--num-words", type=int, default=DEFAULT_NUM_WORDS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cold = []
        for i in range(args.repeats):
            seconds, ds = timed(
                lambda: load_imdb(args.data, num_words=args.num_words, cache_dir=Path(tmp) / f"cold{i}")
            )
            cold.append(seconds)
        cache_dir = Path(tmp) / f"cold{args.repeats - 1}"
        cached = [
            timed(lambda: load_imdb(args.data, num_words=args.num_words, cache_dir=cache_dir))[0] for _ in range(5)
        ]
        cache_bytes = sum(f.stat().st_size for f in cache_dir.glob("*.npz"))

    splits = (ds.train, ds.validation)
    n_reviews = sum(len(s) for s in splits)
    lengths = np.concatenate([s.x.lengths for s in splits])
    encoded = sum(s.x.nbytes + s.y.nbytes for s in splits)
    dense = n_reviews * ds.num_words * 8
    print(f"{ds.source}, num_words={ds.num_words:,}, {n_reviews:,} reviews\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| cold load (median of {args.repeats}) | {statistics.median(cold):.2f} s |")
    print(f"| cached load (median of 5) | {statistics.median(cached) * 1e3:.0f} ms |")
    print(f"| encoded train+test (CSR, int16 indices, labels) | {encoded / 1e6:.1f} MB |")
    print(f"| dense float64 train+test (the book's) | {dense / 1e9:.1f} GB |")
    print(f"| cache file | {cache_bytes / 1e6:.1f} MB |")
    print(f"| distinct indices per review (incl. START/OOV), mean | {lengths.mean():.1f} |")
    print(f"| distinct indices per review, max | {lengths.max()} |")
    print(f"| density of the multi-hot matrix | {lengths.mean() / ds.num_words:.2%} |")


if __name__ == "__main__":
    main()
