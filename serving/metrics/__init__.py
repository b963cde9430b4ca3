"""Prometheus metrics for the whole server, from every process, behind one scrape target (/metrics).

Push, not pull: each process (the ingress, every model replica; the LLM engine's child process reports through its
replica) keeps its own prometheus_client registry (definitions.py) and a thread pushes a snapshot of it every
second to one named Ray actor, the hub (hub.py). /metrics, answered by the ingress, renders the hub's sum of every
other process plus the ingress' own live numbers, and the registry's model statuses and replica counts read at
scrape time (scrape.py). So a scrape never calls a model replica (a handle call would wake a scaled-to-zero model
and queue behind its requests), and works the same on a Ray cluster.

Exactness: counters and histograms are cumulative in each process and a push replaces that process' previous
snapshot, so the sum over processes is exact once pushed (at most one push interval late). A process that dies
keeps its last snapshot in the sum (totals never go backwards); what it counted after its last push is lost. Gauges
of a process silent for longer than STALE_S are left out (a dead replica has no running requests).
"""
