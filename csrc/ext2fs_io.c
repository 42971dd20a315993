/* dmthin's libext2fs io_manager: every block read, write, flush, discard
 * and zeroout of a filesystem goes to Python callbacks (a dmthin
 * ThinDevice), so ext4 is read and written in place on a thin device.
 *
 * The channel keeps a write-back cache of small (metadata) blocks:
 *   - a miss reads an aligned window (DX_READAHEAD bytes) in one callback;
 *   - a small write updates the cached copy and marks it dirty, unless
 *     the bytes are unchanged (libext2fs rewrites every bitmap and the
 *     whole group descriptor table when it flushes; the kernel writes only
 *     the buffers it dirtied, and a rewrite would break sharing with a
 *     snapshot for nothing);
 *   - dirty blocks go out sorted and coalesced into runs on flush, close,
 *     block size change, or when too many are dirty;
 *   - large reads and writes (file data) bypass the cache in one callback
 *     each, with cached copies kept coherent.
 * A callback returns 0 or an errno value; the Python side keeps the
 * exception and re-raises it when the libext2fs call returns.
 *
 * Included in the cffi source after the libext2fs headers. */

#define DX_IO_MAGIC_NAME   "dmthin-extfs"
#define DX_READAHEAD       (64 * 1024)      /* one Docker pool block */
#define DX_BYPASS_BYTES    (64 * 1024)      /* reads/writes this large skip the cache */
#define DX_CACHE_BYTES     (64 * 1024 * 1024)
#define DX_DIRTY_BYTES     (32 * 1024 * 1024)
#define DX_RUN_BYTES       (4 * 1024 * 1024) /* largest write callback when flushing */

static int dmthin_extfs_read(int handle, uint64_t offset, size_t length, char *buf);
static int dmthin_extfs_write(int handle, uint64_t offset, size_t length, const char *buf);
static int dmthin_extfs_flush(int handle);
static int dmthin_extfs_discard(int handle, uint64_t offset, uint64_t length);
static int dmthin_extfs_zeroout(int handle, uint64_t offset, uint64_t length);
static errcode_t dx_defer_attach(ext2_filsys fs);
static void dx_defer_detach(ext2_filsys fs);
static void dx_release_deferred(ext2_filsys fs);

struct dx_ent {
    unsigned long long blk;
    struct dx_ent *hnext;
    struct dx_ent *prev, *next;     /* LRU list: lru.next is the most recent */
    int dirty;
    unsigned char data[];
};

struct dx_iostats {
    unsigned long long reads, writes, read_bytes, write_bytes;   /* callbacks */
    unsigned long long hits, misses, skipped_writes, flushes;
};

struct dx_chan {
    int handle;
    int bs;
    struct dx_ent **buckets;
    size_t nbuckets;
    struct dx_ent lru;
    size_t count, ndirty;
    struct struct_io_stats stats;
    struct dx_iostats dx;
};

static struct struct_io_manager dx_io_manager_struct;

static size_t dx_hash(struct dx_chan *c, unsigned long long blk)
{
    return (size_t)((blk * 0x9E3779B97F4A7C15ULL) >> 17) & (c->nbuckets - 1);
}

static size_t dx_max_count(struct dx_chan *c) { return DX_CACHE_BYTES / c->bs; }
static size_t dx_max_dirty(struct dx_chan *c) { return DX_DIRTY_BYTES / c->bs; }

static struct dx_ent *dx_find(struct dx_chan *c, unsigned long long blk)
{
    struct dx_ent *e;
    for (e = c->buckets[dx_hash(c, blk)]; e; e = e->hnext)
        if (e->blk == blk)
            return e;
    return NULL;
}

static void dx_lru_unlink(struct dx_ent *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void dx_lru_front(struct dx_chan *c, struct dx_ent *e)
{
    e->next = c->lru.next;
    e->prev = &c->lru;
    c->lru.next->prev = e;
    c->lru.next = e;
}

static void dx_touch(struct dx_chan *c, struct dx_ent *e)
{
    dx_lru_unlink(e);
    dx_lru_front(c, e);
}

static void dx_evict(struct dx_chan *c, struct dx_ent *e)
{
    struct dx_ent **pp = &c->buckets[dx_hash(c, e->blk)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    dx_lru_unlink(e);
    if (e->dirty)
        c->ndirty--;
    c->count--;
    free(e);
}

static int dx_cmp_ent(const void *a, const void *b)
{
    unsigned long long x = (*(struct dx_ent *const *)a)->blk;
    unsigned long long y = (*(struct dx_ent *const *)b)->blk;
    return x < y ? -1 : x > y;
}

static errcode_t dx_py_write(struct dx_chan *c, unsigned long long blk, size_t len,
                             const void *buf)
{
    int rc = dmthin_extfs_write(c->handle, blk * (unsigned long long)c->bs, len, buf);
    c->dx.writes++;
    c->dx.write_bytes += len;
    c->stats.bytes_written += len;
    return rc ? (errcode_t)rc : 0;
}

static errcode_t dx_py_read(struct dx_chan *c, unsigned long long blk, size_t len, void *buf)
{
    int rc = dmthin_extfs_read(c->handle, blk * (unsigned long long)c->bs, len, buf);
    c->dx.reads++;
    c->dx.read_bytes += len;
    c->stats.bytes_read += len;
    return rc ? (errcode_t)rc : 0;
}

/* Write every dirty block, sorted, in runs of contiguous blocks. */
static errcode_t dx_flush_dirty(struct dx_chan *c)
{
    struct dx_ent **v, *e;
    size_t n = 0, i, j, bs = c->bs, maxrun = DX_RUN_BYTES / c->bs;
    unsigned char *run;
    errcode_t err = 0;

    if (!c->ndirty)
        return 0;
    v = malloc(c->ndirty * sizeof(*v));
    run = malloc(DX_RUN_BYTES);
    if (!v || !run) {
        free(v);
        free(run);
        return EXT2_ET_NO_MEMORY;
    }
    for (e = c->lru.next; e != &c->lru; e = e->next)
        if (e->dirty)
            v[n++] = e;
    qsort(v, n, sizeof(*v), dx_cmp_ent);
    for (i = 0; i < n && !err; i = j) {
        for (j = i + 1; j < n && j - i < maxrun && v[j]->blk == v[j - 1]->blk + 1; j++)
            ;
        if (j - i == 1) {
            err = dx_py_write(c, v[i]->blk, bs, v[i]->data);
        } else {
            size_t k;
            for (k = i; k < j; k++)
                memcpy(run + (k - i) * bs, v[k]->data, bs);
            err = dx_py_write(c, v[i]->blk, (j - i) * bs, run);
        }
        if (!err) {
            size_t k;
            for (k = i; k < j; k++) {
                v[k]->dirty = 0;
                c->ndirty--;
            }
        }
    }
    c->dx.flushes++;
    free(v);
    free(run);
    return err;
}

static errcode_t dx_drop_all(struct dx_chan *c)
{
    errcode_t err = dx_flush_dirty(c);
    if (err)
        return err;
    while (c->lru.next != &c->lru)
        dx_evict(c, c->lru.next);
    return 0;
}

/* Make room for one more entry: evict the least recently used clean block,
 * flushing the dirty ones first when the victim is dirty. */
static errcode_t dx_make_room(struct dx_chan *c)
{
    errcode_t err;
    while (c->count >= dx_max_count(c)) {
        struct dx_ent *victim = c->lru.prev;
        if (victim->dirty) {
            err = dx_flush_dirty(c);
            if (err)
                return err;
        }
        dx_evict(c, victim);
    }
    return 0;
}

static errcode_t dx_insert(struct dx_chan *c, unsigned long long blk, const void *data,
                           int dirty, struct dx_ent **out)
{
    struct dx_ent *e;
    size_t h;
    errcode_t err = dx_make_room(c);
    if (err)
        return err;
    e = malloc(sizeof(*e) + c->bs);
    if (!e)
        return EXT2_ET_NO_MEMORY;
    e->blk = blk;
    e->dirty = dirty;
    memcpy(e->data, data, c->bs);
    h = dx_hash(c, blk);
    e->hnext = c->buckets[h];
    c->buckets[h] = e;
    dx_lru_front(c, e);
    c->count++;
    if (dirty)
        c->ndirty++;
    if (out)
        *out = e;
    return 0;
}

/* Bring block blk into the cache (reading a readahead window on a miss). */
static errcode_t dx_get(struct dx_chan *c, unsigned long long blk, struct dx_ent **out)
{
    unsigned long long per, first, i;
    unsigned char *buf;
    errcode_t err;
    struct dx_ent *e = dx_find(c, blk);

    if (e) {
        c->dx.hits++;
        dx_touch(c, e);
        *out = e;
        return 0;
    }
    c->dx.misses++;
    per = DX_READAHEAD / c->bs;
    if (per < 1)
        per = 1;
    first = blk - blk % per;
    buf = malloc(per * c->bs);
    if (!buf)
        return EXT2_ET_NO_MEMORY;
    err = dx_py_read(c, first, per * c->bs, buf);
    for (i = 0; !err && i < per; i++) {
        if (first + i == blk || dx_find(c, first + i))
            continue;
        err = dx_insert(c, first + i, buf + i * c->bs, 0, NULL);
    }
    if (!err)
        err = dx_insert(c, blk, buf + (blk - first) * c->bs, 0, &e);
    free(buf);
    if (!err)
        *out = e;
    return err;
}

static errcode_t dx_read_range(struct dx_chan *c, unsigned long long blk, size_t nblk,
                               unsigned char *buf)
{
    size_t i;
    errcode_t err;
    struct dx_ent *e;

    if (nblk * c->bs >= DX_BYPASS_BYTES) {
        err = dx_py_read(c, blk, nblk * c->bs, buf);
        if (err || !c->ndirty)
            return err;
        /* clean cached copies equal the device; overlay the dirty ones */
        if (c->count < nblk) {
            for (e = c->lru.next; e != &c->lru; e = e->next)
                if (e->dirty && e->blk >= blk && e->blk < blk + nblk)
                    memcpy(buf + (e->blk - blk) * c->bs, e->data, c->bs);
        } else {
            for (i = 0; i < nblk; i++)
                if ((e = dx_find(c, blk + i)) && e->dirty)
                    memcpy(buf + i * c->bs, e->data, c->bs);
        }
        return 0;
    }
    for (i = 0; i < nblk; i++) {
        err = dx_get(c, blk + i, &e);
        if (err)
            return err;
        memcpy(buf + i * c->bs, e->data, c->bs);
    }
    return 0;
}

static errcode_t dx_write_range(struct dx_chan *c, unsigned long long blk, size_t nblk,
                                const unsigned char *buf)
{
    size_t i;
    errcode_t err;
    struct dx_ent *e;

    if (nblk * c->bs >= DX_BYPASS_BYTES) {
        /* keep cached copies coherent: they become clean copies of buf */
        if (c->count < nblk) {
            for (e = c->lru.next; e != &c->lru; e = e->next)
                if (e->blk >= blk && e->blk < blk + nblk) {
                    memcpy(e->data, buf + (e->blk - blk) * c->bs, c->bs);
                    if (e->dirty) {
                        e->dirty = 0;
                        c->ndirty--;
                    }
                }
        } else {
            for (i = 0; i < nblk; i++)
                if ((e = dx_find(c, blk + i))) {
                    memcpy(e->data, buf + i * c->bs, c->bs);
                    if (e->dirty) {
                        e->dirty = 0;
                        c->ndirty--;
                    }
                }
        }
        return dx_py_write(c, blk, nblk * c->bs, buf);
    }
    for (i = 0; i < nblk; i++) {
        const unsigned char *p = buf + i * c->bs;
        e = dx_find(c, blk + i);
        if (e) {
            dx_touch(c, e);
            if (memcmp(e->data, p, c->bs) == 0) {
                c->dx.skipped_writes++;
                continue;
            }
            memcpy(e->data, p, c->bs);
            if (!e->dirty) {
                e->dirty = 1;
                c->ndirty++;
            }
        } else {
            err = dx_insert(c, blk + i, p, 1, NULL);
            if (err)
                return err;
        }
    }
    if (c->ndirty > dx_max_dirty(c))
        return dx_flush_dirty(c);
    return 0;
}

/* Partial-block writes: read-modify-write through the cache. */
static errcode_t dx_write_bytes(struct dx_chan *c, unsigned long long off, size_t len,
                                const unsigned char *data)
{
    while (len) {
        unsigned long long blk = off / c->bs;
        size_t boff = off % c->bs, n = c->bs - boff;
        struct dx_ent *e;
        errcode_t err;
        if (n > len)
            n = len;
        err = dx_get(c, blk, &e);
        if (err)
            return err;
        if (memcmp(e->data + boff, data, n) != 0) {
            memcpy(e->data + boff, data, n);
            if (!e->dirty) {
                e->dirty = 1;
                c->ndirty++;
            }
        }
        off += n;
        data += n;
        len -= n;
    }
    return 0;
}

static errcode_t dx_open_chan(const char *name, int flags, io_channel *channel)
{
    io_channel io = NULL;
    struct dx_chan *c = NULL;
    const char *p;
    char *end;
    long h;
    errcode_t err;
    (void)flags;

    if (!name || strncmp(name, DX_IO_MAGIC_NAME ":", strlen(DX_IO_MAGIC_NAME) + 1) != 0)
        return EXT2_ET_BAD_DEVICE_NAME;
    p = name + strlen(DX_IO_MAGIC_NAME) + 1;
    h = strtol(p, &end, 10);
    if (end == p || *end || h < 0)
        return EXT2_ET_BAD_DEVICE_NAME;
    err = ext2fs_get_memzero(sizeof(struct struct_io_channel), &io);
    if (err)
        return err;
    c = calloc(1, sizeof(*c));
    if (!c)
        goto nomem;
    c->nbuckets = 1 << 16;
    c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
    if (!c->buckets)
        goto nomem;
    c->lru.next = c->lru.prev = &c->lru;
    c->handle = (int)h;
    c->bs = 1024;
    c->stats.num_fields = 2;
    io->magic = EXT2_ET_MAGIC_IO_CHANNEL;
    io->manager = &dx_io_manager_struct;
    err = ext2fs_get_mem(strlen(name) + 1, &io->name);
    if (err)
        goto fail;
    strcpy(io->name, name);
    io->block_size = 1024;
    io->refcount = 1;
    io->private_data = c;
    *channel = io;
    return 0;
nomem:
    err = EXT2_ET_NO_MEMORY;
fail:
    if (c)
        free(c->buckets);
    free(c);
    ext2fs_free_mem(&io);
    return err;
}

static errcode_t dx_close_chan(io_channel io)
{
    struct dx_chan *c = io->private_data;
    errcode_t err = 0;
    if (--io->refcount > 0)
        return 0;
    if (c) {
        err = dx_drop_all(c);
        while (c->lru.next != &c->lru)      /* on a write error: drop the rest */
            dx_evict(c, c->lru.next);
        free(c->buckets);
        free(c);
    }
    ext2fs_free_mem(&io->name);
    ext2fs_free_mem(&io);
    return err;
}

static errcode_t dx_set_blksize(io_channel io, int blksize)
{
    struct dx_chan *c = io->private_data;
    errcode_t err;
    if (c->bs == blksize)
        return 0;
    err = dx_drop_all(c);
    if (err)
        return err;
    c->bs = blksize;
    io->block_size = blksize;
    return 0;
}

static errcode_t dx_read_blk64(io_channel io, unsigned long long block, int count, void *data)
{
    struct dx_chan *c = io->private_data;
    size_t size = count < 0 ? (size_t)-count : (size_t)count * c->bs;
    size_t nblk = (size + c->bs - 1) / c->bs;
    unsigned char *tmp;
    errcode_t err;

    if (size % c->bs == 0)
        return dx_read_range(c, block, nblk, data);
    tmp = malloc(nblk * c->bs);
    if (!tmp)
        return EXT2_ET_NO_MEMORY;
    err = dx_read_range(c, block, nblk, tmp);
    if (!err)
        memcpy(data, tmp, size);
    free(tmp);
    return err;
}

static errcode_t dx_write_blk64(io_channel io, unsigned long long block, int count,
                                const void *data)
{
    struct dx_chan *c = io->private_data;
    size_t size = count < 0 ? (size_t)-count : (size_t)count * c->bs;
    if (size % c->bs == 0)
        return dx_write_range(c, block, size / c->bs, data);
    return dx_write_bytes(c, block * (unsigned long long)c->bs, size, data);
}

static errcode_t dx_read_blk(io_channel io, unsigned long block, int count, void *data)
{
    return dx_read_blk64(io, block, count, data);
}

static errcode_t dx_write_blk(io_channel io, unsigned long block, int count, const void *data)
{
    return dx_write_blk64(io, block, count, data);
}

static errcode_t dx_write_byte(io_channel io, unsigned long offset, int size, const void *data)
{
    if (size < 0)
        return EXT2_ET_INVALID_ARGUMENT;
    return dx_write_bytes(io->private_data, offset, size, data);
}

static errcode_t dx_flush_chan(io_channel io)
{
    struct dx_chan *c = io->private_data;
    errcode_t err = dx_flush_dirty(c);
    if (err)
        return err;
    return dmthin_extfs_flush(c->handle);
}

/* Cached copies of blocks in [block, block+count) are dropped, dirty or not:
 * the range is about to be discarded or zeroed on the device. */
static void dx_forget(struct dx_chan *c, unsigned long long block, unsigned long long count)
{
    struct dx_ent *e, *next;
    for (e = c->lru.next; e != &c->lru; e = next) {
        next = e->next;
        if (e->blk >= block && e->blk < block + count)
            dx_evict(c, e);
    }
}

static errcode_t dx_discard(io_channel io, unsigned long long block, unsigned long long count)
{
    struct dx_chan *c = io->private_data;
    dx_forget(c, block, count);
    return dmthin_extfs_discard(c->handle, block * c->bs, count * c->bs);
}

static errcode_t dx_zeroout(io_channel io, unsigned long long block, unsigned long long count)
{
    struct dx_chan *c = io->private_data;
    dx_forget(c, block, count);
    return dmthin_extfs_zeroout(c->handle, block * c->bs, count * c->bs);
}

static errcode_t dx_set_option(io_channel io, const char *option, const char *arg)
{
    (void)io; (void)option; (void)arg;
    return EXT2_ET_INVALID_ARGUMENT;
}

static errcode_t dx_get_stats(io_channel io, io_stats *stats)
{
    struct dx_chan *c = io->private_data;
    if (stats)
        *stats = &c->stats;
    return 0;
}

static struct struct_io_manager dx_io_manager_struct = {
    .magic = EXT2_ET_MAGIC_IO_MANAGER,
    .name = "dmthin ThinDevice I/O Manager",
    .open = dx_open_chan,
    .close = dx_close_chan,
    .set_blksize = dx_set_blksize,
    .read_blk = dx_read_blk,
    .write_blk = dx_write_blk,
    .flush = dx_flush_chan,
    .write_byte = dx_write_byte,
    .set_option = dx_set_option,
    .get_stats = dx_get_stats,
    .read_blk64 = dx_read_blk64,
    .write_blk64 = dx_write_blk64,
    .discard = dx_discard,
    .zeroout = dx_zeroout,
};

/* Write the dirty cache without the device flush (no pool commit). */
static errcode_t dx_writeback(ext2_filsys fs)
{
    return dx_flush_dirty(fs->io->private_data);
}

static void dx_io_stats(ext2_filsys fs, struct dx_iostats *out)
{
    struct dx_chan *c = fs->io->private_data;
    *out = c->dx;
}

/* Open the filesystem behind the Python device handle in name
 * ("dmthin-extfs:<handle>"); read-write opens load the bitmaps and write
 * only the primary superblock and group descriptors, as the kernel does. */
static errcode_t dx_open(const char *name, int rw, ext2_filsys *out)
{
    ext2_filsys fs;
    int flags = EXT2_FLAG_64BITS | (rw ? EXT2_FLAG_RW : 0);
    errcode_t err = ext2fs_open2(name, NULL, flags, 0, 0, &dx_io_manager_struct, &fs);
    if (err)
        return err;
    if (rw) {
        fs->flags |= EXT2_FLAG_MASTER_SB_ONLY;
        err = ext2fs_read_bitmaps(fs);
        if (!err)
            err = dx_defer_attach(fs);
        if (err) {
            ext2fs_free(fs);
            return err;
        }
    }
    *out = fs;
    return 0;
}

/* Write what is dirty (superblock, descriptors, bitmaps, cached blocks);
 * commit > 0 also flushes the device (a pool commit). */
static errcode_t dx_flush(ext2_filsys fs, int commit)
{
    if (!(fs->flags & EXT2_FLAG_RW))
        return 0;
    if (commit)
        dx_release_deferred(fs);
    return ext2fs_flush2(fs, commit ? 0 : EXT2_FLAG_FLUSH_NO_SYNC);
}

/* Close: write everything (unless discard), then free the handle even on
 * a write error. */
static errcode_t dx_close(ext2_filsys fs, int discard)
{
    errcode_t err = 0;
    if (discard) {
        struct dx_chan *c = fs->io->private_data;
        dx_defer_detach(fs);
        struct dx_ent *e;
        for (e = c->lru.next; e != &c->lru; e = e->next)
            e->dirty = 0;
        c->ndirty = 0;
        fs->flags &= ~(EXT2_FLAG_DIRTY | EXT2_FLAG_RW);
        ext2fs_free(fs);
        return 0;
    }
    if (fs->flags & EXT2_FLAG_RW)
        dx_release_deferred(fs);
    dx_defer_detach(fs);
    err = ext2fs_close2(fs, 0);
    if (err)
        ext2fs_free(fs);
    return err;
}
