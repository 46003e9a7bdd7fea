"""Local multi-owner simulations on Flower's simulation engine (Ray)."""
