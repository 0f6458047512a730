"""Horovod-coordinated TensorFlow training (issue 4: not implemented yet; Horovod is installed by setup)."""
