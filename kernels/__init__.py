"""Triton kernels of rmsnorm_triton: @triton.jit code only (installed as rmsnorm_triton.kernels)."""
