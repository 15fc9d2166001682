"""The paper's published T10 and Ladder figures (reference/t10-ladder-baselines.md §1, §4):
the LLaMA3-8B rows of Tables 3 and 4 that the baselines' constants are fitted on, and the
speedups the text states, which `reproduce` sets beside the model's predictions. Data only.
"""

from __future__ import annotations

SOURCE = "reference/t10-ladder-baselines.md §4 (PAPER Tables 3, 4), LLaMA3-8B"

# Tokens/s, 4096-token prompt (prefill) or a 4096-position decode step, one WSE-2.
PREFILL_TPR = {
    "t10": {480: 175.0, 600: 156.6, 720: 132.8},
    "ladder": {480: 61.8, 600: 42.3, 720: 31.3},
}
DECODE_TPR = {
    "t10": {420: 418.3, 540: 339.4, 660: 265.1},
    "ladder": {420: 14.6, 540: 13.1, 660: 11.4},
}

# WaferLLM's advantage stated in §7.1's text: (mean, up to) or (low, high) bands.
STATED_RATIOS = {
    ("prefill", "t10"): "160x mean (up to 178x)",
    ("prefill", "ladder"): "270-450x",
    ("decode", "t10"): "5.7x mean (up to 6.5x)",
    ("decode", "ladder"): "217x mean (up to 260x)",
    ("e2e_short", "t10"): "160x mean (up to 180x), 128-token outputs",
    ("e2e_short", "ladder"): "625x mean (up to 677x), 128-token outputs",
    ("e2e_long", "t10"): "36x mean (up to 48x), long outputs",
    ("e2e_long", "ladder"): "312x mean (up to 342x), long outputs",
}
# Loose numeric bands for the qualitative checks (§1: "100-200x vs T10, 200-400x vs Ladder";
# the LLaMA3-8B cells themselves give 116-208x and 329-885x in prefill, 6.5-8.5x decode).
PREFILL_BAND = {"t10": (100.0, 1000.0), "ladder": (200.0, 10_000.0)}
DECODE_BAND = {"t10": (1.0, 10.0), "ladder": (100.0, 1000.0)}
