/* thin_check's walk of one btree of u64 values (a device's mapping tree) in
 * one call, for dmthin._tools_ffi: the pure-Python walker
 * (dmthin/pdata/btree/check.py BTreeChecker.walk_nodes, with the caller's
 * counting of the values) is the reference; this is its fast path.
 *
 * It does everything that walk does to the checker's state -- reference
 * counts of metadata blocks, the walked-node tags, per-node entry totals,
 * the counts of the values' blocks (value >> shift) -- and nothing when it
 * meets anything else: a node that is unreadable, malformed, out of place
 * or a cycle, a value beyond its limit, a count about to saturate, more
 * work than its undo log holds.  It then undoes what it did and returns -1,
 * and the caller walks the tree in Python, which names the problem.  So the
 * state after a call is exactly the pure-Python walk's, or untouched.
 *
 * Compiled after tools_accel.cpp in one unit: it reads blocks with that
 * file's read_blocks and seal_problem.
 */
#include <cstdint>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

namespace ckwalk {

const size_t BS = 4096, HDR = 32, MAX_DEPTH = 16;
const uint32_t INTERNAL = 1, LEAF = 2, SALT = 121107;   // BTREE_CSUM_XOR
const uint32_t MAX_ENTRIES = 252;                      // calc_max_entries(8)
const size_t UNDO_MAX = size_t(1) << 22;


struct Frame {
    uint64_t b;
    uint64_t lo, hi;          // key range; has_lo/has_hi say whether bounded
    bool has_lo, has_hi;
    bool post;                // post-order marker of an internal node
    uint32_t depth;
};

struct Walk {
    int fd;
    uint64_t nr_blocks, file_blocks;
    uint8_t *seen, tag;
    uint8_t *mcounts;         // metadata reference counts (NULL: not counted)
    uint8_t *vcounts;         // counts of value >> shift
    uint64_t vlimit;
    unsigned shift;
    uint64_t *totals;         // NULL: not kept
    std::vector<uint64_t> refs, marked, leaves;
    std::vector<std::pair<uint64_t, uint64_t>> old_totals;   // (block, value before)
    uint64_t walked = 0;

    bool read(uint64_t b, uint8_t *buf) {
        return b < file_blocks && read_blocks(fd, b, 1, buf) == 1 &&
               seal_problem(buf, b, SALT) == 0;
    }

    /* add -1 or +1 to the counts of a leaf's values [0, n) */
    void count_values(const uint8_t *buf, uint32_t n, int d) {
        const uint8_t *vals = buf + HDR + 8ull * MAX_ENTRIES;
        for (uint32_t i = 0; i < n; i++)
            vcounts[le64(vals + 8ull * i) >> shift] += d;
    }

    void undo() {
        uint8_t buf[BS];
        for (uint64_t b : leaves)
            if (read(b, buf))
                count_values(buf, le32(buf + 16), -1);
        if (mcounts)
            for (uint64_t b : refs)
                mcounts[b]--;
        for (uint64_t b : marked)
            seen[b] = 0;
        for (size_t i = old_totals.size(); i-- > 0;)
            totals[old_totals[i].first] = old_totals[i].second;
    }

    void set_total(uint64_t b, uint64_t v) {
        old_totals.emplace_back(b, totals[b]);
        totals[b] = v;
    }

    bool run(uint64_t root);
};

bool Walk::run(uint64_t root) {
    std::vector<Frame> stack;
    std::vector<uint64_t> path;     // blocks from the root to the current node
    std::vector<std::vector<uint64_t>> kids;   // children of internal nodes on the path
    uint8_t buf[BS];
    stack.push_back(Frame{root, 0, 0, false, false, false, 0});
    while (!stack.empty()) {
        Frame f = stack.back();
        stack.pop_back();
        path.resize(f.depth);
        if (f.post) {
            if (totals) {
                uint64_t sum = 0;
                for (uint64_t c : kids.back())
                    sum += totals[c];
                set_total(f.b, sum);
            }
            kids.pop_back();
            continue;
        }
        uint64_t b = f.b;
        if (b >= nr_blocks || f.depth > MAX_DEPTH)
            return false;
        for (uint64_t a : path)
            if (a == b)
                return false;
        if (mcounts) {
            if (mcounts[b] >= 254 || refs.size() >= UNDO_MAX)
                return false;
            mcounts[b]++;
            refs.push_back(b);
        }
        if (seen[b]) {
            if (seen[b] != tag)
                return false;
            if (f.has_lo || f.has_hi) {
                if (!read(b, buf))
                    return false;
                uint32_t nr = le32(buf + 16), mx = le32(buf + 20);
                if (nr > mx || nr > MAX_ENTRIES)
                    return false;
                if (nr && ((f.has_lo && le64(buf + HDR) < f.lo) ||
                           (f.has_hi && le64(buf + HDR + 8ull * (nr - 1)) >= f.hi)))
                    return false;
            }
            continue;
        }
        if (!read(b, buf))
            return false;
        uint32_t flags = le32(buf + 4), nr = le32(buf + 16), mx = le32(buf + 20),
                 vs = le32(buf + 24);
        if ((flags != INTERNAL && flags != LEAF) || vs != 8 || mx != MAX_ENTRIES || nr > mx)
            return false;
        if (f.depth > 0 && nr < mx / 3)
            return false;
        const uint8_t *keys = buf + HDR, *vals = buf + HDR + 8ull * mx;
        for (uint32_t i = 1; i < nr; i++)
            if (le64(keys + 8ull * i) <= le64(keys + 8ull * (i - 1)))
                return false;
        if (nr && ((f.has_lo && le64(keys) < f.lo) ||
                   (f.has_hi && le64(keys + 8ull * (nr - 1)) >= f.hi)))
            return false;
        if (marked.size() >= UNDO_MAX)
            return false;
        seen[b] = tag;
        marked.push_back(b);
        walked++;
        if (flags == INTERNAL) {
            path.push_back(b);
            std::vector<uint64_t> children(nr);
            for (uint32_t i = 0; i < nr; i++)
                children[i] = le64(vals + 8ull * i);
            stack.push_back(Frame{b, 0, 0, false, false, true, f.depth});
            for (uint32_t j = nr; j-- > 0;) {
                Frame c{children[j], le64(keys + 8ull * j), f.hi, true, f.has_hi, false,
                        f.depth + 1};
                if (j + 1 < nr) {
                    c.hi = le64(keys + 8ull * (j + 1));
                    c.has_hi = true;
                }
                stack.push_back(c);
            }
            kids.push_back(std::move(children));
            continue;
        }
        /* a leaf: count its values' blocks */
        for (uint32_t i = 0; i < nr; i++) {
            uint64_t v = le64(vals + 8ull * i) >> shift;
            if (v >= vlimit || vcounts[v] >= 254) {
                count_values(buf, i, -1);
                return false;
            }
            vcounts[v]++;
        }
        leaves.push_back(b);
        if (totals)
            set_total(b, nr);
    }
    return true;
}

}  // namespace ckwalk

extern "C" {

/* Walk the tree at root as described above.  Returns the number of nodes
 * walked (>= 0) with the state updated, or -1 with the state untouched. */
long dm_check_walk(int fd, uint64_t nr_blocks, uint64_t file_blocks, uint8_t *seen,
                   uint8_t tag, uint8_t *mcounts, uint8_t *vcounts, uint64_t vlimit,
                   unsigned shift, uint64_t *totals, uint64_t root) {
    ckwalk::Walk w{fd, nr_blocks, file_blocks, seen, tag, mcounts, vcounts, vlimit, shift, totals,
           {}, {}, {}, {}};
    bool ok;
    try {
        ok = w.run(root);
    } catch (const std::bad_alloc &) {
        ok = false;
    }
    if (!ok) {
        w.undo();
        return -1;
    }
    return (long)w.walked;
}

}  /* extern "C" */
