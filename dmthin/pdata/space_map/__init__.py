"""Space maps: reference counts of metadata blocks and of data blocks, in
the kernel's on-disk format (dm-space-map-common.c, -metadata.c, -disk.c).

- :mod:`.format`: the on-disk records (bitmaps, index entries, roots);
- :mod:`.interface`: the :class:`~.interface.SpaceMap` protocol;
- :mod:`.common`: the machinery both maps share; :mod:`.disk` (data) and
  :mod:`.metadata` (metadata, which allocates its own blocks);
- :mod:`.check`: read-only decoding and comparison, for checkers;
  :mod:`.build`: whole space maps written from counts, for restore.
"""
