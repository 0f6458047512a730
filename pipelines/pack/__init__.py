"""Packing independent fits of a classical model onto the engine's workers (bootstrap, group_by, configs)."""
