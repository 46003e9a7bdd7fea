"""The data owner's Flower ClientApp."""
