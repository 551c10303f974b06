"""``spinexr-node doctor`` and the probes ``/readyz`` shares with it.

``result`` runs checks with deadlines, ``probes`` holds the runtime checks (database,
broker, bundle, spool, destinations), ``install`` the installation checks, ``run`` the
doctor itself.
"""
