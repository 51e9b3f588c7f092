"""The one tolerance for floats that float kernels compute (training losses, KL, entropy,
log-probabilities, trained weights), for every test that compares them with a reference.

Why a tolerance: float32 sums and matrix products give different last bits with the vector
width of the kernels (AVX-512, AVX2, none) and the number of threads, which split a
reduction differently; so does a gradient summed over two processes. Measured on the golden
commands (tests/test_outputs_unchanged.py) across 1 and 2 threads and
ATEN_CPU_CAPABILITY=default/avx2/avx512: at most 5e-7 relative on losses and entropies, and
at most 7.5e-9 absolute on the near-zero RL metrics (kl, loss, pg_loss ~1e-4), which are
means of order-one per-token terms that cancel, so their error is absolute. Hence
- KERNEL_ABS = 1e-6: about 8 float32 ulps of 1.0, the size of those per-token terms;
- KERNEL_REL = 1e-4: room for the rounding to grow over a few optimizer steps.
Everything discrete (files, records, token ids, texts, counts) is compared exactly.
Checked with `OMP_NUM_THREADS=1|2 [ATEN_CPU_CAPABILITY=default|avx2] pytest
tests/test_outputs_unchanged.py tests/test_train.py tests/test_rl.py` (the capabilities stand in
for a processor without AVX-512; the reference was written with 2 threads on AVX-512).
"""

from __future__ import annotations

import math

import pytest

KERNEL_REL = 1e-4
KERNEL_ABS = 1e-6


def kernel_approx(expected):
    """pytest.approx with the kernel tolerance (a float or a sequence of floats)."""
    return pytest.approx(expected, rel=KERNEL_REL, abs=KERNEL_ABS)


def kernel_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=KERNEL_REL, abs_tol=KERNEL_ABS)


def tensors_close(a, b) -> bool:
    """torch.allclose with the kernel tolerance (two tensors of the same shape)."""
    import torch

    return torch.allclose(a, b, rtol=KERNEL_REL, atol=KERNEL_ABS)
