"""Click datasets for DLRM training: MovieLens-100K, Criteo TSV, CSV, synthetic.

Every loader returns a :class:`RecDataset` (in memory, deterministic train / val /
test splits) whose :meth:`RecDataset.batches` yields per-rank TorchRec ``Batch``es.
:func:`load_dataset` parses the app's ``--dataset`` spec.
"""

from torchrec_lhf.data.criteo import load_criteo_tsv
from torchrec_lhf.data.csv import load_csv
from torchrec_lhf.data.dataset import DatasetUnavailableError, RecDataset
from torchrec_lhf.data.movielens import load_movielens_100k
from torchrec_lhf.data.registry import (
    check_dataset_files,
    check_dataset_spec,
    dataset_names,
    load_dataset,
    register_dataset,
)
from torchrec_lhf.data.synthetic import SyntheticConfig, make_synthetic, synthetic_groups

__all__ = [
    "DatasetUnavailableError",
    "RecDataset",
    "SyntheticConfig",
    "check_dataset_files",
    "check_dataset_spec",
    "dataset_names",
    "load_criteo_tsv",
    "load_csv",
    "load_dataset",
    "load_movielens_100k",
    "make_synthetic",
    "register_dataset",
    "synthetic_groups",
]
