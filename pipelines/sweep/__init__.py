"""Hyperparameter sweeps: grid and random search over a model or deep stage, trials load-balanced on the
engine's workers or run as a SLURM/PBS job array, with early stopping by successive halving / Hyperband."""
