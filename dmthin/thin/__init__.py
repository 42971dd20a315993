"""The kernel's thin metadata (dm-thin-metadata.c) and the tools over it:
dump, restore, check, ls."""
