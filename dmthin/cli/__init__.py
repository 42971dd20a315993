"""The ``dmthin`` command line.  Each ``cmd_*.py`` module in this package
defines ``register(subparsers)`` adding one subcommand (or a group)."""
