"""Write Criteo-1TB-shaped synthetic ``day_{N}_{dense,sparse,labels}.npy`` files.

::

    python -m apps.make_synthetic_criteo --out runs/criteo_synth --scale 0.001 --days 3 \
        --rows_per_day 100000
    python -m apps.pipeline --dataset criteo-npy:runs/criteo_synth ...

The flags are :class:`~torchrec_lhf.data.synthetic_criteo.SyntheticCriteoConfig`'s fields
and ``--out``; the work is :func:`~torchrec_lhf.data.synthetic_criteo.write_synthetic_criteo`.
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
from torchrec_lhf.data.synthetic_criteo import SyntheticCriteoConfig, write_synthetic_criteo


@dataclass(kw_only=True)
class OutputConfig:
    """Where the files go."""

    out: Path
    """The output directory (created if missing; files of the same names are replaced)."""

    def __post_init__(self) -> None:
        check_fields(self)


def parse_args(argv: list[str] | None = None) -> tuple[SyntheticCriteoConfig, OutputConfig]:
    """Parse the flags into validated configs.

    Raises:
        ValueError: a bad value (e.g. ``--days 1``), named in the message.
    """
    p = argparse.ArgumentParser(
        prog="python -m apps.make_synthetic_criteo", description=__doc__.split("\n")[0]
    )
    add_config_flags(p, SyntheticCriteoConfig)
    add_config_flags(p.add_argument_group("output"), OutputConfig)
    args = p.parse_args(argv)
    return config_from_args(SyntheticCriteoConfig, args), config_from_args(OutputConfig, args)


def main(argv: list[str] | None = None) -> list[int]:
    """Command-line entry point; returns the table heights."""
    config, output = parse_args(argv)
    check_output_path("--out", output.out, directory=True)
    return write_synthetic_criteo(output.out, config)


if __name__ == "__main__":
    setup_logging(0)
    run_command(main)  # a bad flag value: a usage error, no traceback
