// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// The part of ProofRegistry the market needs: who is a gateway.
interface IGatewayRegistry {
    function isGateway(address gateway) external view returns (bool);
}

/// @title DataMarket: a device's verified readings sold by the block, delivered by its gateway.
/// @notice docs/market.md is the design. In short: the gateway that serves a device vouches for
/// its owner; the owner lists the stream at a price per block; a buyer pays for a window of
/// blocks, naming an X25519 key and an MQTT endpoint; the gateway streams the device's readings
/// received in the window, encrypted to that key, and afterwards settles with the number it
/// delivered and the root of their sorted Merkle tree. The payment is held until a challenge
/// period after settlement has passed; then it is the owner's to withdraw. A purchase the gateway
/// never settles is refunded to the buyer.
/// @dev Every payout is pulled (`withdraw`), never pushed: no call to an unknown address is made
/// while state is half-updated.
contract DataMarket {
    struct Stream {
        address owner; // vouched for by `gateway`
        address gateway; // the registered gateway that serves the device and delivers
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
    }

    uint64 public constant MAX_BLOCKS = 10_000_000; // about 1.6 years of IoTeX blocks
    uint256 public constant MAX_ENDPOINT = 200; // bytes of the delivery URL

    IGatewayRegistry public immutable registry;
    uint64 public immutable challengeBlocks; // after settlement, before the owner is paid
    uint64 public immutable graceBlocks; // after the window, for the gateway to settle

    uint64 public purchaseCount;
    mapping(bytes32 => Stream) private streams; // keccak256(device id) -> stream
    mapping(uint64 => Purchase) public purchases;
    mapping(address => uint256) public balanceOf; // withdrawable wei

    event Vouched(string device, bytes32 indexed deviceKey, address indexed owner, address indexed gateway);
    event Listed(string device, bytes32 indexed deviceKey, uint256 pricePerBlock);
    /// The window starts at the block of this log (its timestamp is the window's first instant);
    /// the buyer, owner and amount are in `purchases(id)`.
    event Purchased(uint64 indexed id, bytes32 indexed deviceKey, address indexed gateway, string device,
                    uint64 end, bytes32 key, string endpoint);
    event Settled(uint64 indexed id, uint32 delivered, bytes32 deliveryRoot);
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

    constructor(IGatewayRegistry registry_, uint64 challengeBlocks_, uint64 graceBlocks_) {
        registry = registry_;
        challengeBlocks = challengeBlocks_;
        graceBlocks = graceBlocks_;
    }

    function deviceKey(string calldata device) public pure returns (bytes32) {
        return keccak256(bytes(device));
    }

    /// @notice The stream of `device`: its owner, serving gateway and price (0: not for sale).
    function streamOf(string calldata device) external view returns (address owner, address gateway,
                                                                     uint256 pricePerBlock) {
        Stream memory s = streams[deviceKey(device)];
        return (s.owner, s.gateway, s.pricePerBlock);
    }

    /// @notice A registered gateway states that it serves `device` and that `owner` owns it (the
    /// binding only the serving gateway knows first-hand). A changed binding ends any listing.
    function vouch(string calldata device, address owner) external {
        if (!registry.isGateway(msg.sender)) revert NotGateway(msg.sender);
        bytes32 key = deviceKey(device);
        Stream storage s = streams[key];
        if (s.owner != owner || s.gateway != msg.sender) {
            s.owner = owner;
            s.gateway = msg.sender;
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
        purchases[id] = Purchase(msg.sender, s.gateway, s.owner, start, start + blocks, 0, State.Open, 0,
                                 bytes32(0), msg.value);
        emit Purchased(id, dk, s.gateway, device, start + blocks, key, endpoint);
    }

    /// @notice The serving gateway reports, after the window and within the grace period, how
    /// many readings it delivered and the root of the sorted Merkle tree of their record leaves.
    function settle(uint64 id, uint32 delivered, bytes32 deliveryRoot) external {
        Purchase storage p = purchases[id];
        if (p.state != State.Open) revert NotOpen(id);
        if (msg.sender != p.gateway) revert NotServingGateway(id, msg.sender);
        if (block.number < p.end) revert TooEarly(id, p.end);
        if (block.number >= p.end + graceBlocks) revert TooLate(id, p.end + graceBlocks);
        p.state = State.Settled;
        p.settledAt = uint64(block.number);
        p.delivered = delivered;
        p.deliveryRoot = deliveryRoot;
        emit Settled(id, delivered, deliveryRoot);
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
