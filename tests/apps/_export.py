"""Shared by the export and serve tests: train the DLRM app, then export it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from apps.dlrm.export import export_model
from apps.dlrm.loop import Session, build_session, fit, load_data
from apps.dlrm.runtime import distributed
from apps.dlrm.train import parse_args, resolve_plan


@contextlib.contextmanager
def trained_and_exported(argv: list[str], path: str | Path) -> Iterator[Session]:
    """Train the app on ``argv``, export it to ``path``; yield the session, in eval mode.

    The process group (one rank, or this rank under ``run_multiprocess``) stays up while
    the caller uses the session.
    """
    config = parse_args(argv)
    with distributed() as env:
        dataset = load_data(config)
        plan = resolve_plan(config, dataset, dataset.num_embeddings)
        session = build_session(config, env, dataset, plan)
        fit(session)
        export_model(session, path, num_dense=len(dataset.dense_names))
        session.pipeline.detach()
        session.model.eval()
        yield session
