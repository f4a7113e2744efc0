"""Executors of block plans.  ``torch_backend`` runs a plan's parts with PyTorch ops (any
device); the Triton kernels live in :mod:`patterndsl.codegen`."""
