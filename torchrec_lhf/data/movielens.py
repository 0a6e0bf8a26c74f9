"""MovieLens-100K -> :class:`RecDataset`, obtained from PyPI and cached per user.

Shape legend: ``N`` ratings (100,000), ``U`` users (943), ``I`` items (1,682),
``G`` genre ids of all items together.

Source: the wheel of ``recbole==1.2.1`` ships MovieLens-100K as RecBole atomic
files (``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}``, tab-separated,
header ``name:type``). ``pip download --no-deps`` fetches the wheel (never installs
it), its sha256 is checked against :data:`WHEEL_SHA256`, and the three files are read
out of the zip and cached under ``$XDG_CACHE_HOME/torchrec_lhf/movielens-100k/``
(default ``~/.cache/...``). The
data is under GroupLens terms (research use, cite, do not redistribute), so it is
never written into the repository. Each load checks the cached files against
:data:`FILE_SHA256` and fetches them again if one was damaged; the files are text, read
as text: nothing is ever unpickled.

Features (one table each): ``user`` (user_id - 1), ``item`` (item_id - 1),
``age`` (7 buckets: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+), ``gender``,
``occupation`` (21), ``zip`` (the full 5-character zip code, by frequency),
``genres`` (multi-hot: 1 to 6 of 19 genres, alphabetical), ``year`` (release
year, by frequency; the two items without a usable year share an "unknown" id).
Dense: ``age / 100`` and ``(release_year - 1900) / 100`` (median year if unknown).
Label: ``rating >= 4`` (55 % positive).

Splits (``split=``): ``"random"`` (default, like the u1..u5 splits GroupLens ships): a
permutation seeded with ``split_seed``, first 80 % train, next 10 % val, last 10 % test;
``"time"``: ratings sorted by timestamp (ties by file order), then cut the same way (harder:
the test ratings come after every training rating and hold more unseen users and items).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch

from torchrec_lhf._io import atomic_write, file_sha256
from torchrec_lhf.data._util import (
    feature_major_to_sample_major,
    frequency_encode,
    gather_segments,
    seeded_permutation,
    split_by_order,
)
from torchrec_lhf.data.dataset import DatasetUnavailableError, RecDataset

logger = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
_WHEEL_DIR = "recbole/dataset_example/ml-100k/"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
"""sha256 of ``recbole-1.2.1-py3-none-any.whl`` from PyPI (``pip download`` + ``sha256sum``)."""
FILE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
"""sha256 of each file in that wheel: the cache is checked against these on every load."""
AGE_BUCKETS = (18, 25, 35, 45, 50, 56)
"""Lower edges of age buckets 1..6; bucket 0 is under 18 (MovieLens-1M's buckets)."""
FEATURES = ("user", "item", "age", "gender", "occupation", "zip", "genres", "year")
POSITIVE_RATING = 4.0
SPLITS = ("random", "time")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/torchrec_lhf/movielens-100k`` (``~/.cache`` without XDG)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "torchrec_lhf" / "movielens-100k"


def _download_wheel(dest: Path) -> Path:
    """``pip download`` the recbole wheel (no dependencies, never installed) into ``dest``.

    Returns:
        The path of the downloaded wheel.

    Raises:
        DatasetUnavailableError: pip cannot be run or cannot reach the index.
    """
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--timeout", "20", "--retries", "1",
        "-d", str(dest), f"recbole=={RECBOLE_VERSION}",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DatasetUnavailableError(f"MovieLens-100K: could not run pip download: {e}") from e
    wheels = sorted(dest.glob("recbole-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DatasetUnavailableError(
            f"MovieLens-100K: `pip download recbole=={RECBOLE_VERSION}` failed "
            f"(is PyPI reachable?): {' | '.join(tail)}"
        )
    return wheels[0]


def _extract_verified(wheel: Path) -> dict[str, bytes]:
    """Check ``wheel`` against :data:`WHEEL_SHA256` and read the three files out of it.

    Raises:
        ValueError: the wheel or a file in it does not match its pinned sha256; the wheel
            is deleted.
        DatasetUnavailableError: the wheel is not a zip or lacks a file.
    """
    got = file_sha256(wheel)
    if got != WHEEL_SHA256:
        wheel.unlink(missing_ok=True)
        raise ValueError(
            f"MovieLens-100K: downloaded {wheel.name} has sha256 {got}, expected {WHEEL_SHA256} "
            f"(pinned for recbole=={RECBOLE_VERSION}); the index served a different file, "
            "which was deleted"
        )
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = {name: zf.read(_WHEEL_DIR + name) for name in _FILES}
    except (KeyError, zipfile.BadZipFile) as e:
        raise DatasetUnavailableError(f"MovieLens-100K: unexpected recbole wheel: {e}") from e
    for name, blob in data.items():
        digest = hashlib.sha256(blob).hexdigest()
        if digest != FILE_SHA256[name]:
            raise ValueError(
                f"MovieLens-100K: {name} in {wheel.name} has sha256 {digest}, "
                f"expected {FILE_SHA256[name]}"
            )
    return data


def _discard_bad_cache(cache: Path) -> list[str]:
    """Delete cached files whose sha256 is not the pinned one; return their names."""
    bad = []
    for name in _FILES:
        path = cache / name
        if path.is_file() and (got := file_sha256(path)) != FILE_SHA256[name]:
            logger.warning(
                "MovieLens-100K cache: %s has sha256 %s, expected %s (corrupted or altered); "
                "discarding it and downloading again",
                path, got, FILE_SHA256[name],
            )  # fmt: skip
            path.unlink()
            bad.append(name)
    return bad


def fetch_movielens_100k(cache_dir: str | os.PathLike | None = None) -> Path:
    """Make sure the three RecBole files are in ``cache_dir``, intact, and return it.

    Every call checks the cached files against :data:`FILE_SHA256`; a file that does not
    match is deleted and the wheel downloaded again. A downloaded wheel is checked against
    :data:`WHEEL_SHA256` before anything is read out of it.

    Args:
        cache_dir: where the extracted files are cached; default :func:`default_cache_dir`.

    Returns:
        The cache directory, holding ``ml-100k.{inter,user,item}``.

    Raises:
        DatasetUnavailableError: a file is missing or was corrupt, and the wheel cannot be
            downloaded (no network, PyPI unreachable) or does not hold the files.
        ValueError: the downloaded wheel (or a file in it) does not match its pinned sha256.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    bad = _discard_bad_cache(cache)
    if all((cache / name).is_file() for name in _FILES):
        return cache
    logger.info(
        "downloading MovieLens-100K (the recbole==%s wheel) into %s", RECBOLE_VERSION, cache
    )
    with tempfile.TemporaryDirectory(prefix="torchrec_lhf_ml100k_") as tmp:
        try:
            data = _extract_verified(_download_wheel(Path(tmp)))
        except DatasetUnavailableError as e:
            if not bad:
                raise
            raise DatasetUnavailableError(
                f"MovieLens-100K: cached {bad} in {cache} did not match the pinned sha256 and "
                f"were deleted; downloading them again failed: {e}"
            ) from e
    for name, blob in data.items():
        with atomic_write(cache / name, "wb") as f:
            f.write(blob)
    return cache


def _read_atomic(path: Path, columns: list[str]) -> dict[str, list[str]]:
    """Read the named columns (header ``name:type``) of a RecBole atomic file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; header is {header}")
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"{path}:{i + 2}: expected {len(header)} fields, found {len(row)}")
    return {c: [row[header.index(c)] for row in rows] for c in columns}


def _codes(strings: list[str]) -> torch.Tensor:
    """Distinct strings -> int64 codes in sorted order, shape ``(len(strings),)``."""
    vocab = {s: i for i, s in enumerate(sorted(set(strings)))}
    return torch.tensor([vocab[s] for s in strings], dtype=torch.int64)


def load_movielens_100k(
    cache_dir: str | os.PathLike | None = None, *, split: str = "random", split_seed: int = 0
) -> RecDataset:
    """Load MovieLens-100K (downloading it from PyPI once, see the module docstring).

    Args:
        cache_dir: where the extracted files are cached; default :func:`default_cache_dir`.
        split: ``"random"`` (a permutation seeded with ``split_seed``) or ``"time"``
            (timestamp order), each cut 80/10/10 into train/val/test.
        split_seed: the seed of the ``"random"`` split's permutation.

    Returns:
        A ``RecDataset`` of 100,000 ratings with the 8 features of :data:`FEATURES`.

    Raises:
        ValueError: ``split`` is not one of :data:`SPLITS`, or the downloaded wheel does not
            match :data:`WHEEL_SHA256`.
        DatasetUnavailableError: the data is not cached (or the cache was corrupt) and PyPI
            cannot be reached.
    """
    if split not in SPLITS:
        raise ValueError(f"MovieLens-100K: split must be one of {SPLITS}, got {split!r}")
    cache = fetch_movielens_100k(cache_dir)
    inter = _read_atomic(cache / "ml-100k.inter", ["user_id", "item_id", "rating", "timestamp"])
    users = _read_atomic(
        cache / "ml-100k.user", ["user_id", "age", "gender", "occupation", "zip_code"]
    )
    items = _read_atomic(cache / "ml-100k.item", ["item_id", "release_year", "class"])
    num_users, num_items = len(users["user_id"]), len(items["item_id"])
    user_N, item_N, rating_N, time_N = _ratings(inter, num_users, num_items)
    u = _user_attributes(users, num_users)
    i = _item_attributes(items, num_items)
    heights, lengths_NF, values_V = _sparse_features(user_N, item_N, u, i)
    dense_N2 = torch.stack(
        [u.age_U[user_N].double() / 100.0, (i.dense_year_I[item_N] - 1900.0) / 100.0], dim=1
    ).to(torch.float32)
    num = user_N.numel()
    if split == "time":
        order_N = torch.sort(time_N, stable=True).indices
        split_rule = "timestamp order (ties by file order), contiguous 80/10/10"
    else:
        order_N = seeded_permutation(num, split_seed)
        split_rule = f"random: permutation seeded with {split_seed}, 80/10/10"
    logger.info(
        "movielens-100k: %d ratings, %d users, %d items from %s", num, num_users, num_items, cache
    )
    return RecDataset(
        name="movielens-100k",
        feature_names=list(FEATURES),
        num_embeddings=heights,
        dense_names=["age_scaled", "release_year_scaled"],
        dense=dense_N2,
        lengths=lengths_NF,
        values=values_V,
        labels=(rating_N >= POSITIVE_RATING).to(torch.float32),
        splits=split_by_order(order_N),
        info={
            "source": f"recbole=={RECBOLE_VERSION} wheel (GroupLens MovieLens-100K)",
            "cache_dir": str(cache),
            "label": f"rating >= {POSITIVE_RATING:g}",
            "split": split_rule,
            "age_buckets": list(AGE_BUCKETS),
            "genres": i.genres,
            "zip": "full zip code, ids by descending frequency",
            "year": "release year, ids by descending frequency",
        },
    )


class _Users(NamedTuple):
    """Per-user attributes, rows ordered by ``user_id - 1``."""

    age_U: torch.Tensor
    """Age in years, int64 ``(U,)``."""
    age_bucket_U: torch.Tensor
    """Age bucket ``0..len(AGE_BUCKETS)``, ``(U,)``."""
    attrs_U3: torch.Tensor
    """Codes of gender, occupation and zip code (sorted order), int64 ``(U, 3)``."""


class _Items(NamedTuple):
    """Per-item attributes, rows ordered by ``item_id - 1``; genres as a jagged list."""

    year_I: torch.Tensor
    """Release year (0: unknown), int64 ``(I,)``."""
    dense_year_I: torch.Tensor
    """Release year with unknown years as the median, float64 ``(I,)``."""
    genre_G: torch.Tensor
    """Genre ids of all items, item by item, int64 ``(G,)``."""
    gstart_I: torch.Tensor
    """Where each item's genres start in ``genre_G``, ``(I,)``."""
    glen_I: torch.Tensor
    """How many genres each item has, ``(I,)``."""
    genres: list[str]
    """The genre names, alphabetical: genre id ``g`` is ``genres[g]``."""


def _ratings(
    inter: dict[str, list[str]], num_users: int, num_items: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ratings as ``(user_N, item_N, rating_N, time_N)``; user and item ids from 0.

    Raises:
        ValueError: a user or item id outside ``1..num_users`` / ``1..num_items``.
    """
    user_N = torch.tensor([int(u) for u in inter["user_id"]]) - 1
    item_N = torch.tensor([int(i) for i in inter["item_id"]]) - 1
    rating_N = torch.tensor([float(r) for r in inter["rating"]])
    time_N = torch.tensor([int(float(t)) for t in inter["timestamp"]])
    for name, ids, n in (("user_id", user_N, num_users), ("item_id", item_N, num_items)):
        if int(ids.min()) < 0 or int(ids.max()) >= n:
            raise ValueError(
                f"ml-100k.inter: {name} outside 1..{n}: {int(ids.min()) + 1}..{int(ids.max()) + 1}"
            )
    return user_N, item_N, rating_N, time_N


def _user_attributes(users: dict[str, list[str]], num_users: int) -> _Users:
    """Age, age bucket, gender, occupation and zip of each user (see :class:`_Users`)."""
    user_row = torch.tensor([int(u) for u in users["user_id"]]) - 1
    age_U = torch.empty(num_users, dtype=torch.int64)
    age_U[user_row] = torch.tensor([int(a) for a in users["age"]])
    attrs_U = torch.empty(num_users, 3, dtype=torch.int64)
    attrs_U[user_row] = torch.stack(
        [_codes(users["gender"]), _codes(users["occupation"]), _codes(users["zip_code"])], dim=1
    )
    age_bucket_U = torch.bucketize(age_U, torch.tensor(AGE_BUCKETS), right=True)
    return _Users(age_U, age_bucket_U, attrs_U)


def _item_attributes(items: dict[str, list[str]], num_items: int) -> _Items:
    """Release year and genres of each item (see :class:`_Items`)."""
    item_row = torch.tensor([int(i) for i in items["item_id"]]) - 1
    year_I = torch.empty(num_items, dtype=torch.int64)
    # NOTE: two items have no usable year ("unkonwn", "V"): year 0 = "unknown" category.
    year_I[item_row] = torch.tensor([int(y) if y.isdigit() else 0 for y in items["release_year"]])
    known_year_I = year_I > 0
    dense_year_I = torch.where(known_year_I, year_I, year_I[known_year_I].median()).double()
    genre_lists = [c.split() for c in items["class"]]
    genre_vocab = {g: i for i, g in enumerate(sorted({g for gl in genre_lists for g in gl}))}
    glen_I = torch.zeros(num_items, dtype=torch.int64)
    glen_I[item_row] = torch.tensor([len(gl) for gl in genre_lists])
    gval_by_row = [
        torch.tensor([genre_vocab[g] for g in gl], dtype=torch.int64) for gl in genre_lists
    ]
    order = torch.argsort(item_row)
    genre_G = torch.cat([gval_by_row[i] for i in order.tolist()])
    gstart_I = torch.cumsum(glen_I, 0) - glen_I
    return _Items(year_I, dense_year_I, genre_G, gstart_I, glen_I, sorted(genre_vocab))


def _sparse_features(
    user_N: torch.Tensor, item_N: torch.Tensor, u: _Users, i: _Items
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The 8 sparse features of :data:`FEATURES`, sample-major.

    Returns:
        ``(heights, lengths_NF, values_V)``: the table heights, the lengths ``(N, 8)`` (1,
        except the multi-hot ``genres``), and the ids, shape ``(V,)``.
    """
    # One-hot columns: user, item, age, gender, occupation, zip, year (year by frequency).
    onehot_N7 = torch.stack(
        [user_N, item_N, u.age_bucket_U[user_N], *u.attrs_U3[user_N].unbind(1), i.year_I[item_N]],
        dim=1,
    )
    zip_year_ids, zip_year_sizes = frequency_encode(onehot_N7[:, [5, 6]], reserve=False)
    onehot_N7[:, [5, 6]] = zip_year_ids
    num_genders, num_occupations = (int(u.attrs_U3[:, k].max()) + 1 for k in (0, 1))
    heights = [len(u.age_U), len(i.year_I), len(AGE_BUCKETS) + 1, num_genders, num_occupations]
    heights += [zip_year_sizes[0], len(i.genres), zip_year_sizes[1]]

    glen_N = i.glen_I[item_N]
    lengths_NF = torch.ones(user_N.numel(), len(FEATURES), dtype=torch.int32)
    lengths_NF[:, 6] = glen_N.to(torch.int32)
    genres_V = gather_segments(i.genre_G, i.gstart_I[item_N], glen_N)
    feature_major_V = torch.cat([onehot_N7[:, :6].t().reshape(-1), genres_V, onehot_N7[:, 6]])
    return heights, lengths_NF, feature_major_to_sample_major(feature_major_V, lengths_NF)
