"""fedbench: the parts of the fedmodel benchmarks (scenarios, process-tree memory, tables, the reference run)."""
