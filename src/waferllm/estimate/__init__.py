"""Full-scale costing without weights: phase costs, capacity, and the serving simulation.

Serving: `requests` (traces), `step_cost` (what an iteration costs), `scheduler` (continuous
batching), `serving_metrics` (percentiles, goodput). Imports only lower layers.
"""
