"""The simulator: the mesh's own decision code on a virtual clock, with the forward pass, KV
transfers and hops replaced by profiled costs (docs/sim.md)."""
