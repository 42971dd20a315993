"""Persistent data: block I/O with checksums, transactions with shadowing,
btrees and space maps in the Linux kernel's on-disk format
(drivers/md/persistent-data).  Knows nothing about thin provisioning."""
