"""Convert raw Criteo TSV to TorchRec's ``.npy`` format, streaming in bounded memory.

::

    python -m apps.criteo_to_npy --input /data/criteo/train.txt --out /data/criteo_npy
    python -m apps.criteo_to_npy --input /data/criteo_1tb --out /data/criteo_1tb_npy

The output equals ``python -m torchrec.datasets.scripts.npy_preproc_criteo``'s (Kaggle's
``test.txt``, without labels, is skipped); train on it with ``--dataset criteo-npy:OUT``.
The work is :func:`torchrec_lhf.data.criteo_npy.convert_criteo_tsv`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from apps.dlrm.runtime import setup_logging
from torchrec_lhf.cli import (
    add_config_flags,
    check_fields,
    check_output_path,
    config_from_args,
    run_command,
)
from torchrec_lhf.data.criteo_convert import convert_criteo_tsv


@dataclass(kw_only=True)
class CriteoToNpyConfig:
    """What to convert and where."""

    input: Path
    """A Criteo TSV (``train.txt``, ``day_N``, or a ``.gz`` of one), or a directory of them."""
    out: Path
    """The output directory of ``{stem}_{dense,sparse,labels}.npy``."""

    def __post_init__(self) -> None:
        check_fields(self)


def parse_args(argv: list[str] | None = None) -> CriteoToNpyConfig:
    """Parse the flags (:class:`CriteoToNpyConfig`'s fields)."""
    p = argparse.ArgumentParser(
        prog="python -m apps.criteo_to_npy", description=__doc__.split("\n")[0]
    )
    add_config_flags(p, CriteoToNpyConfig)
    return config_from_args(CriteoToNpyConfig, p.parse_args(argv))


def main(argv: list[str] | None = None) -> dict[str, int]:
    """Command-line entry point; returns ``{stem: rows}`` of the converted files."""
    config = parse_args(argv)
    check_output_path("--out", config.out, directory=True)
    return convert_criteo_tsv(config.input, config.out)


if __name__ == "__main__":
    setup_logging(0)
    run_command(main)  # a bad flag value: a usage error, no traceback
