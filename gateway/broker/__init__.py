"""The broker w3gate manages: mosquitto's configuration (``conf``), who may do what on it
(``access``: the password file and access rules, kept in step with devices and publishers) and
its certificates (``certs``: a local CA, the TLS certificate, device certificates). w3gate starts
no broker itself; mosquitto runs with ``broker/mosquitto.conf`` (docs/broker.md)."""
