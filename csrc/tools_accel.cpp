/* Hot loops of dmthin's metadata tools, for dmthin._tools_ffi: CRC-32C,
 * thin_delta's and thin_rmap's leaf loops.  Every function has a pure-Python
 * twin giving the same results (dmthin/pdata/checksum.py, dmthin/thin/delta.py,
 * rmap.py); the tests compare them.
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
#include <cerrno>
#include <unistd.h>

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

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), slicing by 8. */
struct CrcTables {
    uint32_t t[8][256];
    CrcTables() {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
            t[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
            for (int s = 1; s < 8; s++)
                t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
    }
};
const CrcTables crc_tables;

uint32_t crc_soft(uint32_t crc, const uint8_t *p, size_t n) {
    const auto &t = crc_tables.t;
    while (n >= 8) {
        uint64_t v = le64(p) ^ crc;
        crc = t[7][v & 0xFF] ^ t[6][(v >> 8) & 0xFF] ^ t[5][(v >> 16) & 0xFF] ^
              t[4][(v >> 24) & 0xFF] ^ t[3][(v >> 32) & 0xFF] ^ t[2][(v >> 40) & 0xFF] ^
              t[1][(v >> 48) & 0xFF] ^ t[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFF];
    return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("sse4.2"))) uint32_t crc_sse42(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        c = __builtin_ia32_crc32di(c, le64(p));
        p += 8;
        n -= 8;
    }
    crc = (uint32_t)c;
    while (n--)
        crc = __builtin_ia32_crc32qi(crc, *p++);
    return crc;
}
const bool have_sse42 = __builtin_cpu_supports("sse4.2");
#endif

}  // namespace

extern "C" {

/* CRC-32C of p[0..n) from crc, with no inversion in or out (the kernel's
 * dm_bm_checksum is dm_crc32c(~0, ...) ^ salt). */
uint32_t dm_crc32c(uint32_t crc, const uint8_t *p, size_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_sse42)
        return crc_sse42(crc, p, n);
#endif
    return crc_soft(crc, p, n);
}

}  /* extern "C" */

/* Metadata block reading, shared by dm_read_blocks and the walkers
 * (tree_walk.cpp, check_walk.cpp). */
namespace {

/* Read the n 4 KiB blocks from block b on of fd into buf (retrying EINTR
 * and short reads); returns how many whole blocks were read. */
size_t read_blocks(int fd, uint64_t b, size_t n, uint8_t *buf) {
    const uint64_t BS = 4096;
    if (b > (uint64_t)INT64_MAX / BS - n)
        return 0;
    size_t got = 0, want = n * BS;
    while (got < want) {
        ssize_t r = pread(fd, buf + got, want - got, (off_t)(b * BS + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got / BS;
}

/* How block b (4 KiB at buf) fails its seal as a block of the kind whose
 * checksum salt is `salt`, in Validator.check's order: 0 it does not,
 * 2 its blocknr field is not b, 3 its checksum is wrong. */
int seal_problem(const uint8_t *buf, uint64_t b, uint32_t salt) {
    if (le64(buf + 8) != b)
        return 2;
    if ((dm_crc32c(0xFFFFFFFFu, buf + 4, 4096 - 4) ^ salt) != le32(buf))
        return 3;
    return 0;
}

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

/* ---- thin_dump XML: the mapping elements, for dmthin/thin/xml.py ---------- */

namespace {

const uint64_t U64_MAX = ~0ull;
const uint64_t MAX_TIME = (1ull << 24) - 1;

/* Matches literal s at p (within end): 1, 0 (differs) or -1 (runs out). */
int lit(const char *p, const char *end, const char *s, size_t n) {
    size_t have = (size_t)(end - p);
    if (have < n)
        return std::memcmp(p, s, have) == 0 ? -1 : 0;
    return std::memcmp(p, s, n) == 0 ? 1 : 0;
}

/* A quoted decimal attribute value: digits then '"'; 1, 0 (not one, or
 * above 2^64-1) or -1 (runs out).  *p moves past the closing quote. */
int num(const char **pp, const char *end, uint64_t *v) {
    const char *p = *pp;
    uint64_t x = 0;
    const char *start = p;
    for (;; p++) {
        if (p == end)
            return -1;
        unsigned c = (unsigned char)*p - '0';
        if (c > 9)
            break;
        if (x > (U64_MAX - c) / 10)
            return 0;
        x = x * 10 + c;
    }
    if (p == start || *p != '"')
        return 0;
    *v = x;
    *pp = p + 1;
    return 1;
}

/* One mapping element at p ('<') in thin_dump's own spelling (the names,
 * attribute order and single spaces it writes), its values in the ranges
 * the reader accepts without an error: 1 (out[0..4) = origin, data, time,
 * length; *after = past the element), 0 (anything else: the slow path
 * parses it) or -1 (the buffer ends inside it). */
int mapping(const char *p, const char *end, uint64_t data_limit, uint64_t *out,
            const char **after) {
    static const char S0[] = "<single_mapping origin_block=\"", S1[] = " data_block=\"",
                      R0[] = "<range_mapping origin_begin=\"", R1[] = " data_begin=\"",
                      R2[] = " length=\"", T[] = " time=\"", E[] = "/>";
    int r;
    uint64_t o, d, t, n = 1;
#define STEP(x) do { if ((r = (x)) != 1) return r; } while (0)
#define LIT(s) do { STEP(lit(p, end, s, sizeof s - 1)); p += sizeof s - 1; } while (0)
    if (end - p < 2)
        return -1;
    if (p[1] == 's') {
        LIT(S0); STEP(num(&p, end, &o));
        LIT(S1); STEP(num(&p, end, &d));
    } else {
        LIT(R0); STEP(num(&p, end, &o));
        LIT(R1); STEP(num(&p, end, &d));
        LIT(R2); STEP(num(&p, end, &n));
    }
    LIT(T); STEP(num(&p, end, &t));
    LIT(E);
#undef LIT
#undef STEP
    if (n == 0 || t > MAX_TIME || n - 1 > U64_MAX - o || d >= data_limit || n > data_limit - d)
        return 0;
    out[0] = o; out[1] = d; out[2] = t; out[3] = n;
    *after = p;
    return 1;
}

/* The end of the markup at p ('<'): past its '>' (quotes respected), or of
 * a comment or processing instruction; nullptr if the buffer ends first. */
const char *markup_end(const char *p, const char *end) {
    const char *close = nullptr;
    size_t open = 0;
    if (end - p >= 4 && std::memcmp(p, "<!--", 4) == 0) {
        close = "-->";
        open = 4;                   /* "<!-->" does not close the comment */
    } else if (end - p >= 2 && p[1] == '?') {
        close = "?>";
        open = 2;
    }
    if (close) {
        size_t n = std::strlen(close);
        for (const char *q = p + open; q + n <= end; q++)
            if (std::memcmp(q, close, n) == 0)
                return q + n;
        return nullptr;
    }
    char quote = 0;
    for (const char *q = p + 1; q < end; q++) {
        if (quote) {
            if (*q == quote)
                quote = 0;
        } else if (*q == '"' || *q == '\'') {
            quote = *q;
        } else if (*q == '>') {
            return q + 1;
        }
    }
    return nullptr;
}

}  // namespace

extern "C" {

/* Scan buf[pos..n) of metadata XML for mapping elements while they may
 * appear (maps_ok: directly inside <device> or <def>).  Each one taken gives
 * (origin, data, time, length, packed value (data << 24 | time), offset of
 * its '<') in out (at most cap) and is overwritten with spaces, so that expat, fed the buffer after the
 * caller delivers the mappings, sees the same structure at the same line and
 * column.  Text is passed over.  Stops at the first markup it does not take
 * (*stop at its '<', *markup_stop past it; with maps_ok 0 at the first '<'),
 * at the end of the buffer or when out is full.  Returns the number taken;
 * *why: 0 end, 1 markup at *stop, 2 out full, 3 the buffer ends inside the
 * markup at *stop (read more), 4 markup the scanner does not follow
 * (<!DOCTYPE, CDATA: the caller parses the rest with expat alone). */
long dm_xml_maps(char *buf, size_t n, size_t pos, int maps_ok, uint64_t data_limit,
                 uint64_t *out, size_t cap, size_t *stop, size_t *markup_stop, int *why) {
    const char *end = buf + n;
    char *p = buf + pos;
    size_t k = 0;
    for (;;) {
        char *lt = (char *)std::memchr(p, '<', (size_t)(end - p));
        if (!lt) {
            *stop = n; *why = 0;
            return (long)k;
        }
        *stop = (size_t)(lt - buf);
        if (maps_ok && end - lt >= 2 && (lt[1] == 's' || lt[1] == 'r')) {
            if (k == cap) {
                *why = 2;
                return (long)k;
            }
            const char *after;
            uint64_t *rec = out + 6 * k;
            int r = mapping(lt, end, data_limit, rec, &after);
            if (r == 1) {
                rec[4] = (rec[1] << 24) | rec[2];
                rec[5] = (uint64_t)(lt - buf);
                k++;
                std::memset(lt, ' ', (size_t)(after - lt));
                p = (char *)after;
                continue;
            }
            if (r < 0) {
                *why = 3;
                return (long)k;
            }
        }
        if (end - lt < 2 || (end - lt < 9 && lt[1] == '!')) {
            *why = 3;
            return (long)k;
        }
        if (lt[1] == '!' && std::memcmp(lt, "<!--", 4) != 0) {
            *why = 4;
            return (long)k;
        }
        const char *m = markup_end(lt, end);
        if (!m) {
            *why = 3;
            return (long)k;
        }
        *markup_stop = (size_t)(m - buf);
        *why = 1;
        return (long)k;
    }
}

}  /* extern "C" */

extern "C" {

/* Squeeze buf[0..n) in place for expat: in each run of spaces, tabs and
 * newlines (markup-free text expat ignores, as the blanked mapping elements
 * are) only the newlines and the blanks after the last one stay, so expat
 * counts the same lines and columns for what follows.  Other bytes are
 * kept.  Returns the new length. */
size_t dm_xml_squeeze(char *buf, size_t n) {
    size_t w = 0, i = 0;
    while (i < n) {
        char c = buf[i];
        if (c != ' ' && c != '\t' && c != '\n') {
            buf[w++] = c;
            i++;
            continue;
        }
        size_t j = i, last_nl = n;
        for (; j < n && (buf[j] == ' ' || buf[j] == '\t' || buf[j] == '\n'); j++)
            if (buf[j] == '\n') {
                buf[w++] = '\n';
                last_nl = j;
            }
        size_t keep_from = last_nl == n ? i : last_nl + 1;
        for (size_t q = keep_from; q < j; q++)
            buf[w++] = buf[q];
        i = j;
    }
    return w;
}

}  /* extern "C" */

extern "C" {

/* RefCounts.inc_packed's loop over a flat count array: for each value,
 * counts[v >> shift] += 1 while the block is below size and its count below
 * 254.  Returns the index of the first value that is not (the caller takes
 * it the slow way: saturation, or IndexError past the end), or n. */
size_t dm_inc_packed(uint8_t *counts, size_t size, const uint64_t *values, size_t n,
                     unsigned shift) {
    for (size_t i = 0; i < n; i++) {
        uint64_t b = values[i] >> shift;
        if (b >= size || counts[b] >= 254)
            return i;
        counts[b]++;
    }
    return n;
}

}  /* extern "C" */

extern "C" {

/* thin_ls's pass 1: for each of blocks[0..n), its mark (in the chunk of
 * chunk_size blocks table[b / chunk_size]) goes up to at most 2 (seen
 * twice).  Returns the index of the first block at or past limit or in a
 * chunk not allocated yet (table entry NULL: the caller allocates it, or
 * takes the block), or n. */
size_t dm_mark(uint8_t *const *table, uint64_t limit, uint64_t chunk_size,
               const uint64_t *blocks, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint64_t b = blocks[i];
        if (b >= limit)
            return i;
        uint8_t *c = table[b / chunk_size];
        if (!c)
            return i;
        uint8_t *m = c + b % chunk_size;
        if (*m < 2)
            ++*m;
    }
    return n;
}

/* thin_ls's pass 2: adds to *once the blocks of blocks[0..n) marked exactly
 * once (a NULL chunk is all zero).  Returns the index of the first block at
 * or past limit (the caller takes it), or n. */
size_t dm_count_once(uint8_t *const *table, uint64_t limit, uint64_t chunk_size,
                     const uint64_t *blocks, size_t n, uint64_t *once) {
    uint64_t k = 0;
    size_t i = 0;
    for (; i < n; i++) {
        uint64_t b = blocks[i];
        if (b >= limit)
            break;
        const uint8_t *c = table[b / chunk_size];
        k += c && c[b % chunk_size] == 1;
    }
    *once += k;
    return i;
}

}  /* extern "C" */

extern "C" {

/* thin_dump's runs (dmthin/thin/ir.py RunBuilder) over one leaf's mappings,
 * written as thin_dump's XML lines (XmlWriter.map_runs) with indent ind.  A
 * run continues while the key and the packed value (data << 24 | time) both
 * advance by one step.  state = (active, begin key, begin value, next key,
 * next value, next valid) across leaves; final: also write the pending run.
 * Returns the bytes written, or -1 if out is too small (the caller gives
 * 160 + strlen(ind) bytes a mapping, plus one). */
long dm_xml_leaf_runs(const uint64_t *keys, const uint64_t *values, size_t n, int final,
                      uint64_t *state, const char *ind, char *out, size_t cap) {
    const uint64_t NEXT = 1ull << 24;
    uint64_t active = state[0], t0 = state[1], v0 = state[2], nk = state[3], nv = state[4],
             ok = state[5];
    size_t pos = 0;
    auto emit = [&](uint64_t t, uint64_t v, uint64_t len) -> bool {
        if (cap - pos < 200 + std::strlen(ind))
            return false;
        int w;
        if (len == 1)
            w = std::snprintf(out + pos, cap - pos,
                              "%s<single_mapping origin_block=\"%llu\" data_block=\"%llu\" "
                              "time=\"%llu\"/>\n", ind, (unsigned long long)t,
                              (unsigned long long)(v >> 24), (unsigned long long)(v & (NEXT - 1)));
        else
            w = std::snprintf(out + pos, cap - pos,
                              "%s<range_mapping origin_begin=\"%llu\" data_begin=\"%llu\" "
                              "length=\"%llu\" time=\"%llu\"/>\n", ind, (unsigned long long)t,
                              (unsigned long long)(v >> 24), (unsigned long long)len,
                              (unsigned long long)(v & (NEXT - 1)));
        if (w < 0 || (size_t)w >= cap - pos)
            return false;
        pos += (size_t)w;
        return true;
    };
    for (size_t i = 0; i < n; i++) {
        uint64_t k = keys[i], v = values[i];
        if (active && ok && k == nk && v == nv) {
            ok = nk != ~0ull && nv <= ~0ull - NEXT;
            nk++;
            nv += NEXT;
            continue;
        }
        if (active && !emit(t0, v0, nk - t0))
            return -1;
        active = 1;
        t0 = k; v0 = v;
        ok = k != ~0ull && v <= ~0ull - NEXT;
        nk = k + 1; nv = v + NEXT;
    }
    if (final && active) {
        if (!emit(t0, v0, nk - t0))
            return -1;
        active = 0;
    }
    state[0] = active; state[1] = t0; state[2] = v0; state[3] = nk; state[4] = nv; state[5] = ok;
    return (long)pos;
}

}  /* extern "C" */

extern "C" {

/* dm_xml_leaf_runs over a validated mapping leaf's block (nr entries of max
 * mx, 8-byte values) rather than arrays. */
long dm_xml_leaf_block(const uint8_t *blk, uint32_t nr, uint32_t mx, int final,
                       uint64_t *state, const char *ind, char *out, size_t cap) {
    uint64_t keys[256], values[256];
    if (nr > 256 || nr > mx || 32 + 16ull * mx > 4096)
        return -1;
    for (uint32_t i = 0; i < nr; i++) {
        keys[i] = le64(blk + 32 + 8ull * i);
        values[i] = le64(blk + 32 + 8ull * mx + 8ull * i);
    }
    return dm_xml_leaf_runs(keys, values, nr, final, state, ind, out, cap);
}

}  /* extern "C" */

extern "C" {

/* dm_inc_packed over the values i0..nr of a validated leaf's block (max
 * mx, 8-byte values): returns the index of the first value it does not
 * take (past size, or a count of 254 or more), or nr. */
size_t dm_inc_leaf(uint8_t *counts, size_t size, const uint8_t *blk, uint32_t nr, uint32_t mx,
                   uint32_t i0, unsigned shift) {
    if (nr > mx || 32 + 16ull * mx > 4096)
        return i0;
    const uint8_t *values = blk + 32 + 8ull * mx;
    for (uint32_t i = i0; i < nr; i++) {
        uint64_t b = le64(values + 8ull * i) >> shift;
        if (b >= size || counts[b] >= 254)
            return i;
        counts[b]++;
    }
    return nr;
}

}  /* extern "C" */

extern "C" {

/* out[i] = start + i * step for i in 0..n (mod 2^64): a range of mappings'
 * keys or packed values (restore). */
void dm_seq(uint64_t *out, uint64_t start, uint64_t step, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = start + i * step;
}

/* values[i] >>= shift for i in 0..n (mapping values to data blocks). */
void dm_shift(uint64_t *values, size_t n, unsigned shift) {
    for (size_t i = 0; i < n; i++)
        values[i] >>= shift;
}

}  /* extern "C" */

extern "C" {

/* The XML scanner's records (dm_xml_maps: 6 words each -- origin, data,
 * time, length, packed value, offset) for restore's passes. */
const size_t REC = 6;

/* Total length of records recs[0..k), or UINT64_MAX if one of them runs
 * past data block `limit` (the caller then takes them one by one, and the
 * restore's own check names the element). */
uint64_t dm_runs_total(const uint64_t *recs, size_t k, uint64_t limit) {
    uint64_t total = 0;
    for (size_t i = 0; i < k; i++) {
        const uint64_t *r = recs + REC * i;
        if (r[1] > limit || r[3] > limit - r[1])
            return UINT64_MAX;
        total += r[3];
    }
    return total;
}

/* Restore's pass 1 over records recs[0..k): counts[d .. d+n) += 1 for each
 * record while every count stays below 254; st = {end of the last run,
 * out-of-order flag, mappings counted} is updated as Restorer._add does.
 * Returns the number of records done (the next one is the caller's:
 * saturation, or past the end of counts). */
size_t dm_plan_runs(const uint64_t *recs, size_t k, uint8_t *counts, size_t size,
                    uint64_t *st) {
    for (size_t i = 0; i < k; i++) {
        const uint64_t *r = recs + REC * i;
        uint64_t d = r[1], n = r[3];
        if (d > size || n > size - d)
            return i;
        for (uint64_t b = d; b < d + n; b++)
            if (counts[b] >= 254)
                return i;
        for (uint64_t b = d; b < d + n; b++)
            counts[b]++;
        if (r[0] < st[0])
            st[1] = 1;
        st[0] = r[0] + n;
        st[2] += n;
    }
    return k;
}

/* Restore's pass 2: the mappings of records recs[*ri..k) from *roff
 * mappings into record *ri, as keys and packed values (a run's values step
 * by one data block, 1 << 24), at most `room` of them.  Advances *ri and
 * *roff; returns the number written. */
size_t dm_expand_runs(const uint64_t *recs, size_t k, size_t *ri, uint64_t *roff,
                      uint64_t *keys, uint64_t *values, size_t room) {
    size_t w = 0;
    while (w < room && *ri < k) {
        const uint64_t *r = recs + REC * *ri;
        uint64_t off = *roff, left = r[3] - off;
        uint64_t m = left < room - w ? left : room - w;
        uint64_t o = r[0] + off, v = r[4] + (off << 24);
        for (uint64_t j = 0; j < m; j++) {
            keys[w + j] = o + j;
            values[w + j] = v + (j << 24);
        }
        w += m;
        if (m == left) {
            ++*ri;
            *roff = 0;
        } else {
            *roff = off + m;
        }
    }
    return w;
}

}  /* extern "C" */

extern "C" {

/* Read the 4 KiB metadata blocks blocks[0..n) of fd into out (block i at
 * out + 4096 i; consecutive block numbers in one pread) and validate each as
 * a block of the kind whose checksum salt is `salt` (BlockManager.read with
 * a Validator): status[i] = 0 valid, 1 not read (I/O error, short read, or
 * past the end), 2 wrong blocknr field, 3 bad checksum.  The caller reads
 * the blocks that are not valid the usual way, which names the problem. */
void dm_read_blocks(int fd, const uint64_t *blocks, size_t n, uint8_t *out, uint8_t *status,
                    uint32_t salt) {
    const size_t BS = 4096;
    size_t i = 0;
    while (i < n) {
        size_t j = i + 1;
        while (j < n && blocks[j] == blocks[j - 1] + 1 && j - i < 256)
            j++;
        size_t got = read_blocks(fd, blocks[i], j - i, out + i * BS);
        for (size_t k = i; k < j; k++)
            status[k] = k - i < got ? (uint8_t)seal_problem(out + k * BS, blocks[k], salt) : 1;
        i = j;
    }
}

}  /* extern "C" */
