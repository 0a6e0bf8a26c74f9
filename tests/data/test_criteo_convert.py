"""The streaming TSV -> npy converter: equal to TorchRec's npy_preproc_criteo, block by block."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from torchrec.datasets.criteo import BinaryCriteoUtils

from torchrec_lhf.data import criteo, criteo_convert
from torchrec_lhf.data.criteo_convert import tsv_to_npy

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CRITEO_HEAD = SHARED_DATA / "criteo-kaggle-head10k" / "train.txt"
PARTS = ("dense", "sparse", "labels")


def _reference(tsv: Path, out: Path) -> dict[str, np.ndarray]:
    out.mkdir()
    paths = [str(out / f"ref_{p}.npy") for p in PARTS]
    BinaryCriteoUtils.tsv_to_npys(str(tsv), *paths)
    return {p: np.load(path) for p, path in zip(PARTS, paths)}


def _assert_same(ours_dir: Path, stem: str, ref: dict[str, np.ndarray]) -> None:
    for p in PARTS:
        ours = np.load(ours_dir / f"{stem}_{p}.npy")
        assert ours.dtype == ref[p].dtype and ours.shape == ref[p].shape, p
        assert np.array_equal(ours, ref[p]), p


@pytest.mark.filterwarnings("ignore:Local function is not supported by pickle")
def test_converter_equals_npy_preproc_criteo_on_the_criteo_head(tmp_path: Path) -> None:
    if not CRITEO_HEAD.is_file():
        pytest.skip(f"Criteo head not found at {CRITEO_HEAD} (the repo's sibling shared/data)")
    assert tsv_to_npy(CRITEO_HEAD, tmp_path / "ours") == 10_000
    _assert_same(tmp_path / "ours", "train", _reference(CRITEO_HEAD, tmp_path / "ref"))


@pytest.mark.filterwarnings("ignore:Local function is not supported by pickle")
def test_converter_streams_block_by_block(tmp_path: Path, monkeypatch) -> None:
    """Tiny blocks: no parse sees more than one block; the output is still the reference's."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(300):
        ints = [str(v) if v > -4 else "" for v in rng.integers(-5, 10**6, 13)]
        cats = [f"{v:08x}" if v % 7 else "" for v in rng.integers(0, 2**32, 26)]
        lines.append("\t".join([str(i % 2), *ints, *cats]))
    tsv = tmp_path / "day_0.gz"
    with gzip.open(tsv, "wt") as f:
        f.write("\n".join(lines) + "\n")
    plain = tmp_path / "day_0"
    plain.write_text("\n".join(lines) + "\n")
    block_bytes, parsed = 2048, []
    monkeypatch.setattr(criteo, "_BLOCK_BYTES", block_bytes)
    real_parse = criteo_convert._parse_block
    monkeypatch.setattr(
        criteo_convert,
        "_parse_block",
        lambda buf, *a: parsed.append(buf.size) or real_parse(buf, *a),
    )
    assert tsv_to_npy(tsv, tmp_path / "ours") == 300
    longest = max(len(line) for line in lines) + 1
    assert len(parsed) > 20 and max(parsed) <= block_bytes + longest
    assert sum(parsed) == sum(len(line) + 1 for line in lines)
    _assert_same(tmp_path / "ours", "day_0", _reference(plain, tmp_path / "ref"))


def test_converter_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        tsv_to_npy(tmp_path / "day_0", tmp_path)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty: no data lines"):
        tsv_to_npy(tmp_path / "empty", tmp_path)
    good = "\t".join(["1", *["3"] * 13, *["ab"] * 26])
    (tmp_path / "bad").write_text(good + "\n" + good.replace("\tab", "\tzz", 1) + "\n")
    with pytest.raises(ValueError, match="bad:2: column cat_0 must be a hex string"):
        tsv_to_npy(tmp_path / "bad", tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.npy"))  # nothing half-written is left
    (tmp_path / "big").write_text(good.replace("\t3", f"\t{2**31}", 1) + "\n")
    with pytest.raises(ValueError, match="big:1: an integer feature is outside int32"):
        tsv_to_npy(tmp_path / "big", tmp_path / "out")
