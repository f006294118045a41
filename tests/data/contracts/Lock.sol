// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// A lock driven from the chain, for tests/hil/test_device_command.py: each call only emits its
/// event, naming the device as bytes32 (a legacy device's 8-byte id, left-aligned). Anyone may
/// call it; a real one would check who asks and what they paid.
contract Lock {
    event Unlocked(bytes32 indexed device);
    event Locked(bytes32 indexed device);

    function unlock(bytes32 device) external {
        emit Unlocked(device);
    }

    function lock(bytes32 device) external {
        emit Locked(device);
    }
}
