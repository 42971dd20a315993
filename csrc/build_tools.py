"""cffi builder (API, out-of-line mode) for ``dmthin._tools_ffi``: CRC-32C
and the hot loops of the metadata tools in C++ (``tools_accel.cpp``; its sort is
libstdc++'s ``std::sort``, the order thin_rmap 0.9.0 prints ties in) and a
walker over whole mapping trees (``tree_walk.cpp``).

Optional, as the other bindings: without a C++ compiler dmthin installs
and the tools use their pure-Python loops, which give the same bytes.  For
a source checkout run ``python3 csrc/build_tools.py`` to build it in place.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef("""
uint32_t dm_crc32c(uint32_t crc, const uint8_t *p, size_t n);
long dm_leaf_runs(const uint8_t *blk, uint64_t *state, uint64_t *out, size_t cap);
long dm_leaf_rmap(const uint8_t *blk, const uint64_t *begins, const uint64_t *ends,
                  size_t nregions, uint64_t dev, uint64_t *state, uint64_t *out, size_t cap);
void dm_sort_by_key(const uint64_t *recs, uint32_t *order, size_t n);
long dm_rmap_lines(const uint64_t *recs, const uint32_t *order, size_t n, char *out,
                   size_t cap);
struct dm_delta {
    uint64_t lv, ld, ln, rv, rd, rn;
    int ldone, rdone;
    int verbose, cur;
    uint64_t cb, ce;
    int finished;
};
long dm_xml_maps(char *buf, size_t n, size_t pos, int maps_ok, uint64_t data_limit,
                 uint64_t *out, size_t cap, size_t *stop, size_t *markup_stop, int *why);
size_t dm_xml_squeeze(char *buf, size_t n);
size_t dm_inc_packed(uint8_t *counts, size_t size, const uint64_t *values, size_t n,
                     unsigned shift);
size_t dm_mark(uint8_t *const *table, uint64_t limit, uint64_t chunk_size,
               const uint64_t *blocks, size_t n);
size_t dm_count_once(uint8_t *const *table, uint64_t limit, uint64_t chunk_size,
                     const uint64_t *blocks, size_t n, uint64_t *once);
long dm_xml_leaf_runs(const uint64_t *keys, const uint64_t *values, size_t n, int final,
                      uint64_t *state, const char *ind, char *out, size_t cap);
long dm_xml_leaf_block(const uint8_t *blk, uint32_t nr, uint32_t mx, int final,
                       uint64_t *state, const char *ind, char *out, size_t cap);
size_t dm_inc_leaf(uint8_t *counts, size_t size, const uint8_t *blk, uint32_t nr, uint32_t mx,
                   uint32_t i0, unsigned shift);
void dm_seq(uint64_t *out, uint64_t start, uint64_t step, size_t n);
void dm_shift(uint64_t *values, size_t n, unsigned shift);
uint64_t dm_runs_total(const uint64_t *recs, size_t k, uint64_t limit);
size_t dm_plan_runs(const uint64_t *recs, size_t k, uint8_t *counts, size_t size,
                    uint64_t *st);
void dm_read_blocks(int fd, const uint64_t *blocks, size_t n, uint8_t *out, uint8_t *status,
                    uint32_t salt);
size_t dm_expand_runs(const uint64_t *recs, size_t k, size_t *ri, uint64_t *roff,
                      uint64_t *keys, uint64_t *values, size_t room);
long dm_check_walk(int fd, uint64_t nr_blocks, uint64_t file_blocks, uint8_t *seen,
                   uint8_t tag, uint8_t *mcounts, uint8_t *vcounts, uint64_t vlimit,
                   unsigned shift, uint64_t *totals, uint64_t root);
void dm_delta_init(struct dm_delta *c, int verbose);
int dm_delta_run(struct dm_delta *c, const uint64_t *left, size_t nl, size_t *li,
                 const uint64_t *right, size_t nr, size_t *ri, char *out, size_t cap,
                 size_t *pos);
struct dm_walk {
    int error;
    uint64_t bad_block;
    uint64_t leaves;
    ...;
};
void dm_walk_init(struct dm_walk *w, int fd, uint64_t file_blocks, uint64_t root, int mapping,
                  uint8_t *seen, uint64_t seen_bits);
long dm_walk_leaves(struct dm_walk *w, uint8_t *out, size_t max_leaves);
long dm_xml_leaf_blocks(const uint8_t *blks, size_t n, uint64_t *state, const char *ind,
                        char *out, size_t cap, uint64_t *entries);
size_t dm_leaf_blocks_values(const uint8_t *blks, size_t n, unsigned shift, uint64_t *out);
long dm_leaves_mark(const uint8_t *blks, size_t n, unsigned shift, uint8_t *used, uint64_t size,
                    uint64_t *bad);
long dm_leaves_runs(const uint8_t *blks, size_t n, uint64_t *state, uint64_t *out, size_t cap);
long dm_leaves_rmap(const uint8_t *blks, size_t n, const uint64_t *begins, const uint64_t *ends,
                    size_t nregions, uint64_t dev, uint64_t *state, uint64_t *out, size_t cap);
""")
#: the C++ sources, compiled as one translation unit (later ones use the
#: earlier ones' helpers and dm_crc32c)
SOURCES = ("tools_accel.cpp", "tree_walk.cpp", "check_walk.cpp")
_text = []
for _name in SOURCES:
    with open(os.path.join(HERE, _name), encoding="utf-8") as f:
        _text.append(f.read())
ffibuilder.set_source("dmthin._tools_ffi", "\n".join(_text), source_extension=".cpp",
                      extra_compile_args=["-O2", "-std=c++17"], optional=True)

if __name__ == "__main__":
    os.chdir(os.path.dirname(HERE))
    ffibuilder.compile(tmpdir=".", verbose=True)
