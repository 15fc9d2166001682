"""Full-scale costing without weights: phase ledgers, the grid search, KV capacity, FLOPs,
and the serving simulation.

The mesh transformer runs here in estimate mode (meta tensors, SRAM and routes enforced):
`cost` walks and caches its phases, `search` picks grids, `capacity` sizes the KV cache of the
whole model, `flops` counts useful work. Serving: `requests` (traces), `step_cost` (what an
iteration costs), `scheduler` (continuous batching), `serving_metrics` (percentiles,
goodput). No argument coercion or report assembly (`waferllm.api`), no model math (`model`).
"""
