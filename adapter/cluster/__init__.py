"""Several adapters as one: nodes sharing a PostgreSQL store and a Redis (``[cluster]``).

* :mod:`adapter.cluster.nodes` — the node registry: each node's heartbeat,
  its HTTP and SIP addresses, who is alive;
* :mod:`adapter.cluster.leases` — one owner for each piece of SIP work (a
  publication, a watch): leases with expiry and fencing tokens;
* :mod:`adapter.cluster.ownership` — a node's side of it: renewing, taking
  over a dead node's work, letting go of work lost, and serving a REST call
  about work another node owns by passing it to that node;
* :mod:`adapter.cluster.relay` — Bayeux messages between the nodes, a Redis
  stream per application (the Redis side in :mod:`adapter.cluster.bus`);
  :mod:`adapter.cluster.forward` passes a Bayeux request to the node holding
  its session; :mod:`adapter.cluster.bayeux` puts a node's Bayeux together.

docs/architecture.md ("Cluster") tells the design.
"""
