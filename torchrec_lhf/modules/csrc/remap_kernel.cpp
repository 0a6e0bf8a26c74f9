// The remap's CPU kernel (torchrec_lhf/modules/compact_kernel.py builds and calls it; it is
// also the operators torchrec_lhf::fused_remap and the others registered for CPU at the end).
//
// fused_remap: the whole lookup of a batch laid out per internal feature, whose ids per
//   feature the host knows: per feature a range check (or a fold, for the modulo policy)
//   and its identity, dense or compact lookup (SplitMix64, the tail row, the three probes
//   of the head table), in one pass over the ids. Per-feature constants (the tail hash's
//   seed and divisor, the offsets) are taken once per feature, and the tail's remainder
//   uses a precomputed reciprocal (or a mask, for a power of two) instead of a 64-bit
//   division.
// fused_remap_ranked: the same pass with the ranked heads too (a ranked feature's ids are
//   looked up in its 16-bit block offsets, not probed in the head table); rank_overlay,
//   the pass over fused_remap's rows that did it before, stays for the models that call it.
// fused_remap_bags, fused_remap_ranked_bags: the same from per-bag lengths (a served
//   request's), with the request's feature names, optional, for errors that name them.
// In both, a compact or ranked feature with at least twice as many ids in the batch as its
//   table has (at most 2**15: a small table) has the rows of all its ids computed once, by
//   the same lookup, and each id's read from them (remap_feature).
//
// NOTE: the arithmetic is the torch ops' exactly (torchrec_lhf.hashing, head_table): int64
// values that wrap modulo 2**64 (done in uint64), logical right shifts where the torch ops
// mask them.
#include <torch/extension.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

#include <c10/util/SmallVector.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

namespace {

// The served operators' optional feature names (`str[]? names`: the logical feature of each
// internal feature), read only to word an error.
using Names = std::optional<c10::List<std::string>>;

// "feature 'clicks'" where the caller named its features, else "internal feature 3".
std::string feature_text(const Names& names, int64_t j) {
  if (names.has_value() && j >= 0 && j < static_cast<int64_t>(names->size())) {
    return "feature '" + names->get(j) + "'";
  }
  return "internal feature " + std::to_string(j);
}

// ids are taken in blocks. A compact feature's block is hashed (the probe slots and tail rows
// of its ids, in loops the compiler vectorizes), its probe slots are prefetched (a training
// step has evicted the head table from the caches), and it is probed kDepth blocks later,
// while the slots of the blocks after it arrive: the probes' reads overlap instead of
// stalling in turn. (Timed inside the fused step of benchmarks.remap at pooling 4, one-off:
// 2.0 ms probing each block right after the next is hashed, 1.6 ms 3 deep; 2, 5 and 8 deep
// were no better, and 16 ids a block worse.)
constexpr int64_t kBlock = 32;
constexpr int64_t kGrain = 16384;
constexpr int64_t kDepth = 3;  // blocks hashed and prefetched ahead of the one probed
constexpr int64_t kReciprocalIds = 64;  // a feature's ids from which the tail divides by a multiply
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;  // hashing.seed_keys' multiplier

inline uint64_t finalize(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

// v % d for v < 2**62 and d >= 1, by a multiply: with l = ceil(log2 d), k = 62 + l and
// m = ceil(2**k / d), floor(v / d) = floor(m v / 2**k) for every v < 2**62, because
// m d - 2**k < d <= 2**l = 2**(k - 62) (Granlund and Montgomery, 1994); m < 2**63.
struct Divisor {
  uint64_t d = 1;
  uint64_t m = 1;
  int k = 62;
  // `reciprocal`: whether to take the multiplier (a 128-bit division: worth it for many ids,
  // not for a few, which divide; m == 0 marks that)
  void set(uint64_t divisor, bool reciprocal = true) {
    d = divisor;
    if (!reciprocal || (d & (d - 1)) == 0) {  // (a power of two takes a mask: mode())
      m = 0;
      return;
    }
    int l = 0;
    while (l < 64 && (uint64_t{1} << l) < d) ++l;
    k = 62 + l;
    const unsigned __int128 two_k = static_cast<unsigned __int128>(1) << k;
    m = static_cast<uint64_t>((two_k + d - 1) / d);
  }
  // how compact_hash takes the remainder: a mask where d is a power of two, else the
  // multiplier (mul_high) where there is one and k >= 64 (d >= 3), else a division
  int mode() const {
    if ((d & (d - 1)) == 0) return kMask;
    return m != 0 && k >= 64 ? kMultiply : kDivide;
  }
  enum Mode : int { kDivide = 0, kMultiply = 1, kMask = 2 };
};

// floor(m v / 2**64) from 32-bit halves: four 32 x 32 -> 64-bit products, which vectorize
// (vpmuludq), where a 64 x 64 -> 128-bit product does not
inline uint64_t mul_high(uint64_t v, uint64_t m) {
  const uint32_t vl = static_cast<uint32_t>(v), vh = static_cast<uint32_t>(v >> 32);
  const uint32_t ml = static_cast<uint32_t>(m), mh = static_cast<uint32_t>(m >> 32);
  const uint64_t ll = uint64_t{vl} * ml, lh = uint64_t{vl} * mh, hl = uint64_t{vh} * ml,
                 hh = uint64_t{vh} * mh;
  const uint64_t mid = (ll >> 32) + (lh & 0xFFFFFFFFULL) + (hl & 0xFFFFFFFFULL);
  return hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
}

// The compact heads' cuckoo table (torchrec_lhf/modules/head_table.py): packed int64
// entries (key << 32 | row), or int32/int64 keys (-1: empty) beside int16/int32 rows; an
// entry sits in one of the three slots its mixed hash gives. `slots` == 0: no heads.
struct Heads {
  const int64_t* packed = nullptr;
  const int32_t* keys32 = nullptr;
  const int64_t* keys64 = nullptr;
  const int16_t* rows16 = nullptr;
  const int32_t* rows32 = nullptr;
  uint64_t slots = 0;

  // the row of `key` (probed at `slot`), else `tail`, in the unpacked form (the packed
  // one is compact_probe's own loop)
  inline int64_t find(const uint64_t* slot, int64_t key, int64_t tail) const {
    // a key sits in one slot (two choices may share it): the largest slot that holds it
    uint64_t at = 0;
    int64_t hit = 0;
    for (int c = 0; c < 3; ++c) {
      const int64_t k = keys32 ? keys32[slot[c]] : keys64[slot[c]];
      const int64_t here = k == key;
      at = here && slot[c] > at ? slot[c] : at;
      hit |= here;
    }
    const int64_t row = rows16 ? rows16[at] : rows32[at];
    const int64_t mask = -hit;  // NOTE: a mask, not a branch: hits and misses alternate
    return (row & mask) | (tail & ~mask);
  }
};

Heads make_heads(const torch::Tensor& slot_keys, const torch::Tensor& slot_rows) {
  Heads heads;
  if (slot_keys.numel() == 0) return heads;
  TORCH_CHECK(slot_keys.is_contiguous() && slot_rows.is_contiguous());
  heads.slots = static_cast<uint64_t>(slot_keys.numel());
  TORCH_CHECK(heads.slots <= (uint64_t{1} << 31), "a head table has at most 2**31 slots, got ",
              heads.slots);
  if (slot_rows.numel() == 0) {  // packed
    TORCH_CHECK(slot_keys.scalar_type() == torch::kInt64, "packed heads must be int64");
    heads.packed = slot_keys.data_ptr<int64_t>();
    return heads;
  }
  TORCH_CHECK(slot_rows.numel() == slot_keys.numel(), "head keys and rows differ in size");
  if (slot_keys.scalar_type() == torch::kInt32) {
    heads.keys32 = slot_keys.data_ptr<int32_t>();
  } else {
    TORCH_CHECK(slot_keys.scalar_type() == torch::kInt64, "head keys must be int32 or int64");
    heads.keys64 = slot_keys.data_ptr<int64_t>();
  }
  if (slot_rows.scalar_type() == torch::kInt16) {
    heads.rows16 = slot_rows.data_ptr<int16_t>();
  } else {
    TORCH_CHECK(slot_rows.scalar_type() == torch::kInt32, "head rows must be int16 or int32");
    heads.rows32 = slot_rows.data_ptr<int32_t>();
  }
  return heads;
}

// `t` as a contiguous tensor of `type`: itself where it is one already (no dispatcher call:
// a one-sample request's lookup is cheaper than a handful of them)
inline torch::Tensor as(const torch::Tensor& t, c10::ScalarType type) {
  if (t.scalar_type() == type && t.is_contiguous()) return t;
  return t.to(type).contiguous();
}

// kRanked: a compact feature whose head is ranked (its rows are its ids' ranks, held as
// 16-bit offsets per block of 2**16 ids: torchrec_lhf/modules/head_rank.py); its ids are
// not in the cuckoo table, so they are not probed there
enum Kind : int { kIdentity = 0, kDense = 1, kCompact = 2, kRanked = 3 };

struct Feature {
  int kind = kIdentity;
  int64_t begin = 0, end = 0;
  uint64_t height = 0;
  int64_t offset = 0;  // dense: the mapping's start; compact: the key offset
  uint64_t seed_key = 0;
  uint64_t salt = 0;  // compact: XORed into the mixed hash for the probe slots only
  int64_t tail_offset = 0;
  Divisor tail;
  bool divided = false;  // a divided tail (a seed -d below -1): (id / quot.d) mod tail.d
  Divisor quot;
  int64_t rank_dir = 0;    // ranked: its directory's first entry in the blocks
  int64_t rank_last = 0;   // ranked: its directory's last (end) entry, relative to rank_dir
  int64_t rank_first = 0;  // ranked: the position of its first head id (its rank 0)
};

// The ranked heads of a module: the concatenated block directories (each block's first
// position in `off`, then the end), the biased 16-bit offsets (value - 2**15), and the fine
// directory (kFine entries per directory entry: the first position of each sixteenth of the
// block, 2**12 ids; an end entry's are all its position), whose entries a lookup reads.
constexpr int64_t kFine = 16;
constexpr int kFineBits = 12;  // 16 - log2(kFine)
struct RankIndex {
  const int32_t* blk = nullptr;
  const int16_t* off = nullptr;
  const int32_t* fine = nullptr;
  int64_t num_off = 0;
};

// A block of one compact feature's lookups, one array per quantity: the loops over it have
// no dependence from id to id, so the compiler vectorizes the hashing (AVX-512 or AVX2).
struct CompactBlock {
  alignas(64) int64_t key[kBlock];    // the head key (key offset + id)
  alignas(64) int64_t tail[kBlock];   // the tail row
  alignas(64) uint64_t slot[3][kBlock];  // the three probe slots
};

// floor(v / q.d) for each of `count` values v < 2**62 (a mask's shift, the multiplier or a
// division, as Divisor::mode says for the remainder): a divided tail's quotients
inline void quotients(const Divisor& q, int64_t count, const int64_t* in, int64_t* out) {
  const int mode = q.mode();
  if (mode == Divisor::kMask) {
    const int bits = __builtin_ctzll(q.d);
    for (int64_t b = 0; b < count; ++b) {
      out[b] = static_cast<int64_t>(static_cast<uint64_t>(in[b]) >> bits);
    }
  } else if (mode == Divisor::kMultiply) {
    const uint64_t m = q.m;
    const int shift = q.k - 64;
    for (int64_t b = 0; b < count; ++b) {
      out[b] = static_cast<int64_t>(mul_high(static_cast<uint64_t>(in[b]), m) >> shift);
    }
  } else {
    const uint64_t d = q.d;
    for (int64_t b = 0; b < count; ++b) {
      out[b] = static_cast<int64_t>(static_cast<uint64_t>(in[b]) / d);
    }
  }
}

// A block of one compact feature's (in-range) ids `id_b`: the mixed hash, the probe slots
// and the tail row of each (the remainder as Divisor::mode says).
template <int kMode, bool kSlots = true, bool kDivided = false>
inline void compact_hash(const Heads& heads, const Feature& f, int64_t count,
                         const int64_t* id_b, CompactBlock& blk) {
  const uint32_t slots = static_cast<uint32_t>(heads.slots);  // (<= 2**31: make_heads)
  const uint64_t seed = f.seed_key, salt = f.salt, d = f.tail.d, m = f.tail.m;
  const int shift = f.tail.k - 64;
  const int64_t tail_offset = f.tail_offset, offset = f.offset;
  // hashing.MODULO_SEED (whose key alone is 0): the tail row is id mod d, not of the mix;
  // a divided tail's (kDivided: its own instance, so that the others' loop is as before)
  // is (id / quot.d) mod d (a blend per id, no branch: the loop still vectorizes)
  const uint64_t plain = kDivided || seed == 0 ? ~uint64_t{0} : 0;
  alignas(64) int64_t quot[kDivided ? kBlock : 1];
  const int64_t* val_b = id_b;
  if constexpr (kDivided) {
    quotients(f.quot, count, id_b, quot);
    val_b = quot;
  }
  for (int64_t b = 0; b < count; ++b) {
    const uint64_t x = finalize(static_cast<uint64_t>(id_b[b]) + seed);
    if (kSlots) {
      const uint64_t p = x ^ salt;
      blk.slot[0][b] = (uint64_t{static_cast<uint32_t>(p)} * slots) >> 32;
      blk.slot[1][b] = (uint64_t{static_cast<uint32_t>(p >> 32)} * slots) >> 32;
      blk.slot[2][b] = (uint64_t{static_cast<uint32_t>(p >> 16)} * slots) >> 32;
    }
    const uint64_t v = ((x >> 2) & ~plain) | (static_cast<uint64_t>(val_b[b]) & plain);
    uint64_t r;
    if (kMode == Divisor::kMask) {
      r = v & (d - 1);
    } else {
      r = v - (kMode == Divisor::kMultiply ? mul_high(v, m) >> shift : v / d) * d;
    }
    blk.tail[b] = static_cast<int64_t>(r) + tail_offset;
    blk.key[b] = id_b[b] + offset;
  }
}

// The rows of a block hashed by compact_hash in a packed table, prefetching the slots of
// `next` (`kNext` ids: a whole block, or none) between its probes (one loop: a separate
// prefetch loop and a vectorized probe loop, with gathers, took twice as long after a
// training step). Per id: the entry ^ (key << 32) is the row where the key matches (below
// 2**32) and at least 2**32 elsewhere, so the smallest of the three is the head row if any.
template <typename I, int64_t kNext>
inline void probe_packed(const int64_t* packed, int64_t count, const CompactBlock& blk, I* out,
                         const CompactBlock* next) {
  for (int64_t b = 0; b < count; ++b) {
    if (kNext > 0) {
      __builtin_prefetch(packed + next->slot[0][b]);
      __builtin_prefetch(packed + next->slot[1][b]);
      __builtin_prefetch(packed + next->slot[2][b]);
    }
    const uint64_t k = static_cast<uint64_t>(blk.key[b]) << 32;
    const int64_t d0 = static_cast<int64_t>(static_cast<uint64_t>(packed[blk.slot[0][b]]) ^ k);
    const int64_t d1 = static_cast<int64_t>(static_cast<uint64_t>(packed[blk.slot[1][b]]) ^ k);
    const int64_t d2 = static_cast<int64_t>(static_cast<uint64_t>(packed[blk.slot[2][b]]) ^ k);
    int64_t m = d0 < d1 ? d0 : d1;
    m = m < d2 ? m : d2;
    const int64_t mask = ((m >> 32) - 1) >> 63;  // all ones where a key matched
    const int64_t tail = blk.tail[b];
    out[b] = static_cast<I>(((m ^ tail) & mask) ^ tail);
  }
}

// Prefetch a hashed block's probe slots.
inline void compact_prefetch(const Heads& heads, int64_t count, const CompactBlock& blk) {
  const char* base = heads.packed  ? reinterpret_cast<const char*>(heads.packed)
                     : heads.keys32 ? reinterpret_cast<const char*>(heads.keys32)
                                    : reinterpret_cast<const char*>(heads.keys64);
  const int width = heads.packed || heads.keys64 ? 8 : 4;
  for (int c = 0; c < 3; ++c) {
    for (int64_t b = 0; b < count; ++b) __builtin_prefetch(base + blk.slot[c][b] * width);
  }
}

// The rows of a block hashed by compact_hash (head or tail), prefetching the slots of `next`
// (`next_count` ids) meanwhile.
template <typename I>
inline void compact_probe(const Heads& heads, int64_t count, const CompactBlock& blk, I* out,
                          const CompactBlock* next, int64_t next_count) {
  if (heads.packed && count == kBlock && next_count == kBlock) {  // the common case
    probe_packed<I, kBlock>(heads.packed, kBlock, blk, out, next);
    return;
  }
  if (next_count > 0) compact_prefetch(heads, next_count, *next);
  if (heads.packed) {
    probe_packed<I, 0>(heads.packed, count, blk, out, nullptr);
    return;
  }
  for (int64_t b = 0; b < count; ++b) {
    const uint64_t slot[3] = {blk.slot[0][b], blk.slot[1][b], blk.slot[2][b]};
    out[b] = static_cast<I>(heads.find(slot, blk.key[b], blk.tail[b]));
  }
}

// (rank_overlay's, below:) where t would sit in the sorted, distinct [lo, hi), interpolated
// between its first and last values (a block's head ids are often contiguous, and then the
// guess is exact; spread ids land near it). Reads the two ends, which the few blocks of a
// table keep in the caches.
inline const int16_t* interpolate(const int16_t* lo, const int16_t* hi, int16_t t) {
  const int64_t n = hi - lo;
  if (n <= 8) return lo;
  const int64_t a = lo[0], z = hi[-1];
  if (t <= a) return lo;
  if (t > z) return hi - 1;
  const int64_t d = static_cast<int64_t>(t) - a;
  if (z - a == n - 1) return lo + d;  // contiguous: exact, no division
  // (a double division: its throughput is a few cycles, a 64-bit integer one's tens)
  const int64_t i = static_cast<int64_t>(static_cast<double>(d) * static_cast<double>(n - 1) /
                                         static_cast<double>(z - a));  // z > a: n > 1 distinct
  return lo + std::min<int64_t>(i, n - 1);
}

// The first of the sorted [lo, hi) not below t (std::lower_bound's answer), searched from
// g (interpolate's guess): by doubling steps from it, up or down, then a bisection in the
// last step's range.
inline const int16_t* search(const int16_t* lo, const int16_t* hi, const int16_t* g, int16_t t) {
  if (hi - lo <= 8) return std::lower_bound(lo, hi, t);
  if (*g < t) {  // the answer is above g: double the step until past it
    int64_t step = 1;
    const int16_t* a = g + 1;
    while (a + step < hi && a[step - 1] < t) step <<= 1;
    return std::lower_bound(a, std::min(a + step, hi), t);
  }
  int64_t step = 1;  // the answer is at g or below: double the step down
  while (g - step > lo && *(g - step) >= t) step <<= 1;
  return std::lower_bound(std::max(g - step, lo), g, t);
}

// compact_hash with the remainder as `mode` (Divisor::mode) says.
template <bool kSlots>
inline void hash_block(int mode, const Heads& heads, const Feature& f, int64_t count,
                       const int64_t* id_b, CompactBlock& blk) {
  if (f.divided) {  // (QR's quotient)
    if (mode == Divisor::kMultiply) {
      compact_hash<Divisor::kMultiply, kSlots, true>(heads, f, count, id_b, blk);
    } else if (mode == Divisor::kMask) {
      compact_hash<Divisor::kMask, kSlots, true>(heads, f, count, id_b, blk);
    } else {
      compact_hash<Divisor::kDivide, kSlots, true>(heads, f, count, id_b, blk);
    }
    return;
  }
  if (mode == Divisor::kMultiply) {
    compact_hash<Divisor::kMultiply, kSlots>(heads, f, count, id_b, blk);
  } else if (mode == Divisor::kMask) {
    compact_hash<Divisor::kMask, kSlots>(heads, f, count, id_b, blk);
  } else {
    compact_hash<Divisor::kDivide, kSlots>(heads, f, count, id_b, blk);
  }
}

// `count` ids of one feature from `in`, folded into [0, N) where `modulo`, into `dst` as
// int64; an id still out of range is stored as 0 (nothing is read out of bounds) and
// makes the result nonzero.
template <typename I>
inline uint64_t checked_ids(const I* in, int64_t count, const Feature& f, bool modulo,
                            int64_t* dst) {
  const int64_t h = static_cast<int64_t>(f.height);
  uint64_t bad = 0;
  for (int64_t b = 0; b < count; ++b) {
    int64_t id = static_cast<int64_t>(in[b]);
    if (modulo) {
      id %= h;
      id += id < 0 ? h : 0;
    }
    const uint64_t outside = static_cast<uint64_t>(id) >= f.height;
    bad |= outside;
    dst[b] = outside ? 0 : id;
  }
  return bad;
}

// A ranked feature's sixteenth of a block (2**12 ids): its head ids' first position, their
// count, its first (biased) offset, and whether the rank is arithmetic there (no head ids,
// or contiguous ones: the rank of t is t - a where that is below n).
// `scale`: (n - 1) / (z - a) in 32-bit fixed point (z its last offset), for a search's
// interpolated first guess.
struct RankSpan {
  int64_t lo = 0, n = 0, a = 0, direct = 1;
  uint64_t scale = 0;
};

constexpr int64_t kWindow = 32;  // a search's range on either side of its guess
// a ranked feature's ids taken at a time: its searches' first reads are prefetched for all
// of them before the first search, which leaves the prefetches time to arrive
constexpr int64_t kRankBlock = 256;
// a compact or ranked feature of at least kSmallRatio times as many ids in the batch as its
// table has, and at most kSmallTable of them: every id's row computed once for the batch
constexpr int64_t kSmallTable = int64_t{1} << 15;
constexpr int64_t kSmallRatio = 2;

inline RankSpan rank_span(const RankIndex& r, const Feature& f, int64_t k) {
  const int32_t* dir = r.fine + kFine * f.rank_dir;
  const int64_t lo = dir[k], hi = dir[k + 1];
  const int64_t n = hi - lo;
  const int64_t last_off = r.num_off - 1;  // (>= 0: checked where the feature was set up)
  // the span's first and last offsets (any entry where the span is empty: not used)
  const int64_t a = r.off[std::min(lo, last_off)];
  const int64_t z = r.off[std::max<int64_t>(std::min(hi - 1, last_off), 0)];
  // NOTE: no branch (head and tail ids alternate): integer arithmetic on the comparisons
  const int64_t direct = static_cast<int64_t>(n == 0) | static_cast<int64_t>(z - a == n - 1);
  // (z > a where not direct: n >= 2 distinct offsets; (n - 1) << 32 < 2**48)
  const uint64_t scale = direct ? 0 : (static_cast<uint64_t>(n - 1) << 32) / (z - a);
  return {lo, n, a, direct, scale};
}

// The ranks of up to kRankBlock of one ranked feature's (in-range) ids `id_b` found in its
// head (their position less the feature's first), written to `out`; the others' indices
// go to `miss_at` (their count returned), for their tail rows. An id whose span (a
// sixteenth of a block, rank_span) holds contiguous head ids, or none, is answered from the
// span's first offset and count, without a search or a read of the offsets between, and
// without a branch (head and tail ids alternate). The other ids' positions are bisected
// side by side. `spans` (kSpans): the feature's spans summarized beforehand, one read an
// id instead of three dependent ones. (The first pass writes an id's row and its place in
// one of the two lists, nothing more: it kept four more arrays per id before, and the
// remap took longer (docs/PERFORMANCE.md); the searched ids' spans are read again, from the
// caches.)
template <typename I, bool kSpans>
inline int64_t rank_block(const RankIndex& r, const Feature& f, const RankSpan* spans,
                          int64_t count, const int64_t* id_b, I* out, int64_t* miss_at) {
  const int16_t* off = r.off;
  const int64_t last_off = r.num_off - 1;
  const int64_t first = f.rank_first;
  const int64_t last_k = kFine * f.rank_last;
  int64_t misses = 0, searched = 0;
  alignas(64) int64_t search_at[kRankBlock];
  for (int64_t b = 0; b < count; ++b) {
    // direct: found where t - a is below n, else a miss; the others searched below (each
    // id appended to the list it belongs to, without a branch)
    const int64_t id = id_b[b];
    const int64_t k = std::min<int64_t>(id >> kFineBits, last_k);
    const RankSpan sp = kSpans ? spans[k] : rank_span(r, f, k);
    const int64_t d = (id & 0xFFFF) - 32768 - sp.a;
    const int64_t hit = static_cast<uint64_t>(d) < static_cast<uint64_t>(sp.n);
    out[b] = static_cast<I>(sp.lo + d - first);  // (rewritten where not found)
    miss_at[misses] = b;
    misses += sp.direct & (hit ^ 1);
    search_at[searched] = b;
    searched += sp.direct ^ 1;
  }
  if (searched == 0) return misses;
  // the first position not below t in each searched id's span, by bisections run side by
  // side (Khuong and Morin's branchless form: the ids' loads overlap and no branch turns
  // on an offset; an id whose range is down to one entry keeps it), as many steps as the
  // largest range needs
  alignas(64) int64_t lo_s[kRankBlock];
  alignas(64) int64_t hi_s[kRankBlock];
  alignas(64) int64_t base_s[kRankBlock];
  alignas(64) int64_t len_s[kRankBlock];
  alignas(64) int64_t t_s[kRankBlock];
  for (int64_t s = 0; s < searched; ++s) {  // the guesses' lines and the window's ends
    const int64_t id = id_b[search_at[s]];
    const int64_t k = std::min<int64_t>(id >> kFineBits, last_k);
    const RankSpan sp = kSpans ? spans[k] : rank_span(r, f, k);
    const int64_t t = (id & 0xFFFF) - 32768;
    const int64_t g = std::min(
        sp.lo + static_cast<int64_t>(
                    (static_cast<uint64_t>(std::max<int64_t>(t - sp.a, 0)) * sp.scale) >> 32),
        sp.lo + sp.n - 1);
    lo_s[s] = sp.lo;
    hi_s[s] = sp.lo + sp.n;
    base_s[s] = g;
    t_s[s] = t;
    __builtin_prefetch(off + g);
    __builtin_prefetch(off + std::max(g - kWindow - 1, sp.lo));
    __builtin_prefetch(off + std::min(g + kWindow, sp.lo + sp.n) - 1);
  }
  int64_t longest = 0;
  for (int64_t s = 0; s < searched; ++s) {
    // the range: kWindow entries on either side of the guess where the answer lies there
    // (the entries just outside it say so), else the whole span
    const int64_t lo = lo_s[s], hi = hi_s[s];  // (hi - lo >= 2: not direct)
    const int64_t t = t_s[s], g = base_s[s];
    const int64_t w_lo = std::max(lo, g - kWindow);
    const int64_t w_hi = std::min(hi, g + kWindow);
    const int64_t inside =
        (static_cast<int64_t>(w_lo == lo) | static_cast<int64_t>(off[std::max(w_lo - 1, lo)] < t)) &
        (static_cast<int64_t>(w_hi == hi) | static_cast<int64_t>(off[w_hi - 1] >= t));
    base_s[s] = inside ? w_lo : lo;
    len_s[s] = inside ? w_hi - w_lo : hi - lo;
    longest = std::max(longest, len_s[s]);
  }
  for (; longest > 1; longest -= longest >> 1) {
    for (int64_t s = 0; s < searched; ++s) {
      const int64_t half = len_s[s] >> 1;
      const int64_t below = static_cast<int64_t>(off[base_s[s] + half] < t_s[s]);
      base_s[s] += half & -below;
      len_s[s] -= half;
    }
  }
  for (int64_t s = 0; s < searched; ++s) {
    const int64_t b = search_at[s];
    const int64_t at = base_s[s] + static_cast<int64_t>(off[base_s[s]] < t_s[s]);
    const int64_t found = static_cast<int64_t>(at < hi_s[s]) &
                          static_cast<int64_t>(off[std::min(at, last_off)] == t_s[s]);
    out[b] = static_cast<I>(at - first);
    miss_at[misses] = b;
    misses += found ^ 1;
  }
  return misses;
}

// fn(begin, end) over one feature's ids [f.begin, f.end), split over the threads in grains.
// NOTE: a feature of at most a grain runs in this thread: parallel_for's own setup (its
// guards, the thread count) is a fair share of a one-sample request's lookup.
template <typename Fn>
inline void over_ids(const Feature& f, const Fn& fn) {
  if (f.end - f.begin <= kGrain) {
    fn(f.begin, f.end);
  } else {
    at::parallel_for(f.begin, f.end, kGrain, fn);
  }
}

// One feature's ids [f.begin, f.end) -> rows; returns whether an id was out of range
// (then the output is not to be used). `modulo` folds ids into [0, N) first. A compact
// feature with heads is pipelined: a block's slots are prefetched while the block before
// it is probed, so that the probes (cold: a training step evicts the table) have a block's
// work to arrive in.
template <typename I, typename M>
bool remap_feature(const I* ids, I* out, const Feature& f, const Heads& heads,
                   const RankIndex& ranks, const M* mapping, bool modulo) {
  std::atomic<bool> any_bad{false};
  const int64_t num_ids = f.end - f.begin;
  const int64_t height = static_cast<int64_t>(f.height);
  if ((f.kind == kCompact || f.kind == kRanked) && height >= 1 && height <= kSmallTable &&
      kSmallRatio * height <= num_ids) {
    // a small table against its ids in the batch: the rows of all its ids, by the same
    // lookup, then one read an id (of a table the caches hold) instead of a hash and a
    // probe or a search
    std::vector<I> every(height), table(height);
    std::iota(every.begin(), every.end(), I{0});
    Feature all = f;
    all.begin = 0;
    all.end = height;
    remap_feature<I, M>(every.data(), table.data(), all, heads, ranks, mapping, false);
    const I* rows = table.data();
    const auto read = [&](int64_t begin, int64_t end) {
      uint64_t bad = 0;
      int64_t id_b[kRankBlock];
      for (int64_t start = begin; start < end; start += kRankBlock) {
        const int64_t count = std::min(end - start, kRankBlock);
        bad |= checked_ids(ids + start, count, f, modulo, id_b);  // (out of range: 0)
        for (int64_t b = 0; b < count; ++b) out[start + b] = rows[id_b[b]];
      }
      if (bad) any_bad.store(true, std::memory_order_relaxed);
    };
    over_ids(f, read);
    return any_bad.load();
  }
  // a ranked feature of more ids than sub-blocks: those summarized once (a few reads each)
  std::vector<RankSpan> span_k;
  const int64_t num_spans = kFine * f.rank_last + 1;
  if (f.kind == kRanked && f.end - f.begin > num_spans) {
    span_k.resize(num_spans);
    for (int64_t k = 0; k < num_spans; ++k) span_k[k] = rank_span(ranks, f, k);
  }
  const RankSpan* spans = span_k.empty() ? nullptr : span_k.data();
  const auto body = [&](int64_t begin, int64_t end) {
    uint64_t bad = 0;
    int64_t id_b[kBlock];
    CompactBlock ring[kDepth + 1];
    int64_t ring_start[kDepth + 1], ring_count[kDepth + 1];
    int64_t hashed = 0, probed = 0;  // blocks
    const bool has_heads = heads.slots > 0;
    const int mode = f.tail.mode();
    if (f.kind == kRanked) {  // the ranks, then the others' tail rows (no cuckoo probes)
      int64_t rank_ids[kRankBlock];
      int64_t miss_at[kRankBlock];
      CompactBlock& blk = ring[0];
      for (int64_t start = begin; start < end; start += kRankBlock) {
        const int64_t count = std::min(end - start, kRankBlock);
        bad |= checked_ids(ids + start, count, f, modulo, rank_ids);
        const int64_t misses =
            spans != nullptr
                ? rank_block<I, true>(ranks, f, spans, count, rank_ids, out + start, miss_at)
                : rank_block<I, false>(ranks, f, nullptr, count, rank_ids, out + start, miss_at);
        for (int64_t m0 = 0; m0 < misses; m0 += kBlock) {  // (gathered: the hashes vectorize)
          const int64_t part = std::min(misses - m0, kBlock);
          for (int64_t m = 0; m < part; ++m) id_b[m] = rank_ids[miss_at[m0 + m]];
          hash_block<false>(mode, heads, f, part, id_b, blk);
          for (int64_t m = 0; m < part; ++m) {
            out[start + miss_at[m0 + m]] = static_cast<I>(blk.tail[m]);
          }
        }
      }
      if (bad) any_bad.store(true, std::memory_order_relaxed);
      return;
    }
    for (int64_t start = begin; start < end; start += kBlock) {
      const int64_t count = end - start < kBlock ? end - start : kBlock;
      bad |= checked_ids(ids + start, count, f, modulo, id_b);
      if (f.kind == kIdentity) {
        for (int64_t b = 0; b < count; ++b) out[start + b] = static_cast<I>(id_b[b]);
        continue;
      }
      if (f.kind == kDense) {
        const M* base = mapping + f.offset;
        for (int64_t b = 0; b < count; ++b) __builtin_prefetch(base + id_b[b]);
        for (int64_t b = 0; b < count; ++b) out[start + b] = static_cast<I>(base[id_b[b]]);
        continue;
      }
      const int at = static_cast<int>(hashed % (kDepth + 1));
      CompactBlock& blk = ring[at];
      hash_block<true>(mode, heads, f, count, id_b, blk);
      if (!has_heads) {  // every id is tail
        for (int64_t b = 0; b < count; ++b) out[start + b] = static_cast<I>(blk.tail[b]);
        continue;
      }
      ring_start[at] = start;
      ring_count[at] = count;
      if (hashed - probed == kDepth) {  // the oldest block, prefetching this one meanwhile
        const int o = static_cast<int>(probed % (kDepth + 1));
        compact_probe<I>(heads, ring_count[o], ring[o], out + ring_start[o], &blk, count);
        ++probed;
      } else {
        compact_prefetch(heads, count, blk);
      }
      ++hashed;
    }
    for (; probed < hashed; ++probed) {
      const int o = static_cast<int>(probed % (kDepth + 1));
      compact_probe<I>(heads, ring_count[o], ring[o], out + ring_start[o], nullptr, 0);
    }
    if (bad) any_bad.store(true, std::memory_order_relaxed);
  };
  over_ids(f, body);
  return any_bad.load();
}

template <typename I, typename M>
void remap_all(const torch::Tensor& ids, torch::Tensor& out, c10::ArrayRef<Feature> feats,
               const Heads& heads, const RankIndex& ranks, const M* mapping, bool modulo,
               const Names& names) {
  const I* in = ids.data_ptr<I>();
  I* rows = out.data_ptr<I>();
  for (size_t j = 0; j < feats.size(); ++j) {
    const Feature& f = feats[j];
    if (!remap_feature<I, M>(in, rows, f, heads, ranks, mapping, modulo)) continue;
    for (int64_t i = f.begin; i < f.end; ++i) {
      const int64_t id = static_cast<int64_t>(in[i]);
      TORCH_CHECK(id >= 0 && static_cast<uint64_t>(id) < f.height, feature_text(names, j),
                  ": id ", id, " is out of range [0, ", f.height, ")");
    }
  }
}

}  // namespace

// ids (int32 or int64, laid out per internal feature, `lengths[j]` ids of feature j) ->
// rows in the ids' dtype. Per feature j: identity where offset[j] == -1 and it is not
// compact, `mapping[offset[j] + id]` where dense, the head table's row or the tail hash's
// where compact. Every id is range-checked against height[j] (a RuntimeError naming the
// feature and the id), or folded into [0, height[j]) with `modulo`.
//
// The operator torchrec_lhf::fused_remap_ranked (its schema is defined in compact_kernel.py,
// which also registers a fallback of torch ops): `seeds` are the tail hashes' seeds, whose
// keys (seed + 1) * golden are taken here. The ranked heads (head_rank.py: `blocks`,
// `offsets`, and per feature its directory's start `dir` and last entry `last`, 0 where it
// is not ranked; `steps` is only the torch fallback's) are looked up in the same pass: a
// ranked feature's ids are not probed in the cuckoo table. Empty `blocks`: none (the
// operator torchrec_lhf::fused_remap, whose schema exported models call).
// `names`: see Names (the bags operators' callers pass them; errors then name the features).
// `salt_in`: per feature, what is XORed into a compact feature's mixed hash for its probe
// slots only, not its tail row (head_table.probe_salts: 0 but where compact mappings share
// a seed, whose same ids would otherwise share their slots); empty: none.
torch::Tensor remap_named(const torch::Tensor& ids, c10::IntArrayRef lengths,
                          const torch::Tensor& offset, const torch::Tensor& height,
                          const torch::Tensor& mapping, const torch::Tensor& slot_keys,
                          const torch::Tensor& slot_rows, const torch::Tensor& seeds_in,
                          const torch::Tensor& tail_offset, const torch::Tensor& tail_rows,
                          const torch::Tensor& is_compact, const torch::Tensor& blocks,
                          const torch::Tensor& offsets, const torch::Tensor& dir,
                          const torch::Tensor& last, const torch::Tensor& fine, bool modulo,
                          const Names& names, const torch::Tensor& salt_in) {
  TORCH_CHECK(ids.device().is_cpu() && ids.is_contiguous());
  TORCH_CHECK(ids.scalar_type() == torch::kInt64 || ids.scalar_type() == torch::kInt32);
  const int64_t num = static_cast<int64_t>(lengths.size());
  // NOTE: the offsets are int32 where they fit (read as they are: a conversion would cost an
  // allocation per call, a fair share of a one-sample batch's remap)
  const bool off32 = offset.scalar_type() == torch::kInt32;
  const auto off = as(offset, off32 ? torch::kInt32 : torch::kInt64);
  const auto hgt = as(height, torch::kInt64);
  TORCH_CHECK(off.numel() == num && hgt.numel() == num, "per-feature tensors must have ", num,
              " entries");
  const int32_t* off_32 = off32 ? off.data_ptr<int32_t>() : nullptr;
  const int64_t* off_64 = off32 ? nullptr : off.data_ptr<int64_t>();
  const int64_t* hgt_64 = hgt.data_ptr<int64_t>();
  const bool any_compact = is_compact.numel() > 0;
  torch::Tensor comp, seeds, t_off, t_rows, salts;
  if (any_compact) {
    comp = as(is_compact, torch::kBool);
    seeds = as(seeds_in, torch::kInt64);
    t_off = as(tail_offset, torch::kInt64);
    t_rows = as(tail_rows, torch::kInt64);
    TORCH_CHECK(comp.numel() == num && seeds.numel() == num && t_off.numel() == num &&
                t_rows.numel() == num);
    if (salt_in.numel() > 0) {
      salts = as(salt_in, torch::kInt64);
      TORCH_CHECK(salts.numel() == num, "probe salts must have ", num, " entries (or none), got ",
                  salts.numel());
    }
  }
  const Heads heads = any_compact ? make_heads(slot_keys, slot_rows) : Heads{};
  RankIndex ranks;
  torch::Tensor dir_t, last_t;
  const int64_t* dir_p = nullptr;
  const int64_t* last_p = nullptr;
  if (any_compact && blocks.numel() > 0) {
    TORCH_CHECK(blocks.scalar_type() == torch::kInt32 && offsets.scalar_type() == torch::kInt16 &&
                    blocks.is_contiguous() && offsets.is_contiguous(),
                "ranked heads: blocks must be contiguous int32 and offsets int16");
    dir_t = as(dir, torch::kInt64);
    last_t = as(last, torch::kInt64);
    TORCH_CHECK(dir_t.numel() == num && last_t.numel() == num, "per-feature tensors must have ",
                num, " entries");
    dir_p = dir_t.data_ptr<int64_t>();
    last_p = last_t.data_ptr<int64_t>();
    TORCH_CHECK(fine.scalar_type() == torch::kInt32 && fine.is_contiguous() &&
                    fine.numel() == kFine * blocks.numel(),
                "ranked heads: the fine directory must be contiguous int32 of ", kFine,
                " entries per block entry");
    ranks.blk = blocks.data_ptr<int32_t>();
    ranks.off = offsets.data_ptr<int16_t>();
    ranks.fine = fine.data_ptr<int32_t>();
    ranks.num_off = offsets.numel();
  }
  const bool* comp_p = any_compact ? comp.data_ptr<bool>() : nullptr;
  const int64_t* seeds_p = any_compact ? seeds.data_ptr<int64_t>() : nullptr;
  const int64_t* t_off_p = any_compact ? t_off.data_ptr<int64_t>() : nullptr;
  const int64_t* t_rows_p = any_compact ? t_rows.data_ptr<int64_t>() : nullptr;
  const int64_t* salt_p = salts.defined() ? salts.data_ptr<int64_t>() : nullptr;
  c10::SmallVector<Feature, 64> feats(num);
  int64_t at = 0;
  for (int64_t j = 0; j < num; ++j) {
    Feature& f = feats[j];
    f.begin = at;
    at += lengths[j];
    f.end = at;
    f.height = static_cast<uint64_t>(hgt_64[j]);
    f.offset = off32 ? static_cast<int64_t>(off_32[j]) : off_64[j];
    if (any_compact && comp_p[j]) {
      f.kind = kCompact;
      // hashing.seed_keys: (seed + 1) * golden, wrapping
      f.seed_key = (static_cast<uint64_t>(seeds_p[j]) + 1) * kGolden;
      f.salt = salt_p != nullptr ? static_cast<uint64_t>(salt_p[j]) : 0;
      f.tail_offset = t_off_p[j];
      const int64_t rows = t_rows_p[j];
      TORCH_CHECK(rows >= 1, "internal feature ", j, ": tail rows must be >= 1, got ", rows);
      // (the remainder takes values below 2**62: ids of a MODULO_SEED tail are its value,
      // a divided tail's quotients at most them)
      TORCH_CHECK(seeds_p[j] >= 0 || f.height <= (uint64_t{1} << 62), "internal feature ", j,
                  ": a modulo or divided tail needs a height of at most 2**62, got ", f.height);
      f.tail.set(static_cast<uint64_t>(rows), lengths[j] >= kReciprocalIds);
      if (seeds_p[j] < -1) {  // hashing.quotient_seed: -d
        TORCH_CHECK(seeds_p[j] >= -(int64_t{1} << 62), "internal feature ", j,
                    ": a divided tail's seed must be at least -2**62, got ", seeds_p[j]);
        f.divided = true;
        f.quot.set(static_cast<uint64_t>(-seeds_p[j]), lengths[j] >= kReciprocalIds);
      }
      if (last_p != nullptr && last_p[j] > 0) {
        const int64_t base = dir_p[j], nb = last_p[j];
        TORCH_CHECK(base >= 0 && base + nb + 1 < blocks.numel(), "internal feature ", j,
                    ": its directory is outside the ", blocks.numel(), " entries");
        TORCH_CHECK(ranks.num_off > 0 && ranks.blk[base] >= 0 && ranks.blk[base] <=
                    ranks.blk[base + nb] && ranks.blk[base + nb] <= ranks.num_off,
                    "internal feature ", j, ": its ranked head [", ranks.blk[base], ", ",
                    ranks.blk[base + nb], ") is outside the ", ranks.num_off, " offsets");
        TORCH_CHECK(ranks.fine[kFine * base] == ranks.blk[base] &&
                        ranks.fine[kFine * (base + nb)] == ranks.blk[base + nb],
                    "internal feature ", j, ": its fine directory disagrees with its blocks");
        f.kind = kRanked;
        f.rank_dir = base;
        f.rank_last = nb;
        f.rank_first = ranks.blk[base];
      }
    } else {
      TORCH_CHECK(last_p == nullptr || last_p[j] == 0, "internal feature ", j,
                  " has a ranked head but is not compact");
      f.kind = f.offset == -1 ? kIdentity : kDense;
      TORCH_CHECK(f.kind == kIdentity || (f.offset >= 0 && f.offset + static_cast<int64_t>(
                  f.height) <= mapping.numel()), "internal feature ", j, ": its mapping [",
                  f.offset, ", ", f.offset + static_cast<int64_t>(f.height),
                  ") is outside the mapping's ", mapping.numel(), " entries");
    }
  }
  TORCH_CHECK(at == ids.numel(), "the lengths add up to ", at, " ids, but the batch holds ",
              ids.numel(), ": the lengths and values disagree");
  auto out = torch::empty_like(ids);
  const bool int64_ids = ids.scalar_type() == torch::kInt64;
  const auto map_t = mapping.is_contiguous() ? mapping : mapping.contiguous();
  AT_DISPATCH_INTEGRAL_TYPES(map_t.scalar_type(), "fused_remap", [&] {
    const scalar_t* map = map_t.numel() > 0 ? map_t.data_ptr<scalar_t>() : nullptr;
    if (int64_ids) {
      remap_all<int64_t, scalar_t>(ids, out, feats, heads, ranks, map, modulo, names);
    } else {
      remap_all<int32_t, scalar_t>(ids, out, feats, heads, ranks, map, modulo, names);
    }
  });
  return out;
}

// An empty int32 tensor, the absent ranked heads' arguments: made once (allocated on every
// call, it was about a tenth of what the remap adds to a one-sample request) and never freed
// (a static tensor's destructor could run after libtorch's at exit).
const torch::Tensor& no_tensor() {
  static const torch::Tensor* const none = new torch::Tensor(torch::empty({0}, torch::kInt32));
  return *none;
}

// The operators' optional probe salts (`Tensor? salt=None`: models scripted before them call
// the operators without, and their head tables were built without salts), or none.
using Salt = std::optional<torch::Tensor>;
const torch::Tensor& salt_or_none(const Salt& salt) {
  return salt.has_value() ? *salt : no_tensor();
}

// The operator torchrec_lhf::fused_remap_ranked: remap_named with no names.
torch::Tensor fused_remap_ranked(const torch::Tensor& ids, c10::IntArrayRef lengths,
                                 const torch::Tensor& offset, const torch::Tensor& height,
                                 const torch::Tensor& mapping, const torch::Tensor& slot_keys,
                                 const torch::Tensor& slot_rows, const torch::Tensor& seeds,
                                 const torch::Tensor& tail_offset, const torch::Tensor& tail_rows,
                                 const torch::Tensor& is_compact, const torch::Tensor& blocks,
                                 const torch::Tensor& offsets, const torch::Tensor& dir,
                                 const torch::Tensor& last, const torch::Tensor& steps,
                                 const torch::Tensor& fine, bool modulo, const Salt& salt) {
  (void)steps;
  return remap_named(ids, lengths, offset, height, mapping, slot_keys, slot_rows, seeds,
                     tail_offset, tail_rows, is_compact, blocks, offsets, dir, last, fine, modulo,
                     std::nullopt, salt_or_none(salt));
}

// The operator torchrec_lhf::fused_remap: fused_remap_ranked without ranked heads.
torch::Tensor fused_remap(const torch::Tensor& ids, c10::IntArrayRef lengths,
                          const torch::Tensor& offset, const torch::Tensor& height,
                          const torch::Tensor& mapping, const torch::Tensor& slot_keys,
                          const torch::Tensor& slot_rows, const torch::Tensor& seeds,
                          const torch::Tensor& tail_offset, const torch::Tensor& tail_rows,
                          const torch::Tensor& is_compact, bool modulo, const Salt& salt) {
  const torch::Tensor& none = no_tensor();
  return remap_named(ids, lengths, offset, height, mapping, slot_keys, slot_rows, seeds,
                     tail_offset, tail_rows, is_compact, none, none, none, none, none, modulo,
                     std::nullopt, salt_or_none(salt));
}

// Names, where given, must name each of the `num` internal features.
void check_names(const Names& names, int64_t num) {
  TORCH_CHECK(!names.has_value() || static_cast<int64_t>(names->size()) == num, "names has ",
              names.has_value() ? names->size() : 0, " entries; expected one per internal "
              "feature (", num, ")");
}

// The ids of each of `num` features from the per-bag lengths `(num * B,)` (a
// KeyedJaggedTensor's `lengths`): the sum of its B bags' lengths.
c10::SmallVector<int64_t, 64> bag_sums(const torch::Tensor& bag_lengths, int64_t num,
                                       const Names& names) {
  const int64_t bags = bag_lengths.numel();
  TORCH_CHECK(bag_lengths.device().is_cpu() && bag_lengths.dim() == 1 &&
                  at::isIntegralType(bag_lengths.scalar_type(), /*includeBool=*/false),
              "bag lengths must be a 1-D CPU tensor of integers, got ",
              bag_lengths.scalar_type(), " of shape ", bag_lengths.sizes());
  TORCH_CHECK(num > 0 ? bags % num == 0 : bags == 0, "the bag lengths' ", bags,
              " entries are not a batch of ", num, " features");
  const auto bl = as(bag_lengths, torch::kInt64);
  const int64_t* b = bl.data_ptr<int64_t>();
  const int64_t stride = num > 0 ? bags / num : 0;
  c10::SmallVector<int64_t, 64> lengths(num, 0);
  int64_t negative = 0;  // (the sums vectorize: one test after them, not one per bag)
  for (int64_t j = 0; j < num; ++j) {
    int64_t total = 0;
    for (int64_t i = j * stride; i < (j + 1) * stride; ++i) {
      total += b[i];
      negative |= b[i];
    }
    lengths[j] = total;
  }
  if (negative < 0) {
    for (int64_t i = 0; i < bags; ++i) {
      TORCH_CHECK(b[i] >= 0, "lengths[", i, "] = ", b[i], " (", feature_text(names, i / stride),
                  ", sample ", i % stride,
                  ") is negative; expected ids per feature and sample >= 0");
    }
  }
  return lengths;
}

// fused_remap where the ids per feature are not known on the host but the per-bag lengths
// are at hand (a KeyedJaggedTensor's `lengths`, `(J * B,)`, J = offset's entries): each
// feature's ids are the sum of its B bags' lengths, taken here. The operator
// torchrec_lhf::fused_remap_bags: TorchScript then needs no per-key lengths (their sum and
// host list cost more than the whole lookup of a one-sample request).
torch::Tensor fused_remap_bags(const torch::Tensor& ids, const torch::Tensor& bag_lengths,
                               const torch::Tensor& offset, const torch::Tensor& height,
                               const torch::Tensor& mapping, const torch::Tensor& slot_keys,
                               const torch::Tensor& slot_rows, const torch::Tensor& seeds,
                               const torch::Tensor& tail_offset, const torch::Tensor& tail_rows,
                               const torch::Tensor& is_compact, bool modulo, Names names,
                               const Salt& salt) {
  check_names(names, offset.numel());
  const auto lengths = bag_sums(bag_lengths, offset.numel(), names);
  const torch::Tensor& none = no_tensor();
  return remap_named(ids, lengths, offset, height, mapping, slot_keys, slot_rows, seeds,
                     tail_offset, tail_rows, is_compact, none, none, none, none, none, modulo,
                     names, salt_or_none(salt));
}

// fused_remap_ranked with the per-bag lengths (the operator
// torchrec_lhf::fused_remap_ranked_bags; see fused_remap_bags).
torch::Tensor fused_remap_ranked_bags(
    const torch::Tensor& ids, const torch::Tensor& bag_lengths, const torch::Tensor& offset,
    const torch::Tensor& height, const torch::Tensor& mapping, const torch::Tensor& slot_keys,
    const torch::Tensor& slot_rows, const torch::Tensor& seeds, const torch::Tensor& tail_offset,
    const torch::Tensor& tail_rows, const torch::Tensor& is_compact, const torch::Tensor& blocks,
    const torch::Tensor& offsets, const torch::Tensor& dir, const torch::Tensor& last,
    const torch::Tensor& steps, const torch::Tensor& fine, bool modulo, Names names,
    const Salt& salt) {
  (void)steps;
  check_names(names, offset.numel());
  const auto lengths = bag_sums(bag_lengths, offset.numel(), names);
  return remap_named(ids, lengths, offset, height, mapping, slot_keys, slot_rows, seeds,
                     tail_offset, tail_rows, is_compact, blocks, offsets, dir, last, fine, modulo,
                     names, salt_or_none(salt));
}

// fused_remap for eager Python callers (pybind: a few microseconds less per call than the
// operator's Python dispatch)
torch::Tensor fused_remap_eager(torch::Tensor ids, std::vector<int64_t> lengths,
                                torch::Tensor offset, torch::Tensor height, torch::Tensor mapping,
                                torch::Tensor slot_keys, torch::Tensor slot_rows,
                                torch::Tensor seeds, torch::Tensor tail_offset,
                                torch::Tensor tail_rows, torch::Tensor is_compact, bool modulo,
                                torch::Tensor salt) {
  return fused_remap(ids, lengths, offset, height, mapping, slot_keys, slot_rows, seeds,
                     tail_offset, tail_rows, is_compact, modulo, salt);
}

torch::Tensor fused_remap_ranked_eager(
    torch::Tensor ids, std::vector<int64_t> lengths, torch::Tensor offset, torch::Tensor height,
    torch::Tensor mapping, torch::Tensor slot_keys, torch::Tensor slot_rows, torch::Tensor seeds,
    torch::Tensor tail_offset, torch::Tensor tail_rows, torch::Tensor is_compact,
    torch::Tensor blocks, torch::Tensor offsets, torch::Tensor dir, torch::Tensor last,
    torch::Tensor steps, torch::Tensor fine, bool modulo, torch::Tensor salt) {
  return fused_remap_ranked(ids, lengths, offset, height, mapping, slot_keys, slot_rows, seeds,
                            tail_offset, tail_rows, is_compact, blocks, offsets, dir, last, steps,
                            fine, modulo, salt);
}

// rank_overlay: `rows` (fused_remap's, which holds no ranked head: those ids got their tail
// rows) with the ids of the ranked heads (torchrec_lhf/modules/head_rank.py) at their ranks.
// Per ranked feature j (last[j] > 0; the others are skipped, by the host's lengths): its
// directory starts at blocks[dir[j]] and has last[j] + 1 entries (each block of 2**16 ids'
// first position in `offsets`, then the end); an id's block is bisected for its low 16 bits
// (biased by -2**15, as int16 keeps their order), and its row is the position found less
// the feature's first. Ids are in range (fused_remap checked them) or folded (`modulo`).
// The operator torchrec_lhf::rank_overlay (`steps` is its torch fallback's, unused here).
torch::Tensor rank_overlay(const torch::Tensor& ids, c10::IntArrayRef lengths,
                           const torch::Tensor& rows, const torch::Tensor& blocks,
                           const torch::Tensor& offsets, const torch::Tensor& dir,
                           const torch::Tensor& last, const torch::Tensor& steps,
                           const torch::Tensor& height, bool modulo) {
  (void)steps;
  TORCH_CHECK(ids.device().is_cpu() && ids.is_contiguous() && rows.is_contiguous());
  TORCH_CHECK(ids.scalar_type() == rows.scalar_type() && ids.numel() == rows.numel(),
              "rank_overlay: rows must be the ids' shape and dtype");
  TORCH_CHECK(ids.scalar_type() == torch::kInt64 || ids.scalar_type() == torch::kInt32);
  TORCH_CHECK(blocks.scalar_type() == torch::kInt32 && offsets.scalar_type() == torch::kInt16 &&
              blocks.is_contiguous() && offsets.is_contiguous(),
              "rank_overlay: blocks must be int32 and offsets int16");
  const int64_t num = static_cast<int64_t>(lengths.size());
  const auto dir_t = as(dir, torch::kInt64);
  const auto last_t = as(last, torch::kInt64);
  const auto hgt_t = as(height, torch::kInt64);
  TORCH_CHECK(dir_t.numel() == num && last_t.numel() == num && hgt_t.numel() == num,
              "per-feature tensors must have ", num, " entries");
  const int64_t* dir_p = dir_t.data_ptr<int64_t>();
  const int64_t* last_p = last_t.data_ptr<int64_t>();
  const int64_t* hgt_p = hgt_t.data_ptr<int64_t>();
  const int32_t* blk = blocks.data_ptr<int32_t>();
  const int16_t* off = offsets.data_ptr<int16_t>();
  const int64_t num_blocks = blocks.numel();
  auto out = rows.clone();
  int64_t begin = 0;
  for (int64_t j = 0; j < num; ++j) {
    const int64_t end = begin + lengths[j];
    TORCH_CHECK(end <= ids.numel(), "the lengths sum past the ", ids.numel(), " ids");
    const int64_t nb = last_p[j], base = dir_p[j], n = hgt_p[j];
    if (nb > 0 && end > begin) {
      TORCH_CHECK(base >= 0 && base + nb + 1 < num_blocks, "internal feature ", j,
                  ": its directory is outside the ", num_blocks, " entries");
      const int64_t first = blk[base];
      AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "rank_overlay", [&] {
        const index_t* in = ids.data_ptr<index_t>();
        index_t* o = out.data_ptr<index_t>();
        at::parallel_for(begin, end, kGrain, [&](int64_t lo_i, int64_t hi_i) {
          // in blocks of kBlock ids: each id's block bounds and interpolated position first,
          // that position prefetched, then the searches, so that their cache misses (the
          // offsets of a table's head are larger than the caches) overlap
          alignas(64) int64_t key[kBlock];
          alignas(64) int64_t lo_at[kBlock];
          alignas(64) int64_t hi_at[kBlock];
          alignas(64) const int16_t* guess_at[kBlock];
          for (int64_t s = lo_i; s < hi_i; s += kBlock) {
            const int64_t count = std::min<int64_t>(kBlock, hi_i - s);
            for (int64_t c = 0; c < count; ++c) {
              int64_t id = static_cast<int64_t>(in[s + c]);
              if (modulo) {
                id %= n;
                id += id < 0 ? n : 0;
              }
              const int64_t b = std::min<int64_t>(id >> 16, nb);
              key[c] = id;
              lo_at[c] = blk[base + b];
              hi_at[c] = blk[base + b + 1];
              const int16_t t = static_cast<int16_t>((id & 0xFFFF) - 32768);
              guess_at[c] = interpolate(off + lo_at[c], off + hi_at[c], t);
              __builtin_prefetch(guess_at[c]);
            }
            for (int64_t c = 0; c < count; ++c) {
              const int16_t* lo = off + lo_at[c];
              const int16_t* hi = off + hi_at[c];
              const int16_t t = static_cast<int16_t>((key[c] & 0xFFFF) - 32768);
              const int16_t* p = search(lo, hi, guess_at[c], t);
              if (p != hi && *p == t) o[s + c] = static_cast<index_t>((p - off) - first);
            }
          }
        });
      });
    }
    begin = end;
  }
  return out;
}

torch::Tensor rank_overlay_eager(torch::Tensor ids, std::vector<int64_t> lengths,
                                 torch::Tensor rows, torch::Tensor blocks, torch::Tensor offsets,
                                 torch::Tensor dir, torch::Tensor last, torch::Tensor steps,
                                 torch::Tensor height, bool modulo) {
  return rank_overlay(ids, lengths, rows, blocks, offsets, dir, last, steps, height, modulo);
}

TORCH_LIBRARY_IMPL(torchrec_lhf, CPU, m) {
  m.impl("fused_remap", TORCH_FN(fused_remap));
  m.impl("fused_remap_bags", TORCH_FN(fused_remap_bags));
  m.impl("fused_remap_ranked", TORCH_FN(fused_remap_ranked));
  m.impl("fused_remap_ranked_bags", TORCH_FN(fused_remap_ranked_bags));
  m.impl("rank_overlay", TORCH_FN(rank_overlay));
}
