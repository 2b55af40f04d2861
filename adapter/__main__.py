"""``python -m adapter``: the same as the ``presence-adapter`` command."""

from adapter.cli import main

raise SystemExit(main())
