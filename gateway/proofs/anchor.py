"""Old import path of the anchorer, kept only for importers outside this change
(``gateway/cli/proof.py``, ``rig/demo.py``, ``tests/unit/test_legacy_verify.py``). New code
imports from ``leaf``, ``journal``, ``anchorer`` and ``contract``; delete this module once
those import from there."""
from gateway.proofs.anchorer import ANCHORED_TOPIC, AnchorConfig, Anchorer
from gateway.proofs.contract import load_abi
from gateway.proofs.errors import AnchorError
from gateway.proofs.journal import PROOF_FORMAT, Batch, BatchJournal as ProofIndex, load_batches
from gateway.proofs.leaf import addresses_from, leaf_fields, received_ms, record_leaf, signature_of

__all__ = ["ANCHORED_TOPIC", "PROOF_FORMAT", "AnchorConfig", "AnchorError", "Anchorer", "Batch", "ProofIndex",
           "addresses_from", "leaf_fields", "load_abi", "load_batches", "received_ms", "record_leaf",
           "signature_of"]
