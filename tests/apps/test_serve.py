"""apps/serve.py: the exported scripted model scores requests as the trained model does."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from apps import serve
from tests.apps._export import trained_and_exported
from torchrec_lhf.cli import FlagError

OPTIONS = {"num_samples": 800, "num_embeddings": [30, 50, 120]}
ARGS = [
    "--dataset", "synthetic", "--dataset_options", json.dumps(OPTIONS), "--embedding_dim", "8",
    "--dense_arch_layer_sizes", "8,8", "--over_arch_layer_sizes", "8,1", "--batch_size", "64",
    "--log_every", "1000", "--min_table_rows", "0", "--epochs", "1",
]  # fmt: skip
COMPRESSIONS = {
    "none": [],
    "qr": ["--compression", "qr", "--fraction", "0.3"],  # learned-hash tables, H = 2
}


def _train_and_export(flags: list[str], path: Path) -> dict[int, float]:
    """Train, export to ``path``; the trained model's probabilities of the test rows."""
    with trained_and_exported([*ARGS, *flags], path) as session:
        rows = session.dataset.splits["test"]
        with torch.no_grad():
            logits = session.model(session.dataset.make_batch(rows))[1][1]
    return dict(zip(rows.tolist(), torch.sigmoid(logits).tolist()))


def _read_scores(path: Path) -> dict[int, float]:
    with open(path, newline="") as f:
        return {int(r["row"]): float(r["score"]) for r in csv.DictReader(f)}


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_served_scores_equal_the_trained_models(tmp_path: Path, compression: str) -> None:
    model = tmp_path / "model"
    trained = _train_and_export(COMPRESSIONS[compression], model)
    common = ["--model", str(model), "--dataset", "synthetic"]
    common += ["--dataset_options", json.dumps(OPTIONS), "--batch_size", "7"]
    for dtype, atol in (("fp32", 1e-6), ("int8", 2e-2)):
        out = tmp_path / f"scores_{dtype}.csv"
        scores = serve.main([*common, "--dtype", dtype, "--out", str(out)])
        served = _read_scores(out)
        assert list(served) == list(trained)  # every test row, in split order
        assert torch.allclose(torch.tensor(list(served.values())), scores, atol=1e-8)
        got, want = torch.tensor(list(served.values())), torch.tensor(list(trained.values()))
        torch.testing.assert_close(got, want, rtol=0, atol=atol)
        if dtype == "int8":
            assert not torch.equal(got, want)  # the int8 tables really are quantized


def test_serve_rejects_requests_of_another_model(tmp_path: Path) -> None:
    model = tmp_path / "model"
    _train_and_export([], model)
    other = json.dumps({"num_samples": 100, "num_embeddings": [30, 50]})
    argv = ["--model", str(model), "--dataset", "synthetic", "--dataset_options", other]
    with pytest.raises(FlagError, match=r"--dataset 'synthetic': requests have sparse "
                       r"features \['cat_0', 'cat_1'\], the model .* takes \['cat_0', 'cat_1', "
                       r"'cat_2'\]; expected requests of the data"):  # fmt: skip
        serve.main([*argv, "--out", str(tmp_path / "x.csv")])
    dense = json.dumps({**OPTIONS, "num_dense": 5})  # (before: a traceback, not a usage error)
    argv_dense = ["--model", str(model), "--dataset", "synthetic", "--dataset_options", dense]
    with pytest.raises(FlagError, match=r"requests have 5 dense features, the model .* takes 4"):
        serve.main([*argv_dense, "--out", str(tmp_path / "x.csv")])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        serve.parse_args([*argv, "--out", "x.csv", "--batch_size", "0"])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 2.5"):
        serve.ServeConfig(model=str(model), dataset="synthetic", out="x.csv", batch_size=2.5)
    with pytest.raises(ValueError, match="unknown dataset 'nosuch'"):
        serve.parse_args(["--model", str(model), "--dataset", "nosuch", "--out", "x.csv"])
    assert not (tmp_path / "x.csv").exists()


def test_a_model_directory_without_the_model_is_a_usage_error(tmp_path: Path) -> None:
    out = ["--dataset", "synthetic", "--out", str(tmp_path / "x.csv")]
    with pytest.raises(FlagError, match=r"--model '.*nosuch': no such directory; expected"):
        serve.main(["--model", str(tmp_path / "nosuch"), *out])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlagError, match=r"no model_fp32.pt in it; .* \(--dtype fp32\)"):
        serve.main(["--model", str(tmp_path / "empty"), "--dtype", "fp32", *out])
    (tmp_path / "file").write_text("")
    with pytest.raises(FlagError, match="not a directory"):
        serve.main(["--model", str(tmp_path / "file"), *out])
    assert not (tmp_path / "x.csv").exists()
