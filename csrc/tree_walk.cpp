/* A resumable walker over one btree whose nodes hold 8-byte values (a thin
 * device's mapping tree), for dmthin._tools_ffi: compiled after
 * tools_accel.cpp in the same unit (it uses its dm_crc32c).
 *
 * dm_walk_leaves copies the next validated leaves into the caller's buffer,
 * in key order, reading each node with pread(2) on the metadata file.  It
 * checks every node at least as strictly as the pure-Python walkers do
 * (dmthin/pdata/btree/walk.py iter_leaf_nodes with the mapping reader's
 * order across leaves, or dmthin/thin/leaves.py leaf_blocks), and on the
 * first problem it stops before handing out anything the Python walker
 * would not: the caller then re-walks the tree in Python, which raises the
 * error (the messages live there only).  Memory is fixed: one node buffer
 * per level of a stack WALK_MAX_DEPTH + 1 deep, and a read-ahead buffer for
 * siblings at consecutive blocks (restored metadata lays leaves out so).
 */
#include <cerrno>
#include <cstddef>
#include <unistd.h>

#define DM_WALK_MAX_DEPTH 16
#define DM_WALK_BLOCK 4096
#define DM_WALK_READAHEAD 32     /* siblings at consecutive blocks read in one pread */

struct dm_walk_level {
    uint64_t lo, hi;
    int has_hi;
    uint32_t nr, mx, next;
    uint8_t node[DM_WALK_BLOCK];
};

struct dm_walk {
    int fd;
    int mapping;           /* 1: thin_dump's checks; 0: leaf_blocks' */
    uint64_t file_blocks;  /* blocks readable in the file */
    uint64_t root;
    uint8_t *seen;         /* bitmap of nodes visited (leaf_blocks' seen), or NULL */
    uint64_t seen_bits;
    int started, done, depth;
    int have_last;
    uint64_t last_key;
    int error;             /* a problem stopped the walk (which: see dm_walk_problem) */
    uint64_t bad_block;
    uint64_t leaves;       /* leaves handed out */
    uint64_t ra_first;     /* blocks ra_first.. ra_first + ra_count - 1 are in ra */
    uint64_t ra_count;
    struct dm_walk_level stack[DM_WALK_MAX_DEPTH + 1];
    uint8_t ra[DM_WALK_READAHEAD * DM_WALK_BLOCK];
};

enum dm_walk_problem {
    WALK_OK, WALK_DEPTH, WALK_RANGE, WALK_READ, WALK_BLOCKNR, WALK_CSUM, WALK_SHAPE,
    WALK_FLAGS, WALK_VALUE_SIZE, WALK_KEYS, WALK_SEEN_RANGE
};

namespace {

const uint32_t BTREE_CSUM_XOR = 121107;   /* dm-btree-spine.c */
const uint32_t INTERNAL_NODE = 1, LEAF_NODE = 2;

int walk_fail(dm_walk *w, int why, uint64_t b) {
    w->error = why;
    w->bad_block = b;
    return -1;
}

/* Read node b into buf and check what BlockManager.read(b, BTREE_NODE) and
 * check_header do; 0 or -1 (w->error set). */
/* Read n blocks from block b on into buf; returns the whole blocks read. */
size_t walk_pread(const dm_walk *w, uint64_t b, size_t n, uint8_t *buf) {
    return read_blocks(w->fd, b, n, buf);
}

/* Before reading child i of level p: if it is not read ahead already, read
 * it and the siblings after it that lie at the blocks after it (at most
 * DM_WALK_READAHEAD, within the file) in one pread. */
void walk_readahead(dm_walk *w, const dm_walk_level *p, uint32_t i) {
    const uint8_t *children = p->node + 32 + 8ull * p->mx;
    uint64_t b = le64(children + 8ull * i);
    if (b - w->ra_first < w->ra_count || b >= w->file_blocks)
        return;
    size_t n = 1;
    while (n < DM_WALK_READAHEAD && i + n < p->nr && b + n < w->file_blocks &&
           le64(children + 8ull * (i + n)) == b + n)
        n++;
    w->ra_count = 0;
    if (n < 2)
        return;
    w->ra_first = b;
    w->ra_count = walk_pread(w, b, n, w->ra);
}

int walk_read(dm_walk *w, uint64_t b, uint8_t *buf) {
    if (b >= w->file_blocks)
        return walk_fail(w, WALK_RANGE, b);
    if (b - w->ra_first < w->ra_count)
        std::memcpy(buf, w->ra + (b - w->ra_first) * DM_WALK_BLOCK, DM_WALK_BLOCK);
    else if (walk_pread(w, b, 1, buf) != 1)
        return walk_fail(w, WALK_READ, b);
    int seal = seal_problem(buf, b, BTREE_CSUM_XOR);
    if (seal)
        return walk_fail(w, seal == 2 ? WALK_BLOCKNR : WALK_CSUM, b);
    uint32_t flags = le32(buf + 4), nr = le32(buf + 16), mx = le32(buf + 20),
             vs = le32(buf + 24);
    if (32 + (8ull + vs) * mx > DM_WALK_BLOCK || nr > mx)
        return walk_fail(w, WALK_SHAPE, b);
    if (!(flags & (INTERNAL_NODE | LEAF_NODE)))
        return walk_fail(w, WALK_FLAGS, b);
    if (vs != 8)
        return walk_fail(w, WALK_VALUE_SIZE, b);
    return 0;
}

/* Keys ascending within the node and inside the range its parent gives
 * (both forms: walk.py _check_node, leaves.py _leaf_blocks). */
int walk_check_keys(dm_walk *w, uint64_t b, const uint8_t *buf, uint64_t lo, uint64_t hi,
                    int has_hi) {
    uint32_t nr = le32(buf + 16);
    const uint8_t *keys = buf + 32;
    for (uint32_t i = 1; i < nr; i++)
        if (le64(keys + 8ull * i) <= le64(keys + 8ull * (i - 1)))
            return walk_fail(w, WALK_KEYS, b);
    if (nr && (le64(keys) < lo || (has_hi && le64(keys + 8ull * (nr - 1)) >= hi)))
        return walk_fail(w, WALK_KEYS, b);
    return 0;
}

/* thin_dump's further checks (walk.py _check_node with 8-byte values). */
int walk_check_mapping(dm_walk *w, uint64_t b, const uint8_t *buf) {
    uint32_t flags = le32(buf + 4), mx = le32(buf + 20);
    if ((flags & (INTERNAL_NODE | LEAF_NODE)) == (INTERNAL_NODE | LEAF_NODE))
        return walk_fail(w, WALK_FLAGS, b);
    if (mx % 3)
        return walk_fail(w, WALK_SHAPE, b);
    return 0;
}

}  /* namespace */

extern "C" {

/* Start a walk of the tree at root over the metadata open at fd
 * (file_blocks 4 KiB blocks).  mapping: check as thin_dump does (node
 * flags, max_entries, key order within and across leaves and against the
 * parent's keys; empty leaves are not handed out); else as leaf_blocks does
 * (header, value size, keys ascending and inside the parent's range),
 * skipping nodes set in the bitmap seen (seen_bits
 * bits; NULL: none) and setting the others. */
void dm_walk_init(struct dm_walk *w, int fd, uint64_t file_blocks, uint64_t root, int mapping,
                  uint8_t *seen, uint64_t seen_bits) {
    std::memset(w, 0, offsetof(struct dm_walk, stack));
    w->fd = fd;
    w->file_blocks = file_blocks;
    w->root = root;
    w->mapping = mapping;
    w->seen = seen;
    w->seen_bits = seen ? seen_bits : 0;
}

/* Copy up to max_leaves next leaves (4096 bytes each) into out.  Returns
 * how many (0: the walk is over), or -1 if it stopped on a problem before
 * handing out any (w->error and w->bad_block say which; the leaves before it
 * were all handed out by earlier calls). */
long dm_walk_leaves(struct dm_walk *w, uint8_t *out, size_t max_leaves) {
    if (w->error)
        return -1;
    size_t n = 0;
    while (n < max_leaves && !w->done) {
        uint64_t b, lo, hi;
        int has_hi, depth;
        if (!w->started) {
            w->started = 1;
            b = w->root; lo = 0; hi = 0; has_hi = 0; depth = 0;
        } else {
            while (w->depth > 0 && w->stack[w->depth - 1].next >= w->stack[w->depth - 1].nr)
                w->depth--;
            if (w->depth == 0) {
                w->done = 1;
                break;
            }
            dm_walk_level *p = &w->stack[w->depth - 1];
            walk_readahead(w, p, p->next);
            uint32_t i = p->next++;
            const uint8_t *keys = p->node + 32;
            b = le64(p->node + 32 + 8ull * p->mx + 8ull * i);
            lo = i ? le64(keys + 8ull * i) : p->lo;
            has_hi = i + 1 < p->nr ? 1 : p->has_hi;
            hi = i + 1 < p->nr ? le64(keys + 8ull * (i + 1)) : p->hi;
            depth = w->depth;
        }
        if (w->seen) {
            if (b >= w->seen_bits) {
                walk_fail(w, WALK_SEEN_RANGE, b);
                break;
            }
            uint8_t bit = (uint8_t)(1u << (b & 7));
            if (w->seen[b >> 3] & bit)
                continue;
            w->seen[b >> 3] |= bit;
        }
        if (depth > DM_WALK_MAX_DEPTH) {
            walk_fail(w, WALK_DEPTH, b);
            break;
        }
        uint8_t *dest = out + n * DM_WALK_BLOCK;
        /* Read into the leaf slot; an internal node moves to its level. */
        if (walk_read(w, b, dest) < 0)
            break;
        if (w->mapping && walk_check_mapping(w, b, dest) < 0)
            break;
        if (walk_check_keys(w, b, dest, lo, hi, has_hi) < 0)
            break;
        uint32_t flags = le32(dest + 4), nr = le32(dest + 16);
        if (flags & INTERNAL_NODE) {
            dm_walk_level *l = &w->stack[depth];
            std::memcpy(l->node, dest, DM_WALK_BLOCK);
            l->lo = lo; l->hi = hi; l->has_hi = has_hi;
            l->nr = nr; l->mx = le32(dest + 20); l->next = 0;
            w->depth = depth + 1;
            continue;
        }
        if (w->mapping) {
            if (!nr)
                continue;
            if (w->have_last && le64(dest + 32) <= w->last_key) {
                walk_fail(w, WALK_KEYS, b);
                break;
            }
            w->have_last = 1;
            w->last_key = le64(dest + 32 + 8ull * (nr - 1));
        }
        n++;
        w->leaves++;
    }
    if (n)
        return (long)n;
    return w->error ? -1 : 0;
}

/* dm_xml_leaf_block over n leaves in a row (blks: n * 4096 bytes, each a
 * validated leaf with 8-byte values, as dm_walk_leaves hands out); adds
 * their entries to *entries.  Returns the bytes written or -1 (out too
 * small: the caller gives 255 * (200 + strlen(ind)) bytes a leaf). */
long dm_xml_leaf_blocks(const uint8_t *blks, size_t n, uint64_t *state, const char *ind,
                        char *out, size_t cap, uint64_t *entries) {
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *blk = blks + i * DM_WALK_BLOCK;
        uint32_t nr = le32(blk + 16);
        long w = dm_xml_leaf_block(blk, nr, le32(blk + 20), 0, state, ind, out + pos, cap - pos);
        if (w < 0)
            return -1;
        pos += (size_t)w;
        *entries += nr;
    }
    return (long)pos;
}

/* The data blocks (value >> shift) of n leaves in a row (as
 * dm_xml_leaf_blocks) into out, which holds 254 a leaf; returns how many. */
size_t dm_leaf_blocks_values(const uint8_t *blks, size_t n, unsigned shift, uint64_t *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *blk = blks + i * DM_WALK_BLOCK;
        uint32_t nr = le32(blk + 16), mx = le32(blk + 20);
        if (nr > mx || 32 + 16ull * mx > DM_WALK_BLOCK)
            continue;
        const uint8_t *values = blk + 32 + 8ull * mx;
        for (uint32_t j = 0; j < nr; j++)
            out[k++] = le64(values + 8ull * j) >> shift;
    }
    return k;
}

}  /* extern "C" */

extern "C" {

/* dm_leaf_runs over n leaves in a row (as dm_xml_leaf_blocks); out holds
 * cap triples (254 a leaf is always enough).  Returns how many, or -1. */
long dm_leaves_runs(const uint8_t *blks, size_t n, uint64_t *state, uint64_t *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        long r = dm_leaf_runs(blks + i * DM_WALK_BLOCK, state, out + 3 * k, cap - k);
        if (r < 0)
            return -1;
        k += (size_t)r;
    }
    return (long)k;
}

/* dm_leaf_rmap over n leaves in a row of device dev; out holds cap runs
 * (254 a leaf is always enough).  Returns how many, or -1. */
long dm_leaves_rmap(const uint8_t *blks, size_t n, const uint64_t *begins, const uint64_t *ends,
                    size_t nregions, uint64_t dev, uint64_t *state, uint64_t *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        long r = dm_leaf_rmap(blks + i * DM_WALK_BLOCK, begins, ends, nregions, dev, state,
                              out + 4 * k, cap - k);
        if (r < 0)
            return -1;
        k += (size_t)r;
    }
    return (long)k;
}

}  /* extern "C" */

extern "C" {

/* thin_trim's marks: used[value >> shift] = 1 for every mapping of n leaves
 * in a row, in order.  Returns 0, or -1 at the first data block not below
 * size (*bad = it; the blocks before it are marked). */
long dm_leaves_mark(const uint8_t *blks, size_t n, unsigned shift, uint8_t *used, uint64_t size,
                    uint64_t *bad) {
    for (size_t i = 0; i < n; i++) {
        const uint8_t *blk = blks + i * DM_WALK_BLOCK;
        uint32_t nr = le32(blk + 16), mx = le32(blk + 20);
        if (nr > mx || 32 + 16ull * mx > DM_WALK_BLOCK)
            return -2;
        const uint8_t *values = blk + 32 + 8ull * mx;
        for (uint32_t j = 0; j < nr; j++) {
            uint64_t d = le64(values + 8ull * j) >> shift;
            if (d >= size) {
                *bad = d;
                return -1;
            }
            used[d] = 1;
        }
    }
    return 0;
}

}  /* extern "C" */
