"""Btrees in the kernel's format (dm-btree.c, dm-btree-internal.h)."""
