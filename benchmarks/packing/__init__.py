"""Benchmark of packing: load-balanced vs static makespan, own-split vs broadcast memory."""
