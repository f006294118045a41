"""w3gate as a system service: the systemd units, the sd_notify protocol, and installing them.

``units`` renders ``w3gate.service`` and ``w3gate-broker.service`` (hardened, watchdog, journald)
from the configuration and the installed program; ``notify`` is the gateway's side of
``Type=notify`` (READY, STATUS, WATCHDOG, STOPPING); ``install`` puts the units, the ``w3gate``
system user and the paths (``/etc/w3gate/w3gate.toml``, ``/var/lib/w3gate``) on a Debian or
Raspberry Pi OS system, or into a staging root for an image (docs/service.md).
"""
