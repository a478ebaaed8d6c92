"""Triton kernels for interval bound propagation, each with a pure-torch reference.

* :mod:`boundc.kernels.interval_affine` — fused interval linear layer (forward + backward);
* :mod:`boundc.kernels.interval_conv` — fused interval conv2d (implicit GEMM, forward + backward);
* :mod:`boundc.kernels.dispatch` — ``interval_linear`` / ``interval_conv``: Triton for CUDA tensors
  when available, the torch rules otherwise (and always while exporting).

Importing this package does not import Triton; the kernel modules import it lazily
(see ``boundc.kernels._compat``), so machines without Triton use the torch rules.
"""
