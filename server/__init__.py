"""The coordinator's Flower ServerApp."""
