"""The gateway seen from a browser or a Prometheus server: an HTTP server run by `w3gate run`
(``server.py``), its login (``access.py``), the metrics it serves (``metrics.py``), and the
dashboard's pages (``static/``: plain HTML, CSS and JavaScript, no build step) with the JSON views
they read (``views.py``), the recent readings behind their plots (``readings.py``) and the
machine's figures (``system.py``).

The counters are read from the running node at request time (the figures the components already
keep, as ``w3gate status`` shows them). What is done while nobody looks, once a second and off
the event loop: following the buffer for the plots (on the store's thread, only after a group
commit, at most ``readings.PER_POLL`` records), a look at /proc and at the applets' log files.
Nothing below this package imports it: it is a reader at the top. Loopback by default; beyond
loopback only over TLS and behind a login (``[dashboard]`` in gateway/config.py refuses anything
else when the configuration loads).
"""
