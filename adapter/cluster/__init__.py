"""Several adapter nodes as one: `[cluster]` (docs/cluster.md).

The nodes share their state in PostgreSQL (``[store] url``) and pass Bayeux
messages through Redis (`bus.py`, `relay.py`, `forward.py`).
"""
