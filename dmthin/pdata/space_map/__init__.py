"""Space maps: reference counts of metadata blocks and of data blocks, in
the kernel's on-disk format (dm-space-map-common.c, -metadata.c, -disk.c)."""
