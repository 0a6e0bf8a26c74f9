"""Shared command-line arguments of the DLRM app tests: tiny synthetic data and model."""

from __future__ import annotations

import json

# Tiny synthetic data: 2,000 samples (1,600 train), three tables of 40, 60 and 200 ids.
DATA = [
    "--dataset",
    "synthetic",
    "--dataset_options",
    json.dumps({"num_samples": 2000, "num_embeddings": [40, 60, 200]}),
]
NO_MINIMUM = ["--min_table_rows", "0"]  # compress these tiny tables too (the default is 100)
SMALL = [
    *DATA,
    "--embedding_dim",
    "8",
    "--dense_arch_layer_sizes",
    "16,8",
    "--over_arch_layer_sizes",
    "16,1",
    "--batch_size",
    "32",
    "--log_every",
    "1000",
]
