"""The paper's published figures that `waferllm reproduce` sets beside the model's predictions.

Data only, each row citing PAPER.md. The A100 columns are the GPU baseline's own
(`baselines.gpu_fit`, which calibrates on the §3.3 A100 rows and checks Table 6); the wafer
columns live here. Nothing is computed from these numbers except the reported errors (and
`benchmarks/calibrate_wafer.py`'s fit, which reads its own copy).
"""

from __future__ import annotations

PAPER_MODELS = ("llama3-8b", "llama2-13b", "codellama-34b", "qwen2-72b")  # PAPER.md §3.4

# PAPER.md §3.3 (Tables 3, 4, 7, 8): LLaMA3-8B, batch 1, 4096-token context, one WSE-2.
PREFILL_PROMPT_LEN = 4096
PREFILL_GRIDS = (480, 600, 720)
WSE2_PREFILL_TPR = {480: 20_320.6, 600: 25_037.2, 720: 27_686.5}
DECODE_CONTEXT = 4096  # the decode step attends to 4096 positions, the new token's included
DECODE_GRIDS = (420, 540, 660)
WSE2_DECODE_TPR = {420: 2_699.9, 540: 2_501.5, 660: 2_243.3}
A100_PREFILL_TPR = {1: 13_988.3, 8: 17_361.6, 16: 13_994.2}
A100_DECODE_TPR = {1: 78.9, 8: 260.4, 16: 164.6}
# Energy ratio A100 / WSE-2 (above 1: the wafer is more efficient), per GPU setup.
ENERGY_RATIO_PREFILL = {1: 0.05, 8: 0.34, 16: 0.84}
ENERGY_RATIO_DECODE = {1: 0.92, 8: 2.22, 16: 7.02}
LLAMA3_SOURCE = "PAPER.md §3.3 (Tables 3, 4, 7, 8), LLaMA3-8B"

# PAPER.md §3.3 "How the paper ran it": end-to-end grids of the paper (prefill, decode); the
# other models' grids are not published and are searched (per-layer, as the paper measured
# models larger than one wafer on a subset of layers).
PAPER_E2E_GRIDS = {"llama3-8b": (660, 360), "llama2-13b": (750, 375)}
E2E_REQUESTS = ((2048, 128), (4096, 128), (2048, 2048), (4096, 4096))
CAPACITY_PROMPT_LEN = 4096  # KV capacity: tokens that can follow a 4096-token prompt
# PAPER.md §3.1 headline: end-to-end speedup over SGLang on A100s.
E2E_SPEEDUP_BEST_MULTI_GPU = (10.0, 20.0)
E2E_SPEEDUP_ONE_GPU = (30.0, 40.0)

# PAPER.md §3.2 (Table 6): GEMV [1, K] x [K, K] on WSE-2 (MeshGEMV), seconds; the grid is not
# published, so the comparison is at 720 x 720 and at the model's fastest grid.
TABLE6_SIZES = (16384, 32768)
TABLE6_GRID = 720
WSE2_GEMV_S = {16384: 0.0012e-3, 32768: 0.00203e-3}
TABLE6_SOURCE = "PAPER.md §3.2 (Table 6)"

# PAPER.md §3.1 kernel claims, checked (never fitted) on the kernels' modelled costs.
MESHGEMM_EFFICIENCY_AT_720 = 0.70  # "over 70% compute efficiency near 720 x 720"
BASELINE_EFFICIENCY_AT_720 = 0.50  # SUMMA and Cannon "below 50%"
MESHGEMM_SPEEDUP = (2.0, 3.0)  # over SUMMA and Cannon
MESHGEMV_SPEEDUP = 4.6  # over the pipeline allreduce GEMV, end to end

# PAPER.md §4: WSE-3 device runs (mean cycles over cores), M = K = N = 8P.
WSE3_MESHGEMM_MEAN_CYCLES = {144: 93_940, 336: 224_392, 528: 352_593, 720: 480_748}
WSE3_MESHGEMV_MEAN_CYCLES = {80: 448, 144: 632, 272: 999, 400: 1_403, 528: 1_770, 720: 2_358}
WSE3_GEMV_GROUPS = 8
WSE3_SOURCE = "PAPER.md §4 (WSE-3, public fork)"
