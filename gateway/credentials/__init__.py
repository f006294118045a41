"""Verifiable credentials the node issues about its devices' records (docs/credentials.md)."""
