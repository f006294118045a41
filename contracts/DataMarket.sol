// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// The part of ProofRegistry the market needs: who is a gateway, and what it anchored.
interface IGatewayRegistry {
    function isGateway(address gateway) external view returns (bool);
    function anchorOf(bytes32 root) external view returns (address gateway, uint64 sequence, uint32 count,
                                                          uint48 firstTime, uint48 lastTime, uint32 anchoredAt);
}

/// @title DataMarket: a device's verified readings sold by the block, delivered by its gateway.
/// @notice docs/market.md is the design. In short: the gateway that serves a device vouches for
/// its owner; the owner lists the stream at a price per block; a buyer pays for a window of
/// blocks, naming an X25519 key and an MQTT endpoint; the gateway streams the device's readings
/// received in the window, encrypted to that key, and afterwards settles with the number it
/// delivered and the root of their sorted Merkle tree. The payment is held until a challenge
/// period after settlement has passed; then it is the owner's to withdraw. A purchase the gateway
/// never settles is refunded to the buyer.
/// During the challenge period, anyone holding an anchored reading of the device received inside
/// the window and absent from the delivery tree can prove it withheld (`claimWithheld`): the
/// buyer is refunded and the gateway named in a `Withheld` event.
/// @dev Every payout is pulled (`withdraw`), never pushed: no call to an unknown address is made
/// while state is half-updated. The leaf and tree rules are those of docs/proofs.md.
contract DataMarket {
    struct Stream {
        address owner; // vouched for by `gateway`
        address gateway; // the registered gateway that serves the device and delivers
        address signer; // the address the device's record leaves carry (a Pebble's own); 0: none of its own
        uint256 pricePerBlock; // wei; 0 while not for sale
    }

    enum State { None, Open, Settled, Paid, Refunded }

    struct Purchase {
        address buyer;
        address gateway;
        address owner; // the payee, fixed when bought
        uint64 start; // first paid block (the purchase's own block)
        uint64 end; // first block not paid for
        uint64 settledAt; // block of the settlement
        State state;
        uint32 delivered; // readings the gateway says it delivered
        bytes32 deliveryRoot; // root of the sorted Merkle tree of their record leaves
        uint256 amount; // wei held
        address signer; // the stream's signer when bought
        uint48 startTime; // the purchase block's timestamp, s: the window's first second
        uint48 lastTime; // the window's last block's timestamp, s, as the settlement states it
    }

    /// A record leaf's fields (docs/proofs.md) and its Merkle path in an anchored batch.
    struct AnchoredReading {
        bytes signature; // r || s, 64 bytes, as the leaf commits to them
        bytes32 payloadSha256;
        uint64 receivedMs;
        bytes32 root; // the anchored batch
        uint256 index;
        bytes32[] path;
    }

    /// A leaf of the delivery tree with its position and path.
    struct Neighbour {
        uint256 index;
        bytes32 leaf;
        bytes32[] path;
    }

    uint64 public constant MAX_BLOCKS = 10_000_000; // about 1.6 years of IoTeX blocks
    uint256 public constant MAX_ENDPOINT = 200; // bytes of the delivery URL

    IGatewayRegistry public immutable registry;
    uint64 public immutable challengeBlocks; // after settlement, before the owner is paid
    uint64 public immutable graceBlocks; // after the window, for the gateway to settle

    uint64 public purchaseCount;
    mapping(bytes32 => Stream) private streams; // keccak256(device id) -> stream
    mapping(uint64 => Purchase) private purchases;
    mapping(address => uint256) public balanceOf; // withdrawable wei

    event Vouched(string device, bytes32 indexed deviceKey, address indexed owner, address indexed gateway);
    event Listed(string device, bytes32 indexed deviceKey, uint256 pricePerBlock);
    /// The window starts at the block of this log (its timestamp is the window's first instant);
    /// the buyer, owner and amount are in `purchases(id)`.
    event Purchased(uint64 indexed id, bytes32 indexed deviceKey, address indexed gateway, string device,
                    uint64 end, bytes32 key, string endpoint);
    event Settled(uint64 indexed id, uint32 delivered, bytes32 deliveryRoot, uint48 lastTime);
    event Withheld(uint64 indexed id, address indexed gateway, bytes32 leaf);
    event Released(uint64 indexed id, address indexed owner, uint256 amount);
    event Refunded(uint64 indexed id, address indexed buyer, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    error NotGateway(address sender);
    error NotOwner(address sender);
    error NotListed(string device);
    error WrongPayment(uint256 expected, uint256 given);
    error BadWindow(uint64 blocks);
    error EndpointTooLong(uint256 length);
    error NotOpen(uint64 id);
    error NotServingGateway(uint64 id, address sender);
    error TooEarly(uint64 id, uint64 fromBlock);
    error TooLate(uint64 id, uint64 untilBlock);
    error NothingToWithdraw();
    error TransferFailed();
    error BadLastTime(uint48 lastTime);
    error NoSigner(uint64 id);
    error NotInWindow(uint64 receivedMs);
    error NotAnchored(bytes32 leaf);
    error NotWithheld(bytes32 leaf);

    constructor(IGatewayRegistry registry_, uint64 challengeBlocks_, uint64 graceBlocks_) {
        registry = registry_;
        challengeBlocks = challengeBlocks_;
        graceBlocks = graceBlocks_;
    }

    function deviceKey(string calldata device) public pure returns (bytes32) {
        return keccak256(bytes(device));
    }

    /// @notice The stream of `device`: its owner, serving gateway, signer and price (0: not for sale).
    function streamOf(string calldata device) external view returns (Stream memory) {
        return streams[deviceKey(device)];
    }

    function purchaseOf(uint64 id) external view returns (Purchase memory) {
        return purchases[id];
    }

    /// @notice A registered gateway states that it serves `device`, that `owner` owns it (the
    /// binding only the serving gateway knows first-hand) and that its record leaves carry
    /// `signer` (0 for a device whose leaves the gateway signs). A changed binding ends any listing.
    function vouch(string calldata device, address owner, address signer) external {
        if (!registry.isGateway(msg.sender)) revert NotGateway(msg.sender);
        bytes32 key = deviceKey(device);
        Stream storage s = streams[key];
        if (s.owner != owner || s.gateway != msg.sender || s.signer != signer) {
            s.owner = owner;
            s.gateway = msg.sender;
            s.signer = signer;
            s.pricePerBlock = 0;
        }
        emit Vouched(device, key, owner, msg.sender);
    }

    /// @notice The vouched owner puts the stream up for sale at `pricePerBlock` wei (0 withdraws it).
    function list(string calldata device, uint256 pricePerBlock) external {
        bytes32 key = deviceKey(device);
        Stream storage s = streams[key];
        if (s.owner == address(0) || msg.sender != s.owner) revert NotOwner(msg.sender);
        s.pricePerBlock = pricePerBlock;
        emit Listed(device, key, pricePerBlock);
    }

    /// @notice Pay for `blocks` blocks of `device`'s readings from this block on, delivered
    /// encrypted to the X25519 public key `key` at the MQTT URL `endpoint`.
    function buy(string calldata device, uint64 blocks, bytes32 key, string calldata endpoint)
        external
        payable
        returns (uint64 id)
    {
        bytes32 dk = deviceKey(device);
        Stream memory s = streams[dk];
        if (s.pricePerBlock == 0) revert NotListed(device);
        if (blocks == 0 || blocks > MAX_BLOCKS) revert BadWindow(blocks);
        if (bytes(endpoint).length > MAX_ENDPOINT) revert EndpointTooLong(bytes(endpoint).length);
        uint256 price = s.pricePerBlock * blocks;
        if (msg.value != price) revert WrongPayment(price, msg.value);
        id = ++purchaseCount;
        uint64 start = uint64(block.number);
        Purchase storage p = purchases[id];
        p.buyer = msg.sender;
        p.gateway = s.gateway;
        p.owner = s.owner;
        p.start = start;
        p.end = start + blocks;
        p.state = State.Open;
        p.amount = msg.value;
        p.signer = s.signer;
        p.startTime = uint48(block.timestamp);
        emit Purchased(id, dk, s.gateway, device, start + blocks, key, endpoint);
    }

    /// @notice The serving gateway reports, after the window and within the grace period, how
    /// many readings it delivered, the root of the sorted Merkle tree of their record leaves, and
    /// the timestamp of the window's last block (anyone can check it against that block's header).
    function settle(uint64 id, uint32 delivered, bytes32 deliveryRoot, uint48 lastTime) external {
        Purchase storage p = purchases[id];
        if (p.state != State.Open) revert NotOpen(id);
        if (msg.sender != p.gateway) revert NotServingGateway(id, msg.sender);
        if (block.number < p.end) revert TooEarly(id, p.end);
        if (block.number >= p.end + graceBlocks) revert TooLate(id, p.end + graceBlocks);
        if (lastTime < p.startTime || lastTime > block.timestamp) revert BadLastTime(lastTime);
        p.state = State.Settled;
        p.settledAt = uint64(block.number);
        p.delivered = delivered;
        p.deliveryRoot = deliveryRoot;
        p.lastTime = lastTime;
        emit Settled(id, delivered, deliveryRoot, lastTime);
    }

    /// @notice Prove, before the challenge period ends, that the gateway withheld a reading: one
    /// of the device's records, anchored by the serving gateway, received inside the window, that
    /// is not in the delivery tree (shown by the neighbours that bracket its leaf: one at either
    /// end of the tree, none when nothing was delivered). The buyer is refunded.
    function claimWithheld(uint64 id, AnchoredReading calldata r, Neighbour[] calldata gap) external {
        Purchase storage p = purchases[id];
        if (p.state != State.Settled) revert NotOpen(id);
        if (block.number >= p.settledAt + challengeBlocks) revert TooLate(id, p.settledAt + challengeBlocks);
        if (p.signer == address(0)) revert NoSigner(id);
        if (r.receivedMs < uint64(p.startTime) * 1000 || r.receivedMs > uint64(p.lastTime) * 1000 + 999) {
            revert NotInWindow(r.receivedMs);
        }
        bytes32 leaf = keccak256(abi.encodePacked(bytes1(0x00), p.signer, r.signature, r.payloadSha256,
                                                  r.receivedMs));
        (address anchoredBy,, uint32 count,,,) = registry.anchorOf(r.root);
        if (r.signature.length != 64 || anchoredBy != p.gateway || !_included(leaf, r.index, r.path, r.root, count)) {
            revert NotAnchored(leaf);
        }
        if (!_absent(leaf, gap, p.deliveryRoot, p.delivered)) revert NotWithheld(leaf);
        p.state = State.Refunded;
        balanceOf[p.buyer] += p.amount;
        emit Withheld(id, p.gateway, leaf);
        emit Refunded(id, p.buyer, p.amount);
    }

    /// Merkle inclusion with docs/proofs.md's rules: positional, an odd last node promoted.
    function _included(bytes32 leaf, uint256 index, bytes32[] calldata path, bytes32 root, uint256 count)
        private
        pure
        returns (bool)
    {
        if (index >= count) return false;
        bytes32 current = leaf;
        uint256 used;
        for (uint256 width = count; width > 1; width = (width + 1) / 2) {
            if (index % 2 == 1) {
                if (used == path.length) return false;
                current = keccak256(abi.encodePacked(bytes1(0x01), path[used++], current));
            } else if (index + 1 < width) {
                if (used == path.length) return false;
                current = keccak256(abi.encodePacked(bytes1(0x01), current, path[used++]));
            }
            index /= 2;
        }
        return used == path.length && current == root;
    }

    /// `leaf` is not in the sorted tree of `count` leaves with `root`.
    function _absent(bytes32 leaf, Neighbour[] calldata gap, bytes32 root, uint256 count) private pure returns (bool) {
        if (count == 0) return gap.length == 0 && root == bytes32(0);
        if (gap.length == 0 || gap.length > 2) return false;
        for (uint256 i = 0; i < gap.length; i++) {
            if (!_included(gap[i].leaf, gap[i].index, gap[i].path, root, count)) return false;
        }
        if (gap.length == 2) {  // the two neighbours, adjacent, below and above it
            return gap[1].index == gap[0].index + 1 && gap[0].leaf < leaf && leaf < gap[1].leaf;
        }
        // one neighbour: the first leaf, above it, or the last, below it
        return (gap[0].index == 0 && leaf < gap[0].leaf) || (gap[0].index == count - 1 && gap[0].leaf < leaf);
    }

    /// @notice Once the challenge period after settlement has passed, the payment becomes the
    /// owner's (anyone may call this).
    function release(uint64 id) external {
        Purchase storage p = purchases[id];
        if (p.state != State.Settled) revert NotOpen(id);
        if (block.number < p.settledAt + challengeBlocks) revert TooEarly(id, p.settledAt + challengeBlocks);
        p.state = State.Paid;
        balanceOf[p.owner] += p.amount;
        emit Released(id, p.owner, p.amount);
    }

    /// @notice A purchase its gateway did not settle within the grace period is refunded to the
    /// buyer (anyone may call this).
    function refundUnsettled(uint64 id) external {
        Purchase storage p = purchases[id];
        if (p.state != State.Open) revert NotOpen(id);
        if (block.number < p.end + graceBlocks) revert TooEarly(id, p.end + graceBlocks);
        p.state = State.Refunded;
        balanceOf[p.buyer] += p.amount;
        emit Refunded(id, p.buyer, p.amount);
    }

    /// @notice Pay out what the caller has been released or refunded.
    function withdraw() external {
        uint256 amount = balanceOf[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        balanceOf[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }
}
