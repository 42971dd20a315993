/* Inode-level operations of dmthin.extfs on top of libext2fs, with the
 * kernel's ext4 semantics where libext2fs leaves a choice: nanosecond
 * times with epoch bits, device numbers encoded as ext4_write_inode does,
 * an empty extent header in every new regular file, parent mtime/ctime
 * updated by every entry added or removed, zeroing of the partial last
 * block on a shrinking truncate, blocks and inode freed with the last link.
 *
 * Paths are resolved in Python; everything here takes a directory inode
 * and one name.  Names are NUL-terminated byte strings without '/'.
 * Included in the cffi source after ext2fs_io.c. */

struct dx_time {
    long long sec;
    unsigned int nsec;
};

struct dx_stat {
    unsigned int ino, mode, uid, gid, nlink, flags, rdev_major, rdev_minor;
    unsigned long long size, blocks;
    long long atime, mtime, ctime, crtime;
    unsigned int atime_ns, mtime_ns, ctime_ns, crtime_ns;
};

struct dx_fsinfo {
    unsigned int block_size, inode_size, first_ino, state;
    unsigned long long blocks_count, free_blocks, r_blocks;
    unsigned int inodes_count, free_inodes;
    unsigned int compat, incompat, ro_compat;
    unsigned char uuid[16];
    char label[17];
};

#define DX_SET_MODE  1
#define DX_SET_UID   2
#define DX_SET_GID   4
#define DX_SET_ATIME 8
#define DX_SET_MTIME 16

typedef struct ext2_inode_large dx_inode;

static errcode_t dx_punch_deferred(ext2_filsys fs, ext2_ino_t ino, dx_inode *in, blk64_t first,
                                   blk64_t last);

#define DX_FITS(in, field) \
    (offsetof(struct ext2_inode_large, field) + sizeof((in)->field) <= \
     EXT2_GOOD_OLD_INODE_SIZE + (size_t)(in)->i_extra_isize)

static __u32 dx_encode_extra(const struct dx_time *t)
{
    __u32 epoch = (__u32)(((t->sec - (long long)(__s32)t->sec) >> 32) & EXT4_EPOCH_MASK);
    return epoch | (t->nsec << EXT4_EPOCH_BITS);
}

static void dx_decode_time(__u32 raw, __u32 extra, int has_extra, long long *sec,
                           unsigned int *nsec)
{
    *sec = (__s32)raw;
    *nsec = 0;
    if (has_extra) {
        *sec += (long long)(extra & EXT4_EPOCH_MASK) << 32;
        *nsec = extra >> EXT4_EPOCH_BITS;
    }
}

#define DX_SET_TIME(in, field, t) do { \
        (in)->i_##field = (__u32)(t)->sec; \
        if (DX_FITS(in, i_##field##_extra)) \
            (in)->i_##field##_extra = dx_encode_extra(t); \
    } while (0)

static errcode_t dx_read(ext2_filsys fs, ext2_ino_t ino, dx_inode *in)
{
    memset(in, 0, sizeof(*in));
    return ext2fs_read_inode_full(fs, ino, EXT2_INODE(in), sizeof(*in));
}

static errcode_t dx_write(ext2_filsys fs, ext2_ino_t ino, dx_inode *in)
{
    return ext2fs_write_inode_full(fs, ino, EXT2_INODE(in), sizeof(*in));
}

static int dx_ftype(unsigned int mode)
{
    if (LINUX_S_ISREG(mode)) return EXT2_FT_REG_FILE;
    if (LINUX_S_ISDIR(mode)) return EXT2_FT_DIR;
    if (LINUX_S_ISCHR(mode)) return EXT2_FT_CHRDEV;
    if (LINUX_S_ISBLK(mode)) return EXT2_FT_BLKDEV;
    if (LINUX_S_ISLNK(mode)) return EXT2_FT_SYMLINK;
    if (LINUX_S_ISFIFO(mode)) return EXT2_FT_FIFO;
    if (LINUX_S_ISSOCK(mode)) return EXT2_FT_SOCK;
    return EXT2_FT_UNKNOWN;
}

static void dx_set_owner(dx_inode *in, unsigned int uid, unsigned int gid)
{
    in->i_uid = uid & 0xFFFF;
    ext2fs_set_i_uid_high(*in, uid >> 16);
    in->i_gid = gid & 0xFFFF;
    ext2fs_set_i_gid_high(*in, gid >> 16);
}

/* mtime and ctime of a directory whose entries changed */
static errcode_t dx_touch_dir(ext2_filsys fs, ext2_ino_t dir, const struct dx_time *now)
{
    dx_inode in;
    errcode_t err = dx_read(fs, dir, &in);
    if (err)
        return err;
    DX_SET_TIME(&in, mtime, now);
    DX_SET_TIME(&in, ctime, now);
    return dx_write(fs, dir, &in);
}

/* ext2fs_link, growing the directory when it is full */
static errcode_t dx_add_entry(ext2_filsys fs, ext2_ino_t dir, const char *name,
                              ext2_ino_t ino, int ftype)
{
    errcode_t err = ext2fs_link(fs, dir, name, ino, ftype);
    if (err == EXT2_ET_DIR_NO_SPACE) {
        dx_inode d;
        err = dx_read(fs, dir, &d);
        if (err)
            return err;
        if (d.i_flags & EXT2_INDEX_FL)     /* an htree that cannot grow further */
            return EXT2_ET_DIR_NO_SPACE;
        err = ext2fs_expand_dir(fs, dir);
        if (err)
            return err;
        err = ext2fs_link(fs, dir, name, ino, ftype);
    }
    return err;
}

static void dx_fill_stat(ext2_filsys fs, ext2_ino_t ino, dx_inode *in, struct dx_stat *st)
{
    int extra = EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE;
    memset(st, 0, sizeof(*st));
    st->ino = ino;
    st->mode = in->i_mode;
    st->uid = inode_uid(*in);
    st->gid = inode_gid(*in);
    st->nlink = in->i_links_count;
    st->flags = in->i_flags;
    st->size = EXT2_I_SIZE(in);
    st->blocks = ext2fs_get_stat_i_blocks(fs, EXT2_INODE(in));
    dx_decode_time(in->i_atime, in->i_atime_extra, extra && DX_FITS(in, i_atime_extra),
                   &st->atime, &st->atime_ns);
    dx_decode_time(in->i_mtime, in->i_mtime_extra, extra && DX_FITS(in, i_mtime_extra),
                   &st->mtime, &st->mtime_ns);
    dx_decode_time(in->i_ctime, in->i_ctime_extra, extra && DX_FITS(in, i_ctime_extra),
                   &st->ctime, &st->ctime_ns);
    if (extra && DX_FITS(in, i_crtime))
        dx_decode_time(in->i_crtime, in->i_crtime_extra, DX_FITS(in, i_crtime_extra),
                       &st->crtime, &st->crtime_ns);
    if (LINUX_S_ISCHR(in->i_mode) || LINUX_S_ISBLK(in->i_mode)) {
        __u32 old = in->i_block[0], new_ = in->i_block[1];
        if (old) {                      /* old_decode_dev */
            st->rdev_major = (old >> 8) & 255;
            st->rdev_minor = old & 255;
        } else {                        /* new_decode_dev */
            st->rdev_major = (new_ & 0xfff00) >> 8;
            st->rdev_minor = (new_ & 0xff) | ((new_ >> 12) & 0xfff00);
        }
    }
}

static errcode_t dx_stat(ext2_filsys fs, ext2_ino_t ino, struct dx_stat *st)
{
    dx_inode in;
    errcode_t err = dx_read(fs, ino, &in);
    if (!err)
        dx_fill_stat(fs, ino, &in, st);
    return err;
}

/* -- directories ------------------------------------------------------- */
struct dx_dirbuf {
    char *buf;
    size_t len, cap;
    errcode_t err;
};

static int dx_readdir_proc(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent,
                           int offset, int blocksize, char *buf, void *priv)
{
    struct dx_dirbuf *d = priv;
    int len = ext2fs_dirent_name_len(dirent);
    size_t need = 8 + (size_t)len;
    (void)dir; (void)entry; (void)offset; (void)blocksize; (void)buf;
    if ((len == 1 && dirent->name[0] == '.') ||
        (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
        return 0;
    if (d->len + need > d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4096;
        char *p;
        while (cap < d->len + need)
            cap *= 2;
        p = realloc(d->buf, cap);
        if (!p) {
            d->err = EXT2_ET_NO_MEMORY;
            return DIRENT_ABORT;
        }
        d->buf = p;
        d->cap = cap;
    }
    /* record: u32 ino, u8 file type, u8 0, u16 name length, name */
    memcpy(d->buf + d->len, &dirent->inode, 4);
    d->buf[d->len + 4] = (char)ext2fs_dirent_file_type(dirent);
    d->buf[d->len + 5] = 0;
    d->buf[d->len + 6] = (char)(len & 0xff);
    d->buf[d->len + 7] = (char)(len >> 8);
    memcpy(d->buf + d->len + 8, dirent->name, len);
    d->len += need;
    return 0;
}

/* The entries of directory ino (without . and ..) in a malloc'd buffer of
 * records; free it with dx_free. */
static errcode_t dx_readdir(ext2_filsys fs, ext2_ino_t ino, char **out, size_t *outlen)
{
    struct dx_dirbuf d = {NULL, 0, 0, 0};
    errcode_t err = ext2fs_dir_iterate2(fs, ino, 0, NULL, dx_readdir_proc, &d);
    if (!err)
        err = d.err;
    if (err) {
        free(d.buf);
        return err;
    }
    *out = d.buf;
    *outlen = d.len;
    return 0;
}

static int dx_empty_proc(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent,
                         int offset, int blocksize, char *buf, void *priv)
{
    int len = ext2fs_dirent_name_len(dirent);
    (void)dir; (void)entry; (void)offset; (void)blocksize; (void)buf;
    if (dirent->inode == 0 || (len == 1 && dirent->name[0] == '.') ||
        (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
        return 0;
    *(int *)priv = 0;
    return DIRENT_ABORT;
}

struct dx_find {
    const char *name;
    int len;
    ext2_ino_t ino;
    int ftype;
};

static int dx_lookup_proc(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent,
                          int offset, int blocksize, char *buf, void *priv)
{
    struct dx_find *f = priv;
    (void)dir; (void)entry; (void)offset; (void)blocksize; (void)buf;
    if (dirent->inode == 0 || ext2fs_dirent_name_len(dirent) != f->len ||
        memcmp(dirent->name, f->name, f->len) != 0)
        return 0;
    f->ino = dirent->inode;
    f->ftype = ext2fs_dirent_file_type(dirent);
    return DIRENT_ABORT;
}

/* The inode and directory-entry file type (EXT2_FT_*) of name in dir. */
static errcode_t dx_lookup(ext2_filsys fs, ext2_ino_t dir, const char *name, int len,
                           ext2_ino_t *ino, int *ftype)
{
    struct dx_find f = {name, len, 0, 0};
    errcode_t err = ext2fs_dir_iterate2(fs, dir, 0, NULL, dx_lookup_proc, &f);
    if (err)
        return err;
    if (!f.ino)
        return EXT2_ET_FILE_NOT_FOUND;
    *ino = f.ino;
    *ftype = f.ftype;
    return 0;
}

/* -- creating ---------------------------------------------------------- */
static errcode_t dx_init_new(ext2_filsys fs, dx_inode *in, unsigned int mode, unsigned int uid,
                             unsigned int gid, const struct dx_time *now)
{
    memset(in, 0, sizeof(*in));
    in->i_mode = mode;
    in->i_links_count = 1;
    dx_set_owner(in, uid, gid);
    if (EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE) {
        size_t extra = sizeof(dx_inode) - EXT2_GOOD_OLD_INODE_SIZE;
        if (extra > (size_t)EXT2_INODE_SIZE(fs->super) - EXT2_GOOD_OLD_INODE_SIZE)
            extra = EXT2_INODE_SIZE(fs->super) - EXT2_GOOD_OLD_INODE_SIZE;
        in->i_extra_isize = (__u16)extra;
    }
    DX_SET_TIME(in, atime, now);
    DX_SET_TIME(in, mtime, now);
    DX_SET_TIME(in, ctime, now);
    if (DX_FITS(in, i_crtime))
        DX_SET_TIME(in, crtime, now);
    return 0;
}

/* A regular file, fifo, socket or device node called name in dir. */
static errcode_t dx_mknod(ext2_filsys fs, ext2_ino_t dir, const char *name, unsigned int mode,
                          unsigned int uid, unsigned int gid, unsigned int major,
                          unsigned int minor, const struct dx_time *now, ext2_ino_t *out)
{
    ext2_ino_t ino;
    dx_inode in;
    errcode_t err;

    if (!(LINUX_S_ISREG(mode) || LINUX_S_ISCHR(mode) || LINUX_S_ISBLK(mode) ||
          LINUX_S_ISFIFO(mode) || LINUX_S_ISSOCK(mode)))
        return EXT2_ET_INVALID_ARGUMENT;
    err = ext2fs_new_inode(fs, dir, mode, 0, &ino);
    if (err)
        return err;
    dx_init_new(fs, &in, mode, uid, gid, now);
    if (LINUX_S_ISREG(mode) && ext2fs_has_feature_extents(fs->super)) {
        struct ext3_extent_header *eh = (struct ext3_extent_header *)in.i_block;
        in.i_flags |= EXT4_EXTENTS_FL;
        eh->eh_magic = ext2fs_cpu_to_le16(EXT3_EXT_MAGIC);
        eh->eh_depth = 0;
        eh->eh_entries = 0;
        eh->eh_max = ext2fs_cpu_to_le16((sizeof(in.i_block) - sizeof(*eh)) /
                                        sizeof(struct ext3_extent));
    } else if (LINUX_S_ISCHR(mode) || LINUX_S_ISBLK(mode)) {
        if (major < 256 && minor < 256) {           /* old_encode_dev */
            in.i_block[0] = (major << 8) | minor;
        } else {                                    /* new_encode_dev */
            in.i_block[1] = (minor & 0xff) | (major << 8) | ((minor & ~0xffU) << 12);
        }
    }
    err = ext2fs_write_new_inode(fs, ino, EXT2_INODE(&in));
    if (!err)
        err = dx_write(fs, ino, &in);
    if (err)
        return err;
    ext2fs_inode_alloc_stats2(fs, ino, +1, 0);
    err = dx_add_entry(fs, dir, name, ino, dx_ftype(mode));
    if (err) {
        ext2fs_inode_alloc_stats2(fs, ino, -1, 0);
        return err;
    }
    *out = ino;
    return dx_touch_dir(fs, dir, now);
}

static errcode_t dx_mkdir(ext2_filsys fs, ext2_ino_t dir, const char *name, unsigned int mode,
                          unsigned int uid, unsigned int gid, const struct dx_time *now,
                          ext2_ino_t *out)
{
    ext2_ino_t ino;
    dx_inode in;
    errcode_t err = ext2fs_new_inode(fs, dir, LINUX_S_IFDIR | 0755, 0, &ino);
    if (err)
        return err;
    err = ext2fs_mkdir(fs, dir, ino, NULL);        /* also counts the parent's new link */
    if (err)
        return err;
    err = dx_add_entry(fs, dir, name, ino, EXT2_FT_DIR);
    if (err) {
        dx_inode p;
        blk64_t blk = 0;
        if (dx_read(fs, ino, &in) == 0 &&
            ext2fs_bmap2(fs, ino, EXT2_INODE(&in), NULL, 0, 0, NULL, &blk) == 0 && blk)
            ext2fs_block_alloc_stats2(fs, blk, -1);
        ext2fs_inode_alloc_stats2(fs, ino, -1, 1);
        if (dx_read(fs, dir, &p) == 0) {
            p.i_links_count--;
            dx_write(fs, dir, &p);
        }
        return err;
    }
    err = dx_read(fs, ino, &in);
    if (err)
        return err;
    in.i_mode = LINUX_S_IFDIR | (mode & 07777);
    dx_set_owner(&in, uid, gid);
    if (EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE && !in.i_extra_isize)
        in.i_extra_isize = sizeof(dx_inode) - EXT2_GOOD_OLD_INODE_SIZE;
    DX_SET_TIME(&in, atime, now);
    DX_SET_TIME(&in, mtime, now);
    DX_SET_TIME(&in, ctime, now);
    if (DX_FITS(&in, i_crtime))
        DX_SET_TIME(&in, crtime, now);
    err = dx_write(fs, ino, &in);
    if (err)
        return err;
    *out = ino;
    return dx_touch_dir(fs, dir, now);
}

static errcode_t dx_symlink(ext2_filsys fs, ext2_ino_t dir, const char *name,
                            const char *target, unsigned int uid, unsigned int gid,
                            const struct dx_time *now, ext2_ino_t *out)
{
    ext2_ino_t ino;
    dx_inode in;
    errcode_t err = ext2fs_new_inode(fs, dir, LINUX_S_IFLNK | 0777, 0, &ino);
    if (err)
        return err;
    err = ext2fs_symlink(fs, dir, ino, NULL, target);
    if (err)
        return err;
    err = dx_add_entry(fs, dir, name, ino, EXT2_FT_SYMLINK);
    if (!err)
        err = dx_read(fs, ino, &in);
    if (err) {
        dx_inode tmp;
        if (dx_read(fs, ino, &tmp) == 0 &&
            ext2fs_inode_has_valid_blocks2(fs, EXT2_INODE(&tmp)))
            ext2fs_punch(fs, ino, EXT2_INODE(&tmp), NULL, 0, ~0ULL);
        ext2fs_inode_alloc_stats2(fs, ino, -1, 0);
        return err;
    }
    dx_set_owner(&in, uid, gid);
    if (EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE && !in.i_extra_isize)
        in.i_extra_isize = sizeof(dx_inode) - EXT2_GOOD_OLD_INODE_SIZE;
    DX_SET_TIME(&in, atime, now);
    DX_SET_TIME(&in, mtime, now);
    DX_SET_TIME(&in, ctime, now);
    if (DX_FITS(&in, i_crtime))
        DX_SET_TIME(&in, crtime, now);
    err = dx_write(fs, ino, &in);
    if (err)
        return err;
    *out = ino;
    return dx_touch_dir(fs, dir, now);
}

/* A hard link name in dir to inode ino (not a directory). */
static errcode_t dx_link(ext2_filsys fs, ext2_ino_t dir, const char *name, ext2_ino_t ino,
                         const struct dx_time *now)
{
    dx_inode in;
    errcode_t err = dx_read(fs, ino, &in);
    if (err)
        return err;
    if (LINUX_S_ISDIR(in.i_mode))
        return EPERM;
    if (in.i_links_count >= EXT2_LINK_MAX)
        return EMLINK;
    err = dx_add_entry(fs, dir, name, ino, dx_ftype(in.i_mode));
    if (err)
        return err;
    in.i_links_count++;
    DX_SET_TIME(&in, ctime, now);
    err = dx_write(fs, ino, &in);
    if (err)
        return err;
    return dx_touch_dir(fs, dir, now);
}

/* -- removing ---------------------------------------------------------- */
/* Drop one link of ino (two for a directory: its name and its "."); free
 * its xattr block, blocks and the inode itself with the last one. */
static errcode_t dx_put_inode(ext2_filsys fs, ext2_ino_t ino, const struct dx_time *now)
{
    dx_inode in;
    int isdir;
    errcode_t err = dx_read(fs, ino, &in);
    if (err)
        return err;
    isdir = LINUX_S_ISDIR(in.i_mode);
    if (isdir || in.i_links_count <= 1)
        in.i_links_count = 0;
    else
        in.i_links_count--;
    DX_SET_TIME(&in, ctime, now);
    if (in.i_links_count == 0) {
        err = ext2fs_free_ext_attr(fs, ino, &in);
        if (err)
            return err;
        if (ext2fs_inode_has_valid_blocks2(fs, EXT2_INODE(&in))) {
            err = dx_punch_deferred(fs, ino, &in, 0, ~0ULL);
            if (err)
                return err;
        }
        in.i_dtime = (__u32)now->sec;
        ext2fs_inode_alloc_stats2(fs, ino, -1, isdir);
    }
    return dx_write(fs, ino, &in);
}

/* Remove entry name of dir: a non-directory (want_dir 0) or an empty
 * directory (want_dir 1). */
static errcode_t dx_remove(ext2_filsys fs, ext2_ino_t dir, const char *name, int want_dir,
                           const struct dx_time *now)
{
    ext2_ino_t ino;
    dx_inode in;
    errcode_t err = ext2fs_lookup(fs, dir, name, strlen(name), NULL, &ino);
    if (err)
        return err;
    err = dx_read(fs, ino, &in);
    if (err)
        return err;
    if (want_dir && !LINUX_S_ISDIR(in.i_mode))
        return ENOTDIR;
    if (!want_dir && LINUX_S_ISDIR(in.i_mode))
        return EISDIR;
    if (want_dir) {
        int empty = 1;
        err = ext2fs_dir_iterate2(fs, ino, 0, NULL, dx_empty_proc, &empty);
        if (err)
            return err;
        if (!empty)
            return ENOTEMPTY;
    }
    err = ext2fs_unlink(fs, dir, name, ino, 0);
    if (err)
        return err;
    err = dx_put_inode(fs, ino, now);
    if (err)
        return err;
    if (want_dir) {
        dx_inode p;
        err = dx_read(fs, dir, &p);
        if (err)
            return err;
        if (p.i_links_count > 2)       /* dir_nlink keeps 1 once counting overflowed */
            p.i_links_count--;
        DX_SET_TIME(&p, mtime, now);
        DX_SET_TIME(&p, ctime, now);
        return dx_write(fs, dir, &p);
    }
    return dx_touch_dir(fs, dir, now);
}

/* -- attributes -------------------------------------------------------- */
static errcode_t dx_setattr(ext2_filsys fs, ext2_ino_t ino, int mask, unsigned int mode,
                            unsigned int uid, unsigned int gid, const struct dx_time *atime,
                            const struct dx_time *mtime, const struct dx_time *now)
{
    dx_inode in;
    errcode_t err = dx_read(fs, ino, &in);
    if (err)
        return err;
    if (mask & DX_SET_MODE)
        in.i_mode = (in.i_mode & LINUX_S_IFMT) | (mode & 07777);
    if (mask & DX_SET_UID)
        dx_set_owner(&in, uid, inode_gid(in));
    if (mask & DX_SET_GID)
        dx_set_owner(&in, inode_uid(in), gid);
    if (mask & DX_SET_ATIME)
        DX_SET_TIME(&in, atime, atime);
    if (mask & DX_SET_MTIME)
        DX_SET_TIME(&in, mtime, mtime);
    DX_SET_TIME(&in, ctime, now);
    return dx_write(fs, ino, &in);
}

static void dx_fsinfo(ext2_filsys fs, struct dx_fsinfo *out)
{
    struct ext2_super_block *sb = fs->super;
    memset(out, 0, sizeof(*out));
    out->block_size = fs->blocksize;
    out->inode_size = EXT2_INODE_SIZE(sb);
    out->first_ino = EXT2_FIRST_INO(sb);
    out->state = sb->s_state;
    out->blocks_count = ext2fs_blocks_count(sb);
    out->free_blocks = ext2fs_free_blocks_count(sb);
    out->r_blocks = ext2fs_r_blocks_count(sb);
    out->inodes_count = sb->s_inodes_count;
    out->free_inodes = sb->s_free_inodes_count;
    out->compat = sb->s_feature_compat;
    out->incompat = sb->s_feature_incompat;
    out->ro_compat = sb->s_feature_ro_compat;
    memcpy(out->uuid, sb->s_uuid, 16);
    memcpy(out->label, sb->s_volume_name, 16);
}

static void dx_free(void *p)
{
    free(p);
}
