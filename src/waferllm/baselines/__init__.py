"""Baselines the wafer is compared with: the GPU model (A100/H100, tensor parallel; SPEC §7).

Imports `model.config` and `model.report`; imported only by the public API (`waferllm.api`).
"""
