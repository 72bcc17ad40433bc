#!/usr/bin/env bash
# One prepared GPU check (run from the repo root on a machine with a CUDA jax):
# the book preset with 1 and with 16 seeds, then the scaling benchmark. Writes to $OUT.
# Needs: DATA (aclImdb archive path) and, optionally, JAXREG_CACHE with its encoded cache.
set -u
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
for seeds in 1 16; do
  start=$(date +%s.%N)
  python3 experiments/sweep.py --data "$DATA" --seeds "$seeds" --out "/tmp/book_s$seeds" \
    --no-figures --no-progress --checkpoint-seconds 600 --overwrite > "$OUT/book_s$seeds.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "book preset, $seeds seed(s): exit $rc, wall $(python3 -c "print(f'{$end - $start:.1f}')") s" | tee -a "$OUT/summary.txt"
  tail -n 14 "$OUT/book_s$seeds.log"
done
python3 benchmarks/scaling.py --data "$DATA" --quick --sections limits,variants16,variants1024,seeds,width \
  --json "$OUT/scaling.json" 2>&1 | tee "$OUT/scaling.txt" | tail -n 60
