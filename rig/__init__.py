"""The development rig: private brokers, a local chain and the demo's orchestration, for the demo,
the tests and the benches. It starts the gateway and the emulators (hardware/) as a user would;
the gateway never imports it (only its CLI's `w3gate demo`, lazily)."""
