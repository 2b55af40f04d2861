"""adapter."""

import sys

# httpx (the XCAP client, the cluster's HTTP calls) imports its command-line
# client (click, rich, pygments: megabytes of resident memory) whenever those
# are installed; the adapter never runs it.  A None entry makes
# that import fail, as httpx expects when they are missing (httpx/__init__.py
# then defines a `main` that says so).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
