"""fedref: the plain Flower + Opacus reference app of the fedmodel benchmarks."""
