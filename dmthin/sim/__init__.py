"""The simulated thin pool: the kernel's dm-thin target in Python.

:class:`~dmthin.sim.pool.SimPoolBackend` serves a pool directory's
``metadata`` file (the kernel's own on-disk format, through
:mod:`dmthin.thin.metadata`) and ``data`` file (data block N at byte
N * block size), so a pool moves between the simulator and a real kernel.
Use it through :class:`dmthin.Pool` (``backend="sim"``, the default).

The modules, each importing only those listed before it:

* :mod:`~dmthin.sim.params` -- the kernel's constants and module parameters;
* :mod:`~dmthin.sim.engine` -- the ``MetadataEngine`` protocol the pool
  needs from its metadata (``ThinMetadata``, or a test model);
* :mod:`~dmthin.sim.datafile`, :mod:`~dmthin.sim.writes` -- the data file
  and the coalescing write queue;
* :mod:`~dmthin.sim.events`, :mod:`~dmthin.sim.mode` -- the event counter,
  the pool modes and the no-space policy;
* :mod:`~dmthin.sim.core` -- ``SimCore``: commits, allocation, the
  metadata-failure path, flushes; the state the pool and its thins share;
* :mod:`~dmthin.sim.thin` -- ``SimThin``: a thin device's read, write,
  discard and flush, over the core;
* :mod:`~dmthin.sim.pool` -- ``SimPoolBackend``: messages, status, table,
  activation, resume, lifecycle.
"""
