"""The simulated thin pool: the kernel's dm-thin target in Python.

:class:`~dmthin.sim.pool.SimPoolBackend` serves a pool directory's
``metadata`` file (the kernel's own on-disk format, through
:mod:`dmthin.thin.metadata`) and ``data`` file (data block N at byte
N * block size), so a pool moves between the simulator and a real kernel.
Use it through :class:`dmthin.Pool` (``backend="sim"``, the default).
"""
