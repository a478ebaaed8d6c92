"""Triton kernels with pure-torch references (see ``boundc.kernels.interval_affine``)."""
