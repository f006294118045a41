"""Device streams sold by contract (docs/market.md): the DataMarket contract, readings sealed
to their buyer, and the running gateway's delivery and settlement."""
