"""Training: from a dataset path to device-ready batches (``data``, ``batches``), and the run.

Importing this package is cheap: jax and keras are imported inside the functions that need
them, never at module level.
"""
