// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title ProofRegistry: Merkle roots of gateway-seen device records, anchored on chain.
/// @notice A registered gateway anchors one root per batch of records, numbered 0, 1, 2, ... per
/// gateway. The contract enforces the numbering, so after a crash the gateway reads
/// `nextSequence(self)` and knows exactly which batch is the next one to send: no batch is
/// anchored twice and none is skipped. The leaf encoding and tree rules are in docs/proofs.md.
/// @dev Gas: one new storage slot per anchor (the record below is packed into 256 bits): 55,684
/// gas per anchor transaction on anvil 1.7.1, i.e. ~56 gas per record at 1,000 records per batch.
contract ProofRegistry {
    /// One anchored batch, packed into a single slot. `gatewayId` is never 0 for a stored root
    /// (ids start at 1), which is how an absent root is told apart.
    struct Anchor {
        uint32 gatewayId; // index into gatewayAt (an address would need a second slot)
        uint64 sequence; // the gateway's batch number
        uint32 count; // records in the batch
        uint48 firstTime; // gateway receive time of the earliest record, ms since the Unix epoch
        uint48 lastTime; // ... and of the latest record (uint48 ms lasts until the year 10889)
        uint32 anchoredAt; // block.timestamp, seconds (uint32 lasts until 2106)
    }

    /// A gateway key: its id, whether it may anchor now, and the sequence its next batch must carry.
    /// Removing a gateway keeps its id and sequence, so re-adding it continues where it stopped.
    struct Gateway {
        uint32 id;
        bool active;
        uint64 nextSequence;
    }

    address public owner;
    uint32 public gatewayCount;
    mapping(address => Gateway) private gateways;
    mapping(uint32 => address) public gatewayAt;
    mapping(bytes32 => Anchor) private anchors;

    event Anchored(address indexed gateway, bytes32 indexed root, uint64 sequence, uint32 count,
                   uint48 firstTime, uint48 lastTime);
    event GatewayAdded(address indexed gateway, uint32 id);
    event GatewayRemoved(address indexed gateway);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    error NotOwner();
    error NotGateway(address sender);
    error UnexpectedSequence(uint64 expected, uint64 given);
    error EmptyBatch();
    error BadTimeRange();

    constructor() {
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    /// @notice Anchor the Merkle root of batch `sequence` of the calling gateway.
    /// @dev Re-anchoring a root that is already stored (by any gateway) is a no-op that returns
    /// false without reverting or emitting: a gateway that resubmits a batch whose first
    /// transaction did land (crash between submit and confirm, replaced transaction) must not
    /// fail, and the chain must not hold two anchors of one batch. The stored anchor keeps the
    /// first submitter; a gateway sees who that was with `anchorOf(root)`. The duplicate check
    /// comes before the sequence check for that reason.
    /// @return anchored true if the root was stored by this call, false if it already was.
    function anchor(bytes32 root, uint64 sequence, uint32 count, uint48 firstTime, uint48 lastTime)
        external
        returns (bool anchored)
    {
        Gateway memory gw = gateways[msg.sender];
        if (!gw.active) revert NotGateway(msg.sender);
        if (anchors[root].gatewayId != 0) return false;
        if (sequence != gw.nextSequence) revert UnexpectedSequence(gw.nextSequence, sequence);
        if (count == 0) revert EmptyBatch();
        if (firstTime > lastTime) revert BadTimeRange();
        unchecked {
            gateways[msg.sender].nextSequence = sequence + 1;
        }
        anchors[root] = Anchor(gw.id, sequence, count, firstTime, lastTime, uint32(block.timestamp));
        emit Anchored(msg.sender, root, sequence, count, firstTime, lastTime);
        return true;
    }

    /// @notice What the chain knows about `root`; `gateway` is the zero address if it was never anchored.
    function anchorOf(bytes32 root)
        external
        view
        returns (address gateway, uint64 sequence, uint32 count, uint48 firstTime, uint48 lastTime,
                 uint32 anchoredAt)
    {
        Anchor memory a = anchors[root];
        return (gatewayAt[a.gatewayId], a.sequence, a.count, a.firstTime, a.lastTime, a.anchoredAt);
    }

    /// @notice The sequence number `gateway`'s next anchor must carry (0 before its first batch).
    function nextSequence(address gateway) external view returns (uint64) {
        return gateways[gateway].nextSequence;
    }

    function isGateway(address gateway) external view returns (bool) {
        return gateways[gateway].active;
    }

    /// @notice Allow `gateway` to anchor. Idempotent; a re-added gateway keeps its id and sequence.
    function addGateway(address gateway) external onlyOwner {
        Gateway storage gw = gateways[gateway];
        if (gw.active) return;
        if (gw.id == 0) {
            uint32 id = ++gatewayCount;
            gw.id = id;
            gatewayAt[id] = gateway;
        }
        gw.active = true;
        emit GatewayAdded(gateway, gw.id);
    }

    /// @notice Stop `gateway` from anchoring; its past anchors stay. Idempotent.
    function removeGateway(address gateway) external onlyOwner {
        Gateway storage gw = gateways[gateway];
        if (!gw.active) return;
        gw.active = false;
        emit GatewayRemoved(gateway);
    }

    function transferOwnership(address newOwner) external onlyOwner {
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }
}
