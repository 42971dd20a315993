"""The ``dmthin`` command line.  Each ``cmd_*.py`` module in this package
defines ``register(subparsers)`` adding one command (or a group); the
commands' summaries are in :mod:`.commands`, what they share in
:mod:`.common` and :mod:`.progress`, the dispatcher in :mod:`.main`."""
