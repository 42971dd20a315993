"""The kernel's thin-pool and thin targets as text: tables, status lines
and messages.  Shared by the simulated and the kernel backends."""
from .status import PoolStatus, ThinStatus, PoolMode, DiscardMode, NoSpacePolicy
from .table import PoolTable, ThinTable, POOL_FEATURES
from .message import Message, parse_message

__all__ = ["PoolStatus", "ThinStatus", "PoolMode", "DiscardMode", "NoSpacePolicy",
           "PoolTable", "ThinTable", "POOL_FEATURES", "Message", "parse_message"]
