"""Split-half reliability of the teacher's values over each table's head (RESULTS.md, "The
frequency-only plan as a third candidate"). Run from the repository root:

    PYTHONPATH=. python docs/results/select3/reliability.py DATA SEED OUT

``DATA`` is ``movielens``, ``criteo`` (the Criteo head in ../shared/data) or ``scale`` (the
rare-ids issue's synthetic case). Trains three teachers as the sweeps do (dim 4, one epoch):
on the whole training split, on its first half (``apps.teacher --train_window 0.5``) and on
its second half, under ``OUT/{full,a,b}`` (kept: a rerun reads them back). Per table with at
least 20 head ids (seen at least 10 times in the whole split), prints the Spearman
correlation of the two halves' 1-D values (the build's PCA projection, sign ignored) over
those ids, and the R^2 of the second half's values fitted linearly on the first's.
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch

from apps import teacher
from torchrec_lhf.clustering.projection import project
from torchrec_lhf.hash_build.artifact import TeacherArtifact

HEAD_MIN_COUNT = 10
SCALE = {"num_samples": 2000000, "num_dense": 13, "num_groups": 3, "group_scale": 0.7,
         "num_embeddings": [4000000, 3906, 1730, 742, 2026, 3, 712, 154, 6, 4000000, 306796,
                            40528, 3, 221, 1194, 16, 3, 98, 3, 4000000, 4000000, 4000000, 59015,
                            1297, 11, 4]}  # fmt: skip
DATA = {
    "movielens": ["--dataset", "movielens-100k"],
    "criteo": ["--dataset", "criteo-tsv:../shared/data/criteo-kaggle-head10k/train.txt",
               "--batch_size", "256"],
    "scale": ["--dataset", "synthetic", "--dataset_options", json.dumps(SCALE),
              "--batch_size", "4096"],
}  # fmt: skip


def second_half(dataset, train_window):
    rows = dataset.splits["train"]
    return dataclasses.replace(
        dataset, splits={**dataset.splits, "train": rows[rows.numel() // 2 :]}
    )


def ranks(x):
    r = torch.empty_like(x)
    r[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
    return r


def main(data, seed, out):
    first_half = teacher.window_dataset
    arts = {}
    for part in ("full", "a", "b"):
        argv = [*DATA[data], "--epochs", "1", "--seed", str(seed), "--out", f"{out}/{part}"]
        argv += [] if part == "full" else ["--train_window", "0.5"]
        teacher.window_dataset = second_half if part == "b" else first_half
        if not Path(f"{out}/{part}/manifest.json").is_file():
            teacher.run(teacher.parse_args(argv))
        arts[part] = TeacherArtifact.load(f"{out}/{part}")
    tables = {}
    for t in arts["full"].table_names:
        counts = arts["full"].counts[t]
        head = (counts >= HEAD_MIN_COUNT).nonzero().squeeze(1)
        if head.numel() < 20:
            continue
        ea, eb = (arts[p].embeddings[t][head].float() for p in ("a", "b"))
        pa, pb = project(ea)[0], project(eb)[0]
        rho = torch.corrcoef(torch.stack([ranks(pa), ranks(pb)]))[0, 1].abs()
        x = torch.cat([ea, torch.ones(len(ea), 1)], 1)
        fit = x @ torch.linalg.lstsq(x, eb).solution
        r2 = 1 - ((eb - fit) ** 2).sum() / ((eb - eb.mean(0)) ** 2).sum()
        tables[t] = {"ids": counts.numel(), "head": head.numel(),
                     "rho": round(float(rho), 3), "r2": round(float(r2), 3)}  # fmt: skip
    print(json.dumps({"data": data, "seed": seed, "tables": tables}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
