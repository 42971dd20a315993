"""The kernel's thin-pool and thin targets as text: tables, status lines
and messages.  Shared by the simulated and the kernel backends."""
from .message import Message, parse_message
from .status import DiscardMode, NoSpacePolicy, PoolMode, PoolStatus, ThinStatus
from .table import POOL_FEATURES, PoolTable, ThinTable

__all__ = ["PoolStatus", "ThinStatus", "PoolMode", "DiscardMode", "NoSpacePolicy",
           "PoolTable", "ThinTable", "POOL_FEATURES", "Message", "parse_message"]
