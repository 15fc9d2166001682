"""Kernels on the virtual mesh: distributed GEMM and GEMV with their baselines, and the
transformer's elementwise and reduction ops. Each kernel has one signature style,
`fn(mesh, *, a, b, ledger, ...) -> KernelResult`, and a dense reference in `reference.py`.
"""
