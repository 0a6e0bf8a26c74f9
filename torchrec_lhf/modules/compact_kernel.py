"""The remap's CPU kernel: the whole lookup of a batch in one pass over its ids.

The torch ops of :func:`~torchrec_lhf.modules.remap_lookup.map_ids` make a pass over the
batch's ids per step: the range check, the SplitMix64 finalizer, the tail's remainder, three
probe windows, the head table's reads, the selects (about 25 for a compact remap). On CPU
most of their time is memory traffic between the passes. :func:`fused_remap`
(``csrc/remap_kernel.cpp``) does the same integer arithmetic per id in one loop, feature by
feature: the range check (or the ``modulo`` fold), then the identity, dense or compact
lookup, where the host knows each feature's ids (TorchRec's per-key lengths, which the
remap reads on CPU anyway). Per-feature constants are taken once per feature; the tail's
remainder multiplies by a precomputed reciprocal instead of dividing. Eager dense-only
modules keep FBGEMM's ``pruned_array_lookup``.

Ranked heads (:mod:`~torchrec_lhf.modules.head_rank`) are looked up in the same loop: a
ranked feature's ids are found in its 16-bit block offsets (read off the block's ends where
its head ids are contiguous; where not, interpolated and searched), and only the ids not
found there are hashed into the tail; they are not probed in the cuckoo table, which holds
none of them.

It is also the operator ``torchrec_lhf::fused_remap`` (``fused_remap_ranked`` with ranked
heads), which scripted models call (the serving model's remap: one op where the interpreter
ran about 25 and their statements): loading such a model needs this module imported
(``import torchrec_lhf``) to define it. ``rank_overlay``, the second pass that looked up the
ranked heads before, stays registered for the models scripted with it.

It is built once per machine from the C++ source with the compiler torch's
``cpp_extension`` uses (``load_inline``, cached under ``TORCH_EXTENSIONS_DIR``, named after
the source and the CPU: the code is compiled for it), on first use (the operator's first
call builds it). Where it cannot be built (no compiler, no ninja) or does not apply (CUDA,
per-id lengths unknown on the host), the torch ops run (for the operator, its
:func:`_fallback`): nothing else changes. Every result equals the torch ops'
(``tests/modules/test_fused_remap.py``). Set ``TORCHREC_LHF_FUSED_REMAP=0`` to turn it off
(in a process that has not loaded it).

Legend:
    J internal features;  P ids of a batch
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import torch

from torchrec_lhf.hashing import tail_divisors
from torchrec_lhf.modules import head_rank

logger = logging.getLogger(__name__)

ENV_FLAG = "TORCHREC_LHF_FUSED_REMAP"

SOURCE = Path(__file__).with_name("csrc") / "remap_kernel.cpp"
"""The kernels' C++ source (package data)."""

CFLAGS = ("-O3", "-march=native")
"""The kernel's compiler flags (``-march=native``: the hash's 64-bit multiplies vectorize)."""

FUNCTIONS = ("fused_remap_eager", "fused_remap_ranked_eager", "rank_overlay_eager")
"""The kernel's functions bound for Python (``fused_remap`` is its operator)."""


@functools.lru_cache(maxsize=1)
def _module():  # noqa: ANN202
    """The built extension, or None where it cannot be built or is turned off."""
    if os.environ.get(ENV_FLAG, "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        name = _extension_name()
        with build_guard(_build_lock(name)), this_environments_ninja():
            return load_inline(
                name=name,
                cpp_sources=SOURCE.read_text(),
                functions=list(FUNCTIONS),
                extra_cflags=list(CFLAGS),
                verbose=False,
            )
    except Exception as error:  # noqa: BLE001 (no compiler, no ninja, a failed build)
        logger.warning("fused compact remap not built (%s); the torch ops run instead", error)
        return None


STALE_LOCK_SECONDS = 600.0
"""Age past which the build's lock file is taken as left by a build that never finished.

The build takes about 40 s on two cores. torch's ``cpp_extension`` holds a lock file in the
build directory while it builds and removes it at the end; a build whose process was killed
(a timeout, SIGTERM, SIGKILL) leaves it, and torch then waits for it to go, forever, in
every later process on the machine. This library's own builds say when they were killed
(``build_guard``); the age applies to a lock of a builder that does not (another version)."""


def _extension_name() -> str:
    """The build's name in torch's extension cache.

    The kernel is built for this machine's CPU (``-march=native``: the hash's 64-bit
    multiplies vectorize), so the name carries the CPU's identity: an extension cache shared
    with another kind of machine builds its own instead of loading this one. It carries the
    source's digest too: two versions of the project sharing a cache (two checkouts, a
    benchmark's snapshot) each build their own, instead of rebuilding over each other's
    (torch keys its cache by name). And torch's version and the compiler flags: two
    environments with different torch versions (the cache's folder names only Python's
    version) rebuilt over each other at every switch, each loading a library linked against
    the other's torch if it came between the build and the load. And where torch and
    Python's headers are installed: the build's include paths are theirs, so two checkouts
    with environments of their own (the same versions) rewrote each other's build file and
    rebuilt at every switch."""
    key = SOURCE.read_text() + repr(FUNCTIONS) + repr(CFLAGS) + torch.__version__
    key += os.path.dirname(torch.__file__) + sysconfig.get_paths()["include"]
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"torchrec_lhf_remap_kernel_{digest}_{_cpu_tag()}"


def _build_lock(name: str) -> Path:
    """The lock file torch's ``cpp_extension`` holds while it builds ``name``."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False)) / "lock"


def wait_for_build_lock(
    lock: Path, *, stale_after: float = STALE_LOCK_SECONDS, poll: float = 0.5
) -> None:
    """Wait while another process builds (``lock`` exists and is younger than
    ``stale_after`` seconds); remove a lock older than that, with a warning: it was left by
    a build that was interrupted, and torch would wait for it forever. Returns when the lock
    is gone (torch then takes it, or loads what the other process built)."""
    warned = False
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > stale_after:
            logger.warning(
                "removing %s, %.0f s old: a build of the fused remap that did not finish "
                "left it (an interrupted process); building again",
                lock,
                age,
            )
            lock.unlink(missing_ok=True)
            return
        if not warned:
            logger.warning(
                "waiting for %s: another process is building the fused remap (a lock over "
                "%.0f s old is taken as left by an interrupted build and removed)",
                lock,
                stale_after,
            )
            warned = True
        time.sleep(poll)


@contextlib.contextmanager
def this_environments_ninja() -> Iterator[None]:
    """Build with the ``ninja`` of this Python's environment (the ``ninja`` package, pinned
    in the requirements), where there is one: its folder goes first on ``PATH`` while the
    body runs.

    torch runs the first ``ninja`` on ``PATH``. Two versions of ninja hash a build's command
    differently, so each takes the other's build as out of date: where processes found
    different ones (``torchrun`` and ``torchx`` from an activated environment put its
    ``bin`` first, a plain ``.venv/bin/python`` finds the system's), every switch from one
    kind of process to the other rebuilt the kernel, about 40 s in its first batch."""
    try:
        import ninja

        folder = str(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        yield
        return
    if not os.path.isfile(os.path.join(folder, "ninja")):
        yield
        return
    before = os.environ.get("PATH")
    os.environ["PATH"] = folder + os.pathsep + (before or "")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = before


GUARD_NAME = "builder"
"""The file beside torch's lock that this library's builds hold an OS lock on (``flock``),
with the holder's process id written in it while it builds."""


@contextlib.contextmanager
def build_guard(lock: Path, *, stale_after: float = STALE_LOCK_SECONDS) -> Iterator[None]:
    """Hold the machine's guard on the build directory of ``lock`` (torch's lock file) while
    the body loads or builds the extension.

    The guard is an OS lock (``flock``) on a file beside ``lock``, which the kernel releases
    when its holder exits, however it exits. A second process of this library waits for it,
    however long the build takes. Once held, the file says whether the previous holder
    finished: it writes its process id there before building and clears it after. So a
    torch lock found with an id left there belongs to a build that was killed (a timeout,
    SIGTERM or SIGKILL skip both torch's and this cleanup) and is removed at once, where
    torch would wait for it forever. A torch lock found with no id belongs to a process that
    does not take the guard (another version of this library): it is waited for, and taken
    as left behind after ``stale_after`` seconds (``wait_for_build_lock``). Where ``flock``
    is not available (not a POSIX system, a file system that refuses it) the age rule alone
    applies.

    Args:
        lock: torch's lock file for the build (``_build_lock``).
        stale_after: seconds after which a torch lock of an unguarded builder is taken as
            left behind.
    """
    guard = _open_guard(lock)
    if guard is None:  # no flock here: the age rule alone
        wait_for_build_lock(lock, stale_after=stale_after)
        yield
        return
    with guard:
        killed = guard.read().strip()
        if killed and lock.exists():
            logger.warning(
                "removing %s: process %s stopped while it built the fused remap and left "
                "it; building again",
                lock,
                killed,
            )
            lock.unlink(missing_ok=True)
        else:
            wait_for_build_lock(lock, stale_after=stale_after)
        _write_guard(guard, str(os.getpid()))
        try:
            yield
        finally:
            _write_guard(guard, "")


def _open_guard(lock: Path) -> TextIO | None:
    """The guard file beside ``lock``, opened, locked (waiting for another holder) and read
    from its start; None where ``flock`` is not available."""
    try:
        import fcntl

        lock.parent.mkdir(parents=True, exist_ok=True)
        guard = open(lock.with_name(GUARD_NAME), "a+")  # noqa: SIM115 (the caller closes it)
    except (ImportError, OSError):
        return None
    try:
        deadline = time.monotonic() + QUIET_WAIT_SECONDS
        while not _try_flock(fcntl, guard):
            if time.monotonic() >= deadline:  # (sooner: another rank loading what is built)
                logger.warning("waiting for %s: another process is building the fused remap", lock)
                fcntl.flock(guard, fcntl.LOCK_EX)
                break
            time.sleep(0.05)
    except OSError:  # a file system without flock
        guard.close()
        return None
    guard.seek(0)
    return guard


def _try_flock(fcntl, guard: TextIO) -> bool:  # noqa: ANN001 (the module, POSIX only)
    """Take the guard's ``flock`` if no one holds it; False if someone does."""
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


QUIET_WAIT_SECONDS = 5.0
"""How long a process waits for the guard before saying so: loading a build that is done
holds it for a fraction of a second, and the ranks of a job all load at once."""


def _write_guard(guard: TextIO, text: str) -> None:
    guard.seek(0)
    guard.truncate()
    guard.write(text)
    guard.flush()


def _cpu_tag() -> str:
    """A short digest of this CPU's model and instruction-set flags (``/proc/cpuinfo``;
    the machine name where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "vendor_id"))]
        text = "".join(sorted(set(lines)))
    except OSError:
        text = platform.machine() + platform.processor()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def available() -> bool:
    """Whether the fused kernel is built (building it on first call)."""
    return _module() is not None


@torch.jit.unused
def fused_remap(
    ids_P: torch.Tensor,
    length_J: list[int],
    mapping: torch.Tensor,
    offset_J: torch.Tensor,
    height_J: torch.Tensor,
    modulo: bool,
    compact: list[torch.Tensor],
    quiet: bool = False,
) -> torch.Tensor | None:
    """Every id's row in one pass (range check or fold, then its feature's identity, dense,
    compact or ranked lookup), in the ids' dtype; None where the kernel does not apply (not
    built, not CPU, ids neither int32 nor int64, head rows neither int16 nor int32). Eager
    mode (the kernel through pybind, cheaper to call than the operator from Python);
    scripted code calls :func:`fused_rows`.

    Args:
        ids_P: raw ids laid out per internal feature, shape ``(P,)``.
        length_J: the ids of each internal feature (host ints, summing to ``P``).
        mapping, offset_J, height_J, modulo, compact: as for
            :func:`~torchrec_lhf.modules.remap_ops.remap_values` (``compact[7]``: the
            probe salts, ``compact[8:14]``: the ranked heads,
            :mod:`~torchrec_lhf.modules.head_rank`; the kernel reads a divided tail's
            divisor from its seed, not ``compact[6]``).
        quiet: a batch the kernel refuses (an id out of range, lengths that do not add
            up to the ids) gives None instead of the error below.

    Raises:
        RuntimeError: an id outside ``[0, N)`` (not ``modulo``), naming the internal
            feature's index and the id.
    """
    if not _applies(ids_P, compact):
        return None  # (before the build: a CUDA batch does not build the CPU kernel)
    module = _module()
    if module is None:
        return None
    tables = _tables(mapping, compact)
    salt = _salt(mapping, compact)
    try:
        if len(compact) > 8:  # ranked heads: the same pass looks them up
            return module.fused_remap_ranked_eager(
                ids_P.contiguous(), length_J, offset_J, height_J, mapping, *tables,
                *compact[8:14], modulo, salt,
            )  # fmt: skip
        return module.fused_remap_eager(
            ids_P.contiguous(), length_J, offset_J, height_J, mapping, *tables, modulo, salt
        )
    except RuntimeError:
        if quiet:  # the caller's general path names the problem
            return None
        raise


def fused_rows(
    ids_P: torch.Tensor,
    length_J: list[int],
    mapping: torch.Tensor,
    offset_J: torch.Tensor,
    height_J: torch.Tensor,
    modulo: bool,
    compact: list[torch.Tensor],
    array_offsets: torch.Tensor | None,
) -> torch.Tensor | None:
    """The rows of ids laid out as the internal features by the CPU kernel, or None where
    it does not apply: not CPU, ids neither int32 nor int64, head rows neither int16 nor
    int32; eager dense modules keep FBGEMM's ``pruned_array_lookup`` (``benchmarks.remap``'s
    figure); an eager batch the kernel refuses (an id out of range, lengths that do not add
    up to the ids) gets None, so that the caller's general path names the problem.
    Scripted, the operator ``torchrec_lhf::fused_remap`` (one op where the interpreter ran
    about 25 and their statements), or
    ``torchrec_lhf::fused_remap_ranked`` where there are ranked heads (``compact[8:14]``,
    :mod:`~torchrec_lhf.modules.head_rank`: looked up in the same pass).

    Args as for :func:`fused_remap`, plus ``array_offsets`` (see
    :func:`~torchrec_lhf.modules.remap_ops.remap_values`).
    """
    # NOTE: torch.compile takes the operators too (it traces them by their shape functions;
    # the pybind functions it could not trace)
    if not (torch.jit.is_scripting() or torch.compiler.is_compiling()):
        if len(compact) == 0 and array_offsets is not None:
            return None
        return fused_remap(
            ids_P, length_J, mapping, offset_J, height_J, modulo, compact, quiet=True
        )
    if not _applies(ids_P, compact):
        return None
    ids_P = ids_P.contiguous()  # (the kernel reads them as such; no copy where they are)
    t = _tables(mapping, compact)  # scripted: the operators (not the pybind functions)
    salt = _salt(mapping, compact)
    if len(compact) > 8:
        return torch.ops.torchrec_lhf.fused_remap_ranked(
            ids_P, length_J, offset_J, height_J, mapping, t[0], t[1], t[2], t[3], t[4], t[5],
            compact[8], compact[9], compact[10], compact[11], compact[12], compact[13], modulo,
            salt,
        )  # fmt: skip
    return torch.ops.torchrec_lhf.fused_remap(
        ids_P, length_J, offset_J, height_J, mapping, t[0], t[1], t[2], t[3], t[4], t[5],
        modulo, salt,
    )  # fmt: skip


def _rank_overlay_fallback(
    ids: torch.Tensor,
    lengths: list[int],
    rows: torch.Tensor,
    blocks: torch.Tensor,
    offsets: torch.Tensor,
    dir_J: torch.Tensor,
    last_J: torch.Tensor,
    steps: torch.Tensor,
    height: torch.Tensor,
    modulo: bool,
) -> torch.Tensor:
    """``torchrec_lhf::rank_overlay`` in torch ops (no kernel): every id's feature, then
    :func:`~torchrec_lhf.modules.head_rank.overlay`."""
    module = _module() if ids.is_cpu and ids.dtype in (torch.int32, torch.int64) else None
    if module is not None:  # (loading it registered its kernel: later calls go there)
        return module.rank_overlay_eager(
            ids.contiguous(), lengths, rows, blocks, offsets, dir_J, last_J, steps, height, modulo
        )
    counts = torch.tensor(lengths, dtype=torch.long, device=ids.device)
    j_P = torch.repeat_interleave(
        torch.arange(len(lengths), device=ids.device), counts, output_size=ids.numel()
    )
    ranked = [blocks, offsets, dir_J, last_J, steps]
    return head_rank.overlay(ids, j_P, rows, ranked, height, modulo)


def fused_rows_of_bags(
    ids_P: torch.Tensor,
    bag_lengths: torch.Tensor,
    mapping: torch.Tensor,
    offset_J: torch.Tensor,
    height_J: torch.Tensor,
    modulo: bool,
    compact: list[torch.Tensor],
    names: list[str] | None = None,
) -> torch.Tensor | None:
    """:func:`fused_rows` for scripted code that has the per-bag lengths but not the ids
    per feature: the operator ``torchrec_lhf::fused_remap_bags`` (with ranked heads,
    ``fused_remap_ranked_bags``) sums each feature's bags itself (TorchScript's per-key
    lengths, a sum and a host list, cost more than the whole lookup of a one-sample
    request). None where the kernel does not apply.

    Args as for :func:`fused_rows`, with ``bag_lengths`` the ids of each bag, feature-major,
    shape ``(J * B,)``, in place of the per-feature counts, and ``names`` the logical
    feature of each internal feature (``J``), which the operator's errors name.
    """
    if not _applies(ids_P, compact):
        return None
    ids_P = ids_P.contiguous()  # (as in fused_rows)
    t = _tables(mapping, compact)
    salt = _salt(mapping, compact)
    if len(compact) > 8:
        return torch.ops.torchrec_lhf.fused_remap_ranked_bags(
            ids_P, bag_lengths, offset_J, height_J, mapping, t[0], t[1], t[2], t[3], t[4], t[5],
            compact[8], compact[9], compact[10], compact[11], compact[12], compact[13], modulo,
            names, salt,
        )  # fmt: skip
    return torch.ops.torchrec_lhf.fused_remap_bags(
        ids_P, bag_lengths, offset_J, height_J, mapping, t[0], t[1], t[2], t[3], t[4], t[5],
        modulo, names, salt,
    )  # fmt: skip


def checked_ids_of_bags(
    ids_P: torch.Tensor,
    bag_lengths: torch.Tensor,
    unmapped_J: torch.Tensor,
    height_J: torch.Tensor,
    no_mapping: torch.Tensor,
    no_table: torch.Tensor,
    modulo: bool,
    names: list[str] | None = None,
) -> torch.Tensor | None:
    """:func:`fused_rows_of_bags` of a remap with no table: the ids, range-checked (or
    folded with ``modulo``), one operator call with nothing made per call (a range check
    for a lookup that maps raw ids itself). None where the kernel does not apply.

    Args:
        ids_P: raw ids, feature-major, shape ``(P,)``.
        bag_lengths: the ids of each bag, feature-major, shape ``(J * B,)``.
        unmapped_J: ``IDENTITY`` for every feature, shape ``(J,)``.
        height_J: int64 logical height ``N`` of each feature, shape ``(J,)``.
        no_mapping: an empty mapping (of a mapping dtype); ``no_table``: an empty int64
            tensor, for each absent compact table.
        modulo: fold ids into ``[0, N)`` instead of refusing them.
        names: the logical feature of each internal feature, which the errors name.
    """
    if not ids_P.is_cpu or (ids_P.dtype != torch.int64 and ids_P.dtype != torch.int32):
        return None  # (not _applies: a list made per call)
    t = no_table
    return torch.ops.torchrec_lhf.fused_remap_bags(
        ids_P.contiguous(), bag_lengths, unmapped_J, height_J, no_mapping, t, t, t, t, t, t, modulo,
        names,
    )  # fmt: skip


def _applies(ids_P: torch.Tensor, compact: list[torch.Tensor]) -> bool:
    """Whether the kernel reads these ids and head rows: on CPU, int32 or int64 ids, int16
    or int32 head rows (or none)."""
    if not ids_P.is_cpu:  # (not device.type: a string made per call)
        return False
    if ids_P.dtype != torch.int64 and ids_P.dtype != torch.int32:
        return False
    return reads_head_rows(compact)


def reads_head_rows(compact: list[torch.Tensor]) -> bool:
    """Whether the kernel reads the head rows of ``compact`` (a remap's compact tensors, as
    ``remap_values`` takes them): int16 or int32 rows, or none. Where it does, its
    operator serves every CPU request of int32 or int64 ids, and reads the request's
    lengths (refusing a negative one, or lengths that do not add up to the ids)."""
    if len(compact) == 0 or compact[1].numel() == 0:
        return True
    return compact[1].dtype == torch.int16 or compact[1].dtype == torch.int32


def _tables(mapping: torch.Tensor, compact: list[torch.Tensor]) -> list[torch.Tensor]:
    """The kernel's six compact arguments: ``compact``'s, or empty tensors for a module
    without compact features."""
    if len(compact) > 0:
        return compact[:6]
    empty = mapping.new_zeros(0, dtype=torch.long)
    return [empty, empty, empty, empty, empty, empty]


def _salt(mapping: torch.Tensor, compact: list[torch.Tensor]) -> torch.Tensor:
    """The kernel's probe salts: ``compact[7]`` (empty where no mappings share a seed,
    :func:`~torchrec_lhf.modules.head_table.probe_salts`), or an empty tensor."""
    if len(compact) > 7:
        return compact[7]
    return mapping.new_zeros(0, dtype=torch.long)


_COMPACT = (
    "Tensor offset, Tensor height, Tensor mapping, Tensor slot_keys, Tensor slot_rows, "
    "Tensor seeds, Tensor tail_offset, Tensor tail_rows, Tensor is_compact"
)
_TABLES = f"{_COMPACT}, bool modulo"
_SALT = "Tensor? salt=None"
SCHEMA = f"fused_remap(Tensor ids, int[] lengths, {_TABLES}, {_SALT}) -> Tensor"
"""The operator's schema. ``seeds``: the tail hashes' seeds; the empty tensors of a module
without compact features stand for its absent tables (``is_compact`` empty). ``salt``: each
internal feature's probe salt (:func:`~torchrec_lhf.modules.head_table.probe_salts`), or
none (empty or None); models scripted before it was added call the operators without it,
and their head tables were built without salts."""
_NAMES = "str[]? names=None"
SCHEMA_BAGS = (
    f"fused_remap_bags(Tensor ids, Tensor bag_lengths, {_TABLES}, {_NAMES}, {_SALT}) -> Tensor"
)
"""``fused_remap`` with the per-bag lengths ``(J * B,)`` in place of the ids per feature.
``names``: the logical feature of each internal feature (``J``), read only to word an error
(a negative length, an id out of range) with the feature's name instead of its index; models
scripted before it was added call the operator without it."""
_RANKED = "Tensor blocks, Tensor offsets, Tensor dir, Tensor last, Tensor steps, Tensor fine"
SCHEMA_RANKED = (
    f"fused_remap_ranked(Tensor ids, int[] lengths, {_COMPACT}, {_RANKED}, bool modulo, "
    f"{_SALT}) -> Tensor"
)
"""``fused_remap`` with the ranked heads (:mod:`~torchrec_lhf.modules.head_rank`'s
buffers; ``steps`` is only the torch fallback's, ``fine`` the spans' directory both
read) looked up in the same pass."""
SCHEMA_RANKED_BAGS = (
    f"fused_remap_ranked_bags(Tensor ids, Tensor bag_lengths, {_COMPACT}, {_RANKED}, "
    f"bool modulo, {_NAMES}, {_SALT}) -> Tensor"
)
"""``fused_remap_ranked`` with the per-bag lengths ``(J * B,)``."""
SCHEMA_RANK = (
    "rank_overlay(Tensor ids, int[] lengths, Tensor rows, Tensor blocks, Tensor offsets, "
    "Tensor dir, Tensor last, Tensor steps, Tensor height, bool modulo) -> Tensor"
)
"""The ranked heads' pass over ``fused_remap``'s rows (``steps`` is only its torch
fallback's): what models scripted before ``fused_remap_ranked`` call."""


def _fallback(
    ids: torch.Tensor,
    lengths: list[int],
    offset: torch.Tensor,
    height: torch.Tensor,
    mapping: torch.Tensor,
    slot_keys: torch.Tensor,
    slot_rows: torch.Tensor,
    seeds: torch.Tensor,
    tail_offset: torch.Tensor,
    tail_rows: torch.Tensor,
    is_compact: torch.Tensor,
    modulo: bool,
    salt: torch.Tensor | None = None,
) -> torch.Tensor:
    """The operator where the C++ kernel is not registered for the ids' device: on CPU it
    builds (or loads) the kernel, which registers itself, and calls it; where that is not
    possible (no compiler; another device; ids or rows of other dtypes), the torch ops of
    ``map_ids``."""
    compact = [slot_keys, slot_rows, seeds, tail_offset, tail_rows, is_compact]
    compact += [tail_divisors(seeds), _salt_or_empty(salt, seeds)]
    return _fallback_rows(ids, lengths, offset, height, mapping, compact, modulo)


def _salt_or_empty(salt: torch.Tensor | None, seeds: torch.Tensor) -> torch.Tensor:
    """An operator's optional probe salts as ``compact[7]`` (empty for none)."""
    return seeds.new_zeros(0, dtype=torch.long) if salt is None else salt


def _fallback_ranked(
    ids: torch.Tensor,
    lengths: list[int],
    offset: torch.Tensor,
    height: torch.Tensor,
    mapping: torch.Tensor,
    slot_keys: torch.Tensor,
    slot_rows: torch.Tensor,
    seeds: torch.Tensor,
    tail_offset: torch.Tensor,
    tail_rows: torch.Tensor,
    is_compact: torch.Tensor,
    blocks: torch.Tensor,
    offsets: torch.Tensor,
    dir_J: torch.Tensor,
    last_J: torch.Tensor,
    steps: torch.Tensor,
    fine: torch.Tensor,
    modulo: bool,
    salt: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fused_remap_ranked`` where its C++ kernel is not registered: as :func:`_fallback`,
    the ranked heads looked up by the torch ops where the kernel cannot run."""
    compact = [slot_keys, slot_rows, seeds, tail_offset, tail_rows, is_compact]
    compact += [tail_divisors(seeds), _salt_or_empty(salt, seeds)]
    compact += [blocks, offsets, dir_J, last_J, steps, fine]
    return _fallback_rows(ids, lengths, offset, height, mapping, compact, modulo)


def _fallback_rows(
    ids: torch.Tensor,
    lengths: list[int],
    offset: torch.Tensor,
    height: torch.Tensor,
    mapping: torch.Tensor,
    compact: list[torch.Tensor],
    modulo: bool,
) -> torch.Tensor:
    """The fallbacks' rows: the kernel where it can be built (``compact[7]``: the probe
    salts, ``compact[8:14]``: ranked heads), else ``map_ids``'s torch ops (``compact``
    empty where no feature is compact; ``compact[6]``, the divisors, every seed's: correct
    for every tail)."""
    compact = compact if compact[5].numel() > 0 else []
    module = _module() if _applies(ids, compact) else None
    if module is not None:  # (loading it registered its kernel: later calls go there)
        tables = _tables(mapping, compact)
        salt = _salt(mapping, compact)
        if len(compact) > 8:
            return module.fused_remap_ranked_eager(
                ids.contiguous(), lengths, offset, height, mapping, *tables, *compact[8:14],
                modulo, salt,
            )  # fmt: skip
        return module.fused_remap_eager(
            ids.contiguous(), lengths, offset, height, mapping, *tables, modulo, salt
        )
    from torchrec_lhf.modules.remap_lookup import map_ids  # (it imports this module)

    segments = (None, torch.tensor(lengths, device=ids.device), None)
    return map_ids(ids, segments, mapping, offset, height, modulo, True, compact)


def _fallback_bags(
    ids: torch.Tensor,
    bag_lengths: torch.Tensor,
    offset: torch.Tensor,
    height: torch.Tensor,
    mapping: torch.Tensor,
    slot_keys: torch.Tensor,
    slot_rows: torch.Tensor,
    seeds: torch.Tensor,
    tail_offset: torch.Tensor,
    tail_rows: torch.Tensor,
    is_compact: torch.Tensor,
    modulo: bool,
    names: list[str] | None = None,
    salt: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fused_remap_bags`` where its C++ kernel is not registered: as :func:`_fallback`,
    the ids per feature summed here."""
    compact = [slot_keys, slot_rows, seeds, tail_offset, tail_rows, is_compact]
    compact += [tail_divisors(seeds), _salt_or_empty(salt, seeds)]
    return _fallback_bag_rows(ids, bag_lengths, offset, height, mapping, compact, modulo, names)


def _fallback_ranked_bags(
    ids: torch.Tensor,
    bag_lengths: torch.Tensor,
    offset: torch.Tensor,
    height: torch.Tensor,
    mapping: torch.Tensor,
    slot_keys: torch.Tensor,
    slot_rows: torch.Tensor,
    seeds: torch.Tensor,
    tail_offset: torch.Tensor,
    tail_rows: torch.Tensor,
    is_compact: torch.Tensor,
    blocks: torch.Tensor,
    offsets: torch.Tensor,
    dir_J: torch.Tensor,
    last_J: torch.Tensor,
    steps: torch.Tensor,
    fine: torch.Tensor,
    modulo: bool,
    names: list[str] | None = None,
    salt: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fused_remap_ranked_bags`` where its C++ kernel is not registered."""
    compact = [slot_keys, slot_rows, seeds, tail_offset, tail_rows, is_compact]
    compact += [tail_divisors(seeds), _salt_or_empty(salt, seeds)]
    compact += [blocks, offsets, dir_J, last_J, steps, fine]
    return _fallback_bag_rows(ids, bag_lengths, offset, height, mapping, compact, modulo, names)


def _fallback_bag_rows(
    ids: torch.Tensor,
    bag_lengths: torch.Tensor,
    offset: torch.Tensor,
    height: torch.Tensor,
    mapping: torch.Tensor,
    compact: list[torch.Tensor],
    modulo: bool,
    names: list[str] | None,
) -> torch.Tensor:
    """The bags fallbacks' rows: the operator again where the kernel can be built (loading
    it registered the kernel, which names the features), else ``map_ids``'s torch ops (with
    ``names``, an id out of range named as the eager remap names it)."""
    if names is not None and len(names) != offset.numel():
        raise RuntimeError(
            f"names has {len(names)} entries; expected one per internal feature ({offset.numel()})"
        )
    present = compact if compact[5].numel() > 0 else []
    if _applies(ids, present) and _module() is not None and _kernel_registered():
        if len(compact) > 8:
            return torch.ops.torchrec_lhf.fused_remap_ranked_bags(
                ids, bag_lengths, offset, height, mapping, *compact[:6], *compact[8:14], modulo,
                names, compact[7],
            )  # fmt: skip
        return torch.ops.torchrec_lhf.fused_remap_bags(
            ids, bag_lengths, offset, height, mapping, *compact[:6], modulo, names, compact[7]
        )
    lengths = _bag_sums(bag_lengths, offset.numel(), ids.numel(), names)
    if names is None:
        return _fallback_rows(ids, lengths, offset, height, mapping, compact, modulo)
    from torchrec_lhf.modules.remap_lookup import map_ids_or_raise  # (it imports this module)

    segments = (None, torch.tensor(lengths, device=ids.device), None)
    return map_ids_or_raise(
        ids, segments, mapping, offset, height, True, names, present, modulo=modulo
    )


def _kernel_registered() -> bool:
    """Whether the C++ kernel holds the operators' CPU key (loading it registers it there),
    so that calling an operator again reaches it, not its fallback."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("torchrec_lhf::fused_remap_bags", "CPU")


def _bag_sums(
    bag_lengths: torch.Tensor, num: int, num_ids: int, names: list[str] | None = None
) -> list[int]:
    """The ids of each of ``num`` features from the per-bag lengths ``(num * B,)`` of a
    batch of ``num_ids`` ids (``names``: the features', for a negative length's message).

    Raises:
        RuntimeError: lengths that are not a 1-D integer tensor of ``num * B`` entries, a
            negative one (named), or lengths that do not add up to ``num_ids``, as the C++
            kernel's (the eager remap names the features: ``map_ids_or_raise``).
    """
    bags = bag_lengths.numel()
    if bag_lengths.dim() != 1 or bag_lengths.is_floating_point() or bag_lengths.dtype == torch.bool:
        raise RuntimeError(
            f"bag lengths must be a 1-D tensor of integers, got {bag_lengths.dtype} of shape "
            f"{list(bag_lengths.shape)}"
        )
    if (bags % num != 0) if num > 0 else bags != 0:
        raise RuntimeError(f"the bag lengths' {bags} entries are not a batch of {num} features")
    negative = (bag_lengths < 0).nonzero()
    if negative.numel() > 0:  # (a host read: this path reads the lengths on the host anyway)
        i, stride = int(negative[0, 0]), bags // num
        raise RuntimeError(
            f"lengths[{i}] = {int(bag_lengths[i])} ({_feature_text(names, i // stride)}, "
            f"sample {i % stride}) is negative; expected ids per feature and sample >= 0"
        )
    lengths = bag_lengths.view(num, -1).sum(1).tolist() if num > 0 else []
    if sum(lengths) != num_ids:
        raise RuntimeError(
            f"the lengths add up to {sum(lengths)} ids, but the batch holds {num_ids}: the "
            "lengths and values disagree"
        )
    return lengths


def _feature_text(names: list[str] | None, j: int) -> str:
    """``feature 'clicks'`` where the features are named, else ``internal feature 3`` (as
    the C++ kernel words it)."""
    return f"feature {names[j]!r}" if names is not None else f"internal feature {j}"


def _register_operator() -> torch.library.Library | None:
    """Define ``torchrec_lhf::fused_remap``, ``fused_remap_bags``, ``fused_remap_ranked``,
    ``fused_remap_ranked_bags`` and ``rank_overlay`` with their fallbacks for every backend
    (the C++ kernel, once loaded, takes the CPU: a backend's own kernel comes first) and
    their shape functions (``torch.export``, ``torch.compile``)."""
    if hasattr(torch.ops.torchrec_lhf, "fused_remap_ranked"):  # (a reload of this module)
        return None
    library = torch.library.Library("torchrec_lhf", "FRAGMENT")
    register_fake = getattr(torch.library, "register_fake", None)  # (torch >= 2.4)
    for name, schema, fallback in (
        ("fused_remap", SCHEMA, _fallback),
        ("fused_remap_bags", SCHEMA_BAGS, _fallback_bags),
        ("fused_remap_ranked", SCHEMA_RANKED, _fallback_ranked),
        ("fused_remap_ranked_bags", SCHEMA_RANKED_BAGS, _fallback_ranked_bags),
        ("rank_overlay", SCHEMA_RANK, _rank_overlay_fallback),
    ):
        library.define(schema)
        library.impl(name, fallback, "CompositeExplicitAutograd")
        if register_fake is not None:
            register_fake(f"torchrec_lhf::{name}", lib=library)(
                lambda ids, *rest, **options: torch.empty_like(ids)
            )
    return library


_LIBRARY = _register_operator()  # held: the registrations live as long as this object
