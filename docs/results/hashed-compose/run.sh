#!/bin/bash
# Reproduces docs/RESULTS.md, "A learned hash beside a computed one" (2026-12-04): the
# scratch compose mode "hashed" is not in the library, so this applies scratch.patch to a
# worktree of HEAD and runs the sweeps there. Usage: bash docs/results/hashed-compose/run.sh [OUT]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
out=$(realpath -m "${1:-$root/runs/hashed-compose}")
tree=$(mktemp -d)/hashed
git -C "$root" worktree add --detach "$tree" HEAD
trap 'git -C "$root" worktree remove --force "$tree"' EXIT
git -C "$tree" apply "$here/scratch.patch"
cd "$tree"
py="$root/.venv/bin/python"
data="$root/../shared/data/criteo-kaggle-head10k/train.txt"
export OMP_NUM_THREADS=1
# HASHED_SHARE (hash 1's share of the rows) is read when a plan is built; plans are cached
# by variant name, so lhf-hashed25's are built first under its share, and the second sweep
# of each data set (every method; the cached runs skipped) writes the results of all
HASHED_SHARE=0.25 "$py" -m benchmarks.quality --dataset movielens-100k --methods lhf-hashed25 --fractions 0.1 --min_table_rows 0 --seeds 10 --out "$out/movielens"
"$py" -m benchmarks.quality --dataset movielens-100k --methods none,lhf-headtail,lhf-h2-headtail-now,lhf-hashed,lhf-hashed25 --fractions 0.1 --min_table_rows 0 --seeds 10 --out "$out/movielens"
HASHED_SHARE=0.25 "$py" -m benchmarks.quality --dataset "criteo-tsv:$data" --batch_size 256 --methods lhf-hashed25 --fractions 0.1 --min_table_rows 0 --seeds 30 --out "$out/criteo-head"
"$py" -m benchmarks.quality --dataset "criteo-tsv:$data" --batch_size 256 --methods none,lhf-headtail,lhf-hashed,lhf-hashed25,modulo,qr --fractions 0.1 --min_table_rows 0 --seeds 30 --out "$out/criteo-head"
for d in movielens criteo-head; do
  "$py" -m benchmarks.paired --baseline lhf-headtail "$out/$d/results.json"
done
