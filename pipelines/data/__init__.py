"""Data that ships with the install (bundled) and synthetic data for scale."""
