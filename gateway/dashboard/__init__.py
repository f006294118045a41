"""The gateway seen from a browser or a Prometheus server: an HTTP server run by `w3gate run`
(``server.py``), its login (``access.py``) and the metrics it serves (``metrics.py``).

Everything shown is read from the running node at request time (the counters the components
already keep, as ``w3gate status`` shows them), so watching the gateway costs nothing while
nobody looks. Loopback by default; beyond loopback only over TLS and behind a login
(``[dashboard]`` in gateway/config.py refuses anything else when the configuration loads).
"""
