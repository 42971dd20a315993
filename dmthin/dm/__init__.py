"""Real device-mapper: the libdevmapper binding, loop devices and the
kernel pool backend.  The only package that touches cffi.

- :mod:`dmthin.dm.task`: device-mapper operations (create, reload, suspend,
  resume, remove, message, status, table, info, deps, list, versions).
- :mod:`dmthin.dm.loop`: loop devices by ioctl (attach, find, set capacity,
  detach).
- :mod:`dmthin.dm.busy`: mounts and holders of a block device.
- :mod:`dmthin.dm.pool`: :class:`KernelPoolBackend`, the ``"kernel"``
  backend of :class:`dmthin.Pool`.

Importing this package never fails: without the compiled binding or a
kernel with device-mapper, the operations raise
:class:`~dmthin.errors.BackendUnavailable` saying what to do.
"""
from ._lib import have_binding, kernel_has_dm, require_kernel

__all__ = ["have_binding", "kernel_has_dm", "require_kernel"]
