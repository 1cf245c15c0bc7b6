"""Machinery shared by the systems: weights from the Hub, torch.compile, CUDA graphs, memory tracing, tiling."""
