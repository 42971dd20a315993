/* Hot loops of dmthin's metadata tools (thin_delta, thin_rmap), for
 * dmthin._tools_ffi.  Every function has a pure-Python twin giving the same
 * results (dmthin/thin/delta.py, rmap.py); the tests compare them.
 *
 * A mapping leaf is a validated 4 KiB btree node: le32 nr_entries at 16,
 * le32 max_entries at 20, le64 keys[max] at 32, le64 values[max] after.
 * Values are (data_block << 24) | time.  Hosts are little-endian (x86-64,
 * arm64): the callers check.
 */
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace {

inline uint32_t le32(const uint8_t *p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t le64(const uint8_t *p) { uint64_t v; std::memcpy(&v, p, 8); return v; }

/* Keys and values of a leaf, or false if the header does not fit. */
bool leaf(const uint8_t *blk, uint32_t *nr, const uint8_t **keys, const uint8_t **values) {
    uint32_t n = le32(blk + 16), mx = le32(blk + 20);
    if (n > mx || 32 + 16ull * mx > 4096)
        return false;
    *nr = n;
    *keys = blk + 32;
    *values = blk + 32 + 8ull * mx;
    return true;
}

struct Run { uint64_t key; uint32_t index; };

}  // namespace

extern "C" {

/* thin_delta's mapping_recorder over one leaf: runs (vbegin, dbegin, len)
 * of consecutive virtual and data blocks, time ignored.  state holds the
 * pending run (v0, d0, n) across leaves.  Writes at most cap triples to out;
 * returns how many, or -1 if the leaf is malformed or out is too small. */
long dm_leaf_runs(const uint8_t *blk, uint64_t *state, uint64_t *out, size_t cap) {
    uint32_t nr;
    const uint8_t *keys, *values;
    if (!leaf(blk, &nr, &keys, &values))
        return -1;
    uint64_t v0 = state[0], d0 = state[1], n = state[2];
    size_t k = 0;
    for (uint32_t i = 0; i < nr; i++) {
        uint64_t key = le64(keys + 8ull * i), d = le64(values + 8ull * i) >> 24;
        if (n && key == v0 + n && d == d0 + n) {
            n++;
            continue;
        }
        if (n) {
            if (k == cap)
                return -1;
            out[3 * k] = v0; out[3 * k + 1] = d0; out[3 * k + 2] = n;
            k++;
        }
        v0 = key; d0 = d; n = 1;
    }
    state[0] = v0; state[1] = d0; state[2] = n;
    return (long)k;
}

/* thin_rmap's rmap_visitor over one leaf of device dev, for data blocks in
 * the sorted disjoint regions [begins[i], ends[i]): runs (data_begin,
 * data_end, dev, thin_begin).  state = (active, data_begin, data_end,
 * thin_begin) across the leaves of one device (dm_rmap_flush ends it).
 * Writes at most cap runs to out; returns how many, or -1 (malformed leaf,
 * out too small). */
long dm_leaf_rmap(const uint8_t *blk, const uint64_t *begins, const uint64_t *ends,
                  size_t nregions, uint64_t dev, uint64_t *state, uint64_t *out, size_t cap) {
    uint32_t nr;
    const uint8_t *keys, *values;
    if (!leaf(blk, &nr, &keys, &values))
        return -1;
    uint64_t active = state[0], b = state[1], e = state[2], t = state[3];
    size_t k = 0;
    for (uint32_t i = 0; i < nr; i++) {
        uint64_t key = le64(keys + 8ull * i), d = le64(values + 8ull * i) >> 24;
        if (nregions == 1) {
            if (d < begins[0] || d >= ends[0])
                continue;
        } else {
            const uint64_t *r = std::upper_bound(begins, begins + nregions, d);
            if (r == begins || d >= ends[r - begins - 1])
                continue;
        }
        if (active) {
            if (d == e && key == t + (e - b)) {
                e = d + 1;
                continue;
            }
            if (k == cap)
                return -1;
            out[4 * k] = b; out[4 * k + 1] = e; out[4 * k + 2] = dev; out[4 * k + 3] = t;
            k++;
        }
        active = 1; b = d; e = d + 1; t = key;
    }
    state[0] = active; state[1] = b; state[2] = e; state[3] = t;
    return (long)k;
}

/* libstdc++'s std::sort of n records of 4 u64s by their first u64 (the
 * order thin_rmap 0.9.0 prints ties in): fills order[] with the records'
 * indexes, sorted. */
void dm_sort_by_key(const uint64_t *recs, uint32_t *order, size_t n) {
    Run *runs = new Run[n];
    for (size_t i = 0; i < n; i++)
        runs[i] = Run{recs[4 * i], (uint32_t)i};
    std::sort(runs, runs + n, [](const Run &a, const Run &b) { return a.key < b.key; });
    for (size_t i = 0; i < n; i++)
        order[i] = runs[i].index;
    delete[] runs;
}

/* thin_rmap's lines for records (b, e, dev, t) order[0..n): "data b..e ->
 * thin(dev) t..t+(e-b)\n".  Returns the bytes written, or -1 if out is too
 * small (the caller gives 112 bytes a line). */
long dm_rmap_lines(const uint64_t *recs, const uint32_t *order, size_t n, char *out,
                   size_t cap) {
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        const uint64_t *r = recs + 4ull * order[i];
        if (cap - pos < 112)
            return -1;
        int w = std::snprintf(out + pos, cap - pos, "data %llu..%llu -> thin(%llu) %llu..%llu\n",
                              (unsigned long long)r[0], (unsigned long long)r[1],
                              (unsigned long long)r[2], (unsigned long long)r[3],
                              (unsigned long long)(r[3] + (r[1] - r[0])));
        if (w < 0 || (size_t)w >= cap - pos)
            return -1;
        pos += (size_t)w;
    }
    return (long)pos;
}

/* thin_delta's dump_diff and its writers, resumable: the caller feeds run
 * arrays (vbegin, dbegin, len) of each side as it reads them and drains the
 * output.  The context holds the runs being consumed and the writer's state.
 * Returns DM_NEED_LEFT / DM_NEED_RIGHT (that side's array is used up: feed
 * more, or mark the side done), DM_OUT_FULL (drain out[0..*pos] and call
 * again), or DM_DONE. */
struct dm_delta {
    uint64_t lv, ld, ln, rv, rd, rn;  /* current runs (len 0: none loaded) */
    int ldone, rdone;                 /* a side has no more runs */
    int verbose, cur;                 /* writer: the kind open or pending */
    uint64_t cb, ce;                  /* simple writer's pending range */
    int finished;
};

enum { DM_NEED_LEFT = 0, DM_NEED_RIGHT = 1, DM_OUT_FULL = 2, DM_DONE = 3 };

static const char *const kind_names[] = {"left_only", "right_only", "different", "same"};
enum { K_LEFT, K_RIGHT, K_DIFF, K_SAME, K_NONE };

void dm_delta_init(struct dm_delta *c, int verbose) {
    std::memset(c, 0, sizeof *c);
    c->verbose = verbose;
    c->cur = K_NONE;
}

static bool delta_emit(struct dm_delta *c, int kind, uint64_t v, uint64_t l_d, uint64_t r_d,
                       uint64_t n, char *out, size_t cap, size_t *pos) {
    if (cap - *pos < 256)
        return false;
    char *p = out + *pos;
    size_t room = cap - *pos;
    int w = 0;
    if (!c->verbose) {
        if (kind == c->cur && v == c->ce) {
            c->ce += n;
            return true;
        }
        if (c->cur != K_NONE)
            w = std::snprintf(p, room, "    <%s begin=\"%llu\" length=\"%llu\"/>\n",
                              kind_names[c->cur], (unsigned long long)c->cb,
                              (unsigned long long)(c->ce - c->cb));
        c->cur = kind;
        c->cb = v;
        c->ce = v + n;
        *pos += (size_t)w;
        return true;
    }
    if (kind != c->cur) {
        if (c->cur != K_NONE)
            w += std::snprintf(p + w, room - w, "    </%s>\n", kind_names[c->cur]);
        w += std::snprintf(p + w, room - w, "    <%s>\n", kind_names[kind]);
        c->cur = kind;
    }
    if (kind == K_DIFF)
        w += std::snprintf(p + w, room - w, "      <range begin=\"%llu\" left_data_begin=\"%llu\" "
                           "right_data_begin=\"%llu\" length=\"%llu\"/>\n",
                           (unsigned long long)v, (unsigned long long)l_d,
                           (unsigned long long)r_d, (unsigned long long)n);
    else
        w += std::snprintf(p + w, room - w, "      <range begin=\"%llu\" data_begin=\"%llu\" "
                           "length=\"%llu\"/>\n", (unsigned long long)v,
                           (unsigned long long)(kind == K_RIGHT ? r_d : l_d),
                           (unsigned long long)n);
    *pos += (size_t)w;
    return true;
}

int dm_delta_run(struct dm_delta *c, const uint64_t *left, size_t nl, size_t *li,
                 const uint64_t *right, size_t nr, size_t *ri, char *out, size_t cap,
                 size_t *pos) {
    for (;;) {
        if (!c->ln && !c->ldone) {
            if (*li == nl)
                return DM_NEED_LEFT;
            c->lv = left[3 * *li]; c->ld = left[3 * *li + 1]; c->ln = left[3 * *li + 2];
            ++*li;
            continue;
        }
        if (!c->rn && !c->rdone) {
            if (*ri == nr)
                return DM_NEED_RIGHT;
            c->rv = right[3 * *ri]; c->rd = right[3 * *ri + 1]; c->rn = right[3 * *ri + 2];
            ++*ri;
            continue;
        }
        uint64_t n;
        if (c->ln && c->rn) {
            if (c->lv < c->rv) {
                n = std::min(c->ln, c->rv - c->lv);
                if (!delta_emit(c, K_LEFT, c->lv, c->ld, 0, n, out, cap, pos))
                    return DM_OUT_FULL;
                c->lv += n; c->ld += n; c->ln -= n;
            } else if (c->lv > c->rv) {
                n = std::min(c->rn, c->lv - c->rv);
                if (!delta_emit(c, K_RIGHT, c->rv, 0, c->rd, n, out, cap, pos))
                    return DM_OUT_FULL;
                c->rv += n; c->rd += n; c->rn -= n;
            } else {
                n = std::min(c->ln, c->rn);
                if (!delta_emit(c, c->ld != c->rd ? K_DIFF : K_SAME, c->lv, c->ld, c->rd, n,
                                out, cap, pos))
                    return DM_OUT_FULL;
                c->lv += n; c->ld += n; c->ln -= n;
                c->rv += n; c->rd += n; c->rn -= n;
            }
        } else if (c->ln) {
            if (!delta_emit(c, K_LEFT, c->lv, c->ld, 0, c->ln, out, cap, pos))
                return DM_OUT_FULL;
            c->ln = 0;
        } else if (c->rn) {
            if (!delta_emit(c, K_RIGHT, c->rv, 0, c->rd, c->rn, out, cap, pos))
                return DM_OUT_FULL;
            c->rn = 0;
        } else {
            if (c->finished)
                return DM_DONE;
            if (cap - *pos < 256)
                return DM_OUT_FULL;
            if (c->cur != K_NONE) {
                int w = c->verbose
                    ? std::snprintf(out + *pos, cap - *pos, "    </%s>\n", kind_names[c->cur])
                    : std::snprintf(out + *pos, cap - *pos,
                                    "    <%s begin=\"%llu\" length=\"%llu\"/>\n",
                                    kind_names[c->cur], (unsigned long long)c->cb,
                                    (unsigned long long)(c->ce - c->cb));
                *pos += (size_t)w;
            }
            c->finished = 1;
            return DM_DONE;
        }
    }
}

}  /* extern "C" */
