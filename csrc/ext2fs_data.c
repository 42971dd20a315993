/* File contents and xattrs for dmthin.extfs: reads and writes map whole
 * extents and move file data in large runs (holes and unwritten extents
 * read as zeros; a write allocates its holes with ext2fs_fallocate, marks
 * unwritten blocks written, and writes the bytes straight to the mapped
 * blocks); inline-data and block-mapped files go through ext2fs_file_*.
 * Included in the cffi source after ext2fs_ops.c. */

/* one mapped or unmapped run of logical blocks */
typedef errcode_t (*dx_run_fn)(ext2_filsys fs, blk64_t lblk, blk64_t pblk, blk64_t count,
                               int uninit, void *ctx);

/* Call fn for every run of [start, end] (pblk 0 for holes). */
static errcode_t dx_map_range(ext2_filsys fs, ext2_ino_t ino, dx_inode *in, blk64_t start,
                              blk64_t end, dx_run_fn fn, void *ctx)
{
    errcode_t err;
    blk64_t cur = start;

    if (in->i_flags & EXT4_EXTENTS_FL) {
        ext2_extent_handle_t h;
        struct ext2fs_extent ex;
        blk64_t last_seen = 0;
        int seen = 0;

        err = ext2fs_extent_open2(fs, ino, EXT2_INODE(in), &h);
        if (err)
            return err;
        ext2fs_extent_goto(h, start);
        err = ext2fs_extent_get(h, EXT2_EXTENT_CURRENT, &ex);
        if (err == EXT2_ET_NO_CURRENT_NODE || err == EXT2_ET_EXTENT_NO_NEXT) {
            err = 0;
            goto tail;
        }
        while (!err && cur <= end) {
            blk64_t ex_end = ex.e_lblk + ex.e_len;      /* exclusive */
            if (seen && ex.e_lblk <= last_seen)
                break;                                   /* wrapped around */
            seen = 1;
            last_seen = ex.e_lblk;
            if ((ex.e_flags & EXT2_EXTENT_FLAGS_LEAF) && ex.e_len && ex_end > cur) {
                if (ex.e_lblk > cur) {
                    blk64_t hole_end = ex.e_lblk - 1 < end ? ex.e_lblk - 1 : end;
                    err = fn(fs, cur, 0, hole_end - cur + 1, 0, ctx);
                    cur = hole_end + 1;
                    if (err || cur > end)
                        break;
                }
                {
                    blk64_t run_end = ex_end - 1 < end ? ex_end - 1 : end;
                    err = fn(fs, cur, ex.e_pblk + (cur - ex.e_lblk), run_end - cur + 1,
                             (ex.e_flags & EXT2_EXTENT_FLAGS_UNINIT) != 0, ctx);
                    cur = run_end + 1;
                    if (err || cur > end)
                        break;
                }
            }
            err = ext2fs_extent_get(h, EXT2_EXTENT_NEXT_LEAF, &ex);
            if (err == EXT2_ET_EXTENT_NO_NEXT) {
                err = 0;
                break;
            }
        }
tail:
        ext2fs_extent_free(h);
        if (!err && cur <= end)
            err = fn(fs, cur, 0, end - cur + 1, 0, ctx);
        return err;
    }
    /* block-mapped: one lookup per block, coalesced */
    while (cur <= end) {
        blk64_t p0 = 0, n = 0, pblk;
        int flags = 0;
        err = ext2fs_bmap2(fs, ino, EXT2_INODE(in), NULL, 0, cur, &flags, &p0);
        if (err)
            return err;
        for (n = 1; cur + n <= end; n++) {
            err = ext2fs_bmap2(fs, ino, EXT2_INODE(in), NULL, 0, cur + n, &flags, &pblk);
            if (err)
                return err;
            if (p0 ? pblk != p0 + n : pblk != 0)
                break;
        }
        err = fn(fs, cur, p0, n, 0, ctx);
        if (err)
            return err;
        cur += n;
    }
    return 0;
}

/* -- freeing: the kernel's journal rule ------------------------------------
 * ext4 reuses no block freed in the running journal transaction (mballoc
 * frees them when it commits): blocks a file loses stay allocated here until
 * the next commit (dx_flush, dx_close), or until an allocation finds no
 * space (ext4 then forces a commit and retries).  Which blocks a new file
 * gets, and so which pool blocks it provisions, follows the kernel's. */
struct dx_defer {
    blk64_t *start, *len;
    size_t n, cap;
};

struct dx_defer_ctx {
    struct dx_defer *d;
    size_t mark;                  /* runs before it belong to earlier frees */
};

static errcode_t dx_defer_run(ext2_filsys fs, blk64_t lblk, blk64_t pblk, blk64_t count,
                              int uninit, void *ctx)
{
    struct dx_defer_ctx *c = ctx;
    struct dx_defer *d = c->d;
    (void)fs; (void)lblk; (void)uninit;
    if (!pblk)
        return 0;
    if (d->n > c->mark && d->start[d->n - 1] + d->len[d->n - 1] == pblk) {
        d->len[d->n - 1] += count;
        return 0;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        blk64_t *s = realloc(d->start, cap * sizeof(*s));
        blk64_t *l;
        if (!s)
            return EXT2_ET_NO_MEMORY;
        d->start = s;
        l = realloc(d->len, cap * sizeof(*l));
        if (!l)
            return EXT2_ET_NO_MEMORY;
        d->len = l;
        d->cap = cap;
    }
    d->start[d->n] = pblk;
    d->len[d->n] = count;
    d->n++;
    return 0;
}

/* ext2fs_punch of logical blocks [first, last] of ino, its data blocks kept
 * allocated until the next commit. */
static errcode_t dx_punch_deferred(ext2_filsys fs, ext2_ino_t ino, dx_inode *in, blk64_t first,
                                   blk64_t last)
{
    struct dx_defer_ctx c = {fs->priv_data, 0};
    size_t i;
    errcode_t err;

    if (!c.d || !(in->i_flags & EXT4_EXTENTS_FL) || (in->i_flags & EXT4_INLINE_DATA_FL))
        return ext2fs_punch(fs, ino, EXT2_INODE(in), NULL, first, last);
    c.mark = c.d->n;
    err = dx_map_range(fs, ino, in, first, last < 0xFFFFFFFFULL ? last : 0xFFFFFFFFULL,
                       dx_defer_run, &c);
    if (!err)
        err = ext2fs_punch(fs, ino, EXT2_INODE(in), NULL, first, last);
    if (err) {
        c.d->n = c.mark;
        return err;
    }
    for (i = c.mark; i < c.d->n; i++)
        ext2fs_block_alloc_stats_range(fs, c.d->start[i], c.d->len[i], +1);
    return 0;
}

/* The commit: blocks freed since the last one become free. */
static void dx_release_deferred(ext2_filsys fs)
{
    struct dx_defer *d = fs->priv_data;
    size_t i;
    if (!d)
        return;
    for (i = 0; i < d->n; i++)
        ext2fs_block_alloc_stats_range(fs, d->start[i], d->len[i], -1);
    d->n = 0;
}

static int dx_have_deferred(ext2_filsys fs)
{
    struct dx_defer *d = fs->priv_data;
    return d && d->n;
}

/* -- reading ----------------------------------------------------------- */
struct dx_readctx {
    unsigned long long off, len;   /* byte range wanted */
    unsigned char *buf;            /* receives [off, off+len) */
    unsigned char *bounce;
};

static errcode_t dx_read_run(ext2_filsys fs, blk64_t lblk, blk64_t pblk, blk64_t count,
                             int uninit, void *ctx)
{
    struct dx_readctx *r = ctx;
    unsigned long long bs = fs->blocksize;
    unsigned long long s = lblk * bs, e = (lblk + count) * bs;
    errcode_t err;

    if (s < r->off)
        s = r->off;
    if (e > r->off + r->len)
        e = r->off + r->len;
    if (s >= e)
        return 0;
    if (!pblk || uninit) {
        memset(r->buf + (s - r->off), 0, e - s);
        return 0;
    }
    while (s < e) {
        unsigned long long b = s / bs;                 /* logical block of s */
        blk64_t p = pblk + (b - lblk);
        if (s % bs == 0 && e - s >= bs) {
            unsigned long long n = (e - s) / bs;
            if (n > (1U << 20) / bs * 64)
                n = (1U << 20) / bs * 64;              /* 64 MiB per read */
            err = io_channel_read_blk64(fs->io, p, (int)n, r->buf + (s - r->off));
            if (err)
                return err;
            s += n * bs;
        } else {
            unsigned long long in_blk = s % bs, n = bs - in_blk;
            if (n > e - s)
                n = e - s;
            err = io_channel_read_blk64(fs->io, p, 1, r->bounce);
            if (err)
                return err;
            memcpy(r->buf + (s - r->off), r->bounce + in_blk, n);
            s += n;
        }
    }
    return 0;
}

static errcode_t dx_inline_read(ext2_filsys fs, ext2_ino_t ino, dx_inode *in,
                                unsigned long long off, char *buf, size_t len, size_t *got)
{
    size_t size = 0;
    char *tmp;
    errcode_t err = ext2fs_inline_data_size(fs, ino, &size);
    if (err)
        return err;
    tmp = malloc(size + fs->blocksize);
    if (!tmp)
        return EXT2_ET_NO_MEMORY;
    err = ext2fs_inline_data_get(fs, ino, EXT2_INODE(in), tmp, &size);
    if (!err) {
        size_t n = off < size ? size - off : 0;
        if (n > len)
            n = len;
        memcpy(buf, tmp + off, n);
        *got = n;
    }
    free(tmp);
    return err;
}

/* Read up to len bytes at off of file ino into buf; *got is what was read
 * (short at the end of the file). */
static errcode_t dx_pread(ext2_filsys fs, ext2_ino_t ino, unsigned long long off, char *buf,
                          size_t len, size_t *got)
{
    dx_inode in;
    unsigned long long size;
    struct dx_readctx r;
    errcode_t err = dx_read(fs, ino, &in);
    *got = 0;
    if (err)
        return err;
    size = EXT2_I_SIZE(&in);
    if (off >= size || !len)
        return 0;
    if (len > size - off)
        len = size - off;
    if (in.i_flags & EXT4_INLINE_DATA_FL)
        return dx_inline_read(fs, ino, &in, off, buf, len, got);
    r.off = off;
    r.len = len;
    r.buf = (unsigned char *)buf;
    r.bounce = malloc(fs->blocksize);
    if (!r.bounce)
        return EXT2_ET_NO_MEMORY;
    err = dx_map_range(fs, ino, &in, off / fs->blocksize, (off + len - 1) / fs->blocksize,
                       dx_read_run, &r);
    free(r.bounce);
    if (!err)
        *got = len;
    return err;
}

/* -- writing ----------------------------------------------------------- */
struct dx_writectx {
    ext2_ino_t ino;
    dx_inode *in;
    unsigned long long off, len;
    const unsigned char *buf;
    unsigned char *bounce;
    blk64_t keep_first, keep_last;   /* partial edge blocks whose old bytes are kept */
    unsigned long long old_size;     /* bytes at or past it read as zeros */
};

static errcode_t dx_write_run(ext2_filsys fs, blk64_t lblk, blk64_t pblk, blk64_t count,
                              int uninit, void *ctx)
{
    struct dx_writectx *w = ctx;
    unsigned long long bs = fs->blocksize;
    unsigned long long s = lblk * bs, e = (lblk + count) * bs;
    errcode_t err;
    blk64_t i;

    if (!pblk)
        return EXT2_ET_BLOCK_ALLOC_FAIL;      /* fallocate left a hole */
    if (uninit) {                             /* written from now on: mark it so */
        for (i = 0; i < count; i++) {
            blk64_t p = pblk + i;
            err = ext2fs_bmap2(fs, w->ino, EXT2_INODE(w->in), NULL, BMAP_SET, lblk + i,
                               NULL, &p);
            if (err)
                return err;
        }
    }
    if (s < w->off)
        s = w->off;
    if (e > w->off + w->len)
        e = w->off + w->len;
    while (s < e) {
        unsigned long long b = s / bs;
        blk64_t p = pblk + (b - lblk);
        if (s % bs == 0 && e - s >= bs) {
            unsigned long long n = (e - s) / bs;
            if (n > (1U << 20) / bs * 64)
                n = (1U << 20) / bs * 64;
            err = io_channel_write_blk64(fs->io, p, (int)n, w->buf + (s - w->off));
            if (err)
                return err;
            s += n * bs;
        } else {
            unsigned long long in_blk = s % bs, n = bs - in_blk;
            int keep = !uninit && (b == w->keep_first || b == w->keep_last);
            if (n > e - s)
                n = e - s;
            if (keep) {
                err = io_channel_read_blk64(fs->io, p, 1, w->bounce);
                if (err)
                    return err;
                if ((b + 1) * bs > w->old_size) {
                    unsigned long long from = b * bs >= w->old_size ? 0 : w->old_size - b * bs;
                    memset(w->bounce + from, 0, bs - from);
                }
            } else {
                memset(w->bounce, 0, bs);
            }
            memcpy(w->bounce + in_blk, w->buf + (s - w->off), n);
            err = io_channel_write_blk64(fs->io, p, 1, w->bounce);
            if (err)
                return err;
            s += n;
        }
    }
    return 0;
}

static errcode_t dx_mapped(ext2_filsys fs, ext2_ino_t ino, dx_inode *in, blk64_t lblk,
                           int *mapped)
{
    blk64_t p = 0;
    int flags = 0;
    errcode_t err = ext2fs_bmap2(fs, ino, EXT2_INODE(in), NULL, 0, lblk, &flags, &p);
    *mapped = !err && p && !(flags & BMAP_RET_UNINIT);
    return err;
}

static errcode_t dx_file_write(ext2_filsys fs, ext2_ino_t ino, unsigned long long off,
                               const char *buf, size_t len)
{
    ext2_file_t f;
    unsigned int done = 0;
    errcode_t err = ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, &f);
    if (err)
        return err;
    err = ext2fs_file_llseek(f, off, EXT2_SEEK_SET, NULL);
    while (!err && len) {
        unsigned int n = len > (1U << 30) ? (1U << 30) : (unsigned int)len;
        err = ext2fs_file_write(f, buf, n, &done);
        if (!err && !done)
            err = EXT2_ET_SHORT_WRITE;
        buf += done;
        len -= done;
    }
    if (err) {
        ext2fs_file_close(f);
        return err;
    }
    return ext2fs_file_close(f);
}

/* Write len bytes of buf at off into regular file ino. */
static errcode_t dx_pwrite(ext2_filsys fs, ext2_ino_t ino, unsigned long long off,
                           const char *buf, size_t len, const struct dx_time *now)
{
    dx_inode in;
    unsigned long long bs = fs->blocksize, old_size, end = off + len;
    blk64_t first, last;
    struct dx_writectx w;
    int mapped;
    errcode_t err = dx_read(fs, ino, &in);

    if (err)
        return err;
    if (!LINUX_S_ISREG(in.i_mode))
        return LINUX_S_ISDIR(in.i_mode) ? EISDIR : EXT2_ET_INVALID_ARGUMENT;
    if (!len)
        return 0;
    old_size = EXT2_I_SIZE(&in);
    if (!(in.i_flags & EXT4_EXTENTS_FL) || (in.i_flags & EXT4_INLINE_DATA_FL)) {
        err = dx_file_write(fs, ino, off, buf, len);
        if (!err)
            err = dx_read(fs, ino, &in);
        if (err)
            return err;
        DX_SET_TIME(&in, mtime, now);
        DX_SET_TIME(&in, ctime, now);
        return dx_write(fs, ino, &in);
    }
    first = off / bs;
    last = (end - 1) / bs;
    memset(&w, 0, sizeof(w));
    w.keep_first = w.keep_last = ~0ULL;
    w.old_size = old_size;
    /* partial edge blocks keep their old bytes only if already written */
    if (off % bs) {
        err = dx_mapped(fs, ino, &in, first, &mapped);
        if (err)
            return err;
        if (mapped)
            w.keep_first = first;
    }
    if (end % bs) {
        err = dx_mapped(fs, ino, &in, last, &mapped);
        if (err)
            return err;
        if (mapped)
            w.keep_last = last;
    }
    /* the old last block's bytes past the old size must read as zeros */
    if (off > old_size && old_size % bs && old_size / bs < first) {
        blk64_t b = old_size / bs;
        err = dx_mapped(fs, ino, &in, b, &mapped);
        if (err)
            return err;
        if (mapped) {
            unsigned char *blk = malloc(bs);
            blk64_t p = 0;
            unsigned long long k, in_blk = old_size % bs;
            int dirty = 0;
            if (!blk)
                return EXT2_ET_NO_MEMORY;
            err = ext2fs_bmap2(fs, ino, EXT2_INODE(&in), NULL, 0, b, NULL, &p);
            if (!err)
                err = io_channel_read_blk64(fs->io, p, 1, blk);
            for (k = in_blk; !err && k < bs; k++)
                if (blk[k]) {
                    dirty = 1;
                    break;
                }
            if (!err && dirty) {
                memset(blk + in_blk, 0, bs - in_blk);
                err = io_channel_write_blk64(fs->io, p, 1, blk);
            }
            free(blk);
            if (err)
                return err;
        }
    }
    err = ext2fs_fallocate(fs, EXT2_FALLOCATE_FORCE_INIT | EXT2_FALLOCATE_INIT_BEYOND_EOF,
                           ino, EXT2_INODE(&in), ~0ULL, first, last - first + 1);
    if (err == EXT2_ET_BLOCK_ALLOC_FAIL && dx_have_deferred(fs)) {
        dx_release_deferred(fs);               /* out of space: commit early, retry */
        err = ext2fs_fallocate(fs, EXT2_FALLOCATE_FORCE_INIT |
                               EXT2_FALLOCATE_INIT_BEYOND_EOF, ino, EXT2_INODE(&in), ~0ULL,
                               first, last - first + 1);
    }
    if (err)
        return err;
    w.ino = ino;
    w.in = &in;
    w.off = off;
    w.len = len;
    w.buf = (const unsigned char *)buf;
    w.bounce = malloc(bs);
    if (!w.bounce)
        return EXT2_ET_NO_MEMORY;
    err = dx_map_range(fs, ino, &in, first, last, dx_write_run, &w);
    free(w.bounce);
    if (err)
        return err;
    if (end > old_size) {
        err = ext2fs_inode_size_set(fs, EXT2_INODE(&in), end);
        if (err)
            return err;
    }
    DX_SET_TIME(&in, mtime, now);
    DX_SET_TIME(&in, ctime, now);
    return dx_write(fs, ino, &in);
}

/* Set the size of regular file ino, freeing blocks past it and zeroing the
 * rest of a partial last block, as ext4_truncate does. */
static errcode_t dx_truncate(ext2_filsys fs, ext2_ino_t ino, unsigned long long size,
                             const struct dx_time *now)
{
    dx_inode in;
    unsigned long long bs = fs->blocksize, old;
    errcode_t err = dx_read(fs, ino, &in);
    if (err)
        return err;
    if (!LINUX_S_ISREG(in.i_mode))
        return LINUX_S_ISDIR(in.i_mode) ? EISDIR : EXT2_ET_INVALID_ARGUMENT;
    old = EXT2_I_SIZE(&in);
    if (size < old && !(in.i_flags & EXT4_INLINE_DATA_FL)) {
        if (size % bs) {
            int mapped;
            err = dx_mapped(fs, ino, &in, size / bs, &mapped);
            if (err)
                return err;
            if (mapped) {
                unsigned char *blk = malloc(bs);
                blk64_t p = 0;
                if (!blk)
                    return EXT2_ET_NO_MEMORY;
                err = ext2fs_bmap2(fs, ino, EXT2_INODE(&in), NULL, 0, size / bs, NULL, &p);
                if (!err)
                    err = io_channel_read_blk64(fs->io, p, 1, blk);
                if (!err) {
                    memset(blk + size % bs, 0, bs - size % bs);
                    err = io_channel_write_blk64(fs->io, p, 1, blk);
                }
                free(blk);
                if (err)
                    return err;
            }
        }
        if (ext2fs_inode_has_valid_blocks2(fs, EXT2_INODE(&in))) {
            err = dx_punch_deferred(fs, ino, &in, (size + bs - 1) / bs, ~0ULL);
            if (err)
                return err;
        }
    } else if (size != old) {                  /* inline data: libext2fs moves it */
        ext2_file_t f;
        err = ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, &f);
        if (err)
            return err;
        err = ext2fs_file_set_size2(f, size);
        if (err) {
            ext2fs_file_close(f);
            return err;
        }
        err = ext2fs_file_close(f);
        if (!err)
            err = dx_read(fs, ino, &in);
        if (err)
            return err;
    }
    err = ext2fs_inode_size_set(fs, EXT2_INODE(&in), size);
    if (err)
        return err;
    DX_SET_TIME(&in, mtime, now);
    DX_SET_TIME(&in, ctime, now);
    return dx_write(fs, ino, &in);
}

/* The target of symlink ino, into buf (bufsize >= block size + 1). */
static errcode_t dx_readlink(ext2_filsys fs, ext2_ino_t ino, char *buf, size_t bufsize,
                             size_t *len)
{
    dx_inode in;
    size_t size;
    errcode_t err = dx_read(fs, ino, &in);
    if (err)
        return err;
    if (!LINUX_S_ISLNK(in.i_mode))
        return EXT2_ET_INVALID_ARGUMENT;
    size = EXT2_I_SIZE(&in);
    if (size >= bufsize)
        return EXT2_ET_INVALID_ARGUMENT;
    if (ext2fs_is_fast_symlink(EXT2_INODE(&in))) {
        memcpy(buf, (char *)in.i_block, size);
        *len = size;
        return 0;
    }
    return dx_pread(fs, ino, 0, buf, size, len);
}

/* -- xattrs ------------------------------------------------------------ */
struct dx_names {
    char *buf;
    size_t len, cap;
    errcode_t err;
};

static int dx_xattr_name_proc(char *name, char *value, size_t value_len, void *data)
{
    struct dx_names *n = data;
    size_t l = strlen(name) + 1;
    (void)value; (void)value_len;
    if (strcmp(name, "system.data") == 0)        /* inline data, not an xattr */
        return 0;
    if (n->len + l > n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 256;
        char *p;
        while (cap < n->len + l)
            cap *= 2;
        p = realloc(n->buf, cap);
        if (!p) {
            n->err = EXT2_ET_NO_MEMORY;
            return XATTR_ABORT;
        }
        n->buf = p;
        n->cap = cap;
    }
    memcpy(n->buf + n->len, name, l);
    n->len += l;
    return 0;
}

static errcode_t dx_xattr_open(ext2_filsys fs, ext2_ino_t ino, struct ext2_xattr_handle **h)
{
    errcode_t err = ext2fs_xattrs_open(fs, ino, h);
    if (err)
        return err;
    err = ext2fs_xattrs_read(*h);
    if (err)
        ext2fs_xattrs_close(h);
    return err;
}

/* NUL-separated xattr names of ino in a malloc'd buffer (free with dx_free). */
static errcode_t dx_xattr_list(ext2_filsys fs, ext2_ino_t ino, char **out, size_t *outlen)
{
    struct ext2_xattr_handle *h;
    struct dx_names n = {NULL, 0, 0, 0};
    errcode_t err = dx_xattr_open(fs, ino, &h);
    if (err)
        return err;
    err = ext2fs_xattrs_iterate(h, dx_xattr_name_proc, &n);
    ext2fs_xattrs_close(&h);
    if (!err)
        err = n.err;
    if (err) {
        free(n.buf);
        return err;
    }
    *out = n.buf;
    *outlen = n.len;
    return 0;
}

static errcode_t dx_xattr_get(ext2_filsys fs, ext2_ino_t ino, const char *key, char **out,
                              size_t *outlen)
{
    struct ext2_xattr_handle *h;
    void *val = NULL;
    size_t len = 0;
    errcode_t err = dx_xattr_open(fs, ino, &h);
    if (err)
        return err;
    err = ext2fs_xattr_get(h, key, &val, &len);
    ext2fs_xattrs_close(&h);
    if (err)
        return err;
    *out = malloc(len ? len : 1);
    if (!*out) {
        ext2fs_free_mem(&val);
        return EXT2_ET_NO_MEMORY;
    }
    memcpy(*out, val, len);
    ext2fs_free_mem(&val);
    *outlen = len;
    return 0;
}

static errcode_t dx_xattr_set(ext2_filsys fs, ext2_ino_t ino, const char *key,
                              const char *value, size_t len, const struct dx_time *now)
{
    struct ext2_xattr_handle *h;
    dx_inode in;
    errcode_t err = dx_xattr_open(fs, ino, &h);
    if (err)
        return err;
    err = ext2fs_xattr_set(h, key, value, len);
    ext2fs_xattrs_close(&h);
    if (!err)
        err = dx_read(fs, ino, &in);
    if (err)
        return err;
    DX_SET_TIME(&in, ctime, now);
    return dx_write(fs, ino, &in);
}

static errcode_t dx_xattr_remove(ext2_filsys fs, ext2_ino_t ino, const char *key,
                                 const struct dx_time *now)
{
    struct ext2_xattr_handle *h;
    dx_inode in;
    void *val = NULL;
    size_t len = 0;
    errcode_t err = dx_xattr_open(fs, ino, &h);
    if (err)
        return err;
    err = ext2fs_xattr_get(h, key, &val, &len);     /* removing a missing key: ENODATA */
    if (!err) {
        ext2fs_free_mem(&val);
        err = ext2fs_xattr_remove(h, key);
    }
    ext2fs_xattrs_close(&h);
    if (!err)
        err = dx_read(fs, ino, &in);
    if (err)
        return err;
    DX_SET_TIME(&in, ctime, now);
    return dx_write(fs, ino, &in);
}

/* Commit-time and lifecycle hooks of the deferred frees (called by
 * dx_open/dx_flush/dx_close in ext2fs_io.c through these names). */
static errcode_t dx_defer_attach(ext2_filsys fs)
{
    struct dx_defer *d = calloc(1, sizeof(*d));
    if (!d)
        return EXT2_ET_NO_MEMORY;
    fs->priv_data = d;
    return 0;
}

static void dx_defer_detach(ext2_filsys fs)
{
    struct dx_defer *d = fs->priv_data;
    if (!d)
        return;
    free(d->start);
    free(d->len);
    free(d);
    fs->priv_data = NULL;
}
