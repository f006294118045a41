"""Talking to the chain: the node key (keystore), transactions (sender) and network presets."""
