"""Proofs that a device record was seen by this gateway: Merkle batches anchored on chain."""
