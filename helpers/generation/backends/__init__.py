"""Decoding backends: the tutorial's loop, the cached loop, the CPU engine, model.generate."""
