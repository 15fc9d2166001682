"""The public API's implementation: what the CLI and `waferllm.__init__` expose.

Each module turns user-level requests (bench a kernel, generate, estimate, GPU baseline,
reproduce) into calls on the lower layers and returns report dataclasses or dicts.
"""
