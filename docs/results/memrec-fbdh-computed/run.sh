#!/bin/bash
# The sweeps of "MEM-REC and FBDH computed from the id" (docs/RESULTS.md): memrec and fbdh
# at the headline's byte budgets and seeds. Run from a checkout's root, once at this
# commit (OUT = new) and once at 6d1bf96 (OUT = old; e.g. a git worktree, with
# TORCH_EXTENSIONS_DIR of its own), then `python compare.py` here pairs them by seed.
#   usage: bash docs/results/memrec-fbdh-computed/run.sh OUT
set -e
OUT=${1:?usage: run.sh OUT}
OMP_NUM_THREADS=1 python -m benchmarks.quality --dataset movielens-100k --methods memrec,fbdh --bytes 0.5,0.25,0.1,0.05,0.01 --min_table_rows 0 --seeds 10 --out "$OUT/movielens"
OMP_NUM_THREADS=1 python -m benchmarks.quality --dataset criteo-tsv:../shared/data/criteo-kaggle-head10k/train.txt --batch_size 256 --methods memrec,fbdh --bytes 0.1,0.01 --min_table_rows 0 --seeds 30 --out "$OUT/criteo-head"
# the scale case (at this commit and at 6d1bf96, OUT as above; compare.py in scale/):
#   for f in 0.1 0.01; do for s in 0 1 2; do OMP_NUM_THREADS=1 python -m benchmarks.rare_ids --scale 0.1 --fraction $f --budget bytes --seed $s --methods fbdh,memrec --json > OUT/peers_f${f}_s$s.json; done; done
