"""waferllm: WaferLLM (OSDI 2025) on a virtual wafer.

Real algorithms with real numbers on a vectorised model of a 2D mesh of cores, every step
charged to a PLMR cost model. Public API: device presets, the virtual mesh, kernels by name.
"""

# The `waferllm.estimate` layer (a package) loads first, so that the name `estimate` below is
# the public function: importing a subpackage later would rebind the attribute to the package.
import waferllm.estimate  # noqa: F401
from waferllm.api.bench import KernelReport, bench_gemm, bench_gemv
from waferllm.api.estimate import Estimate, estimate
from waferllm.api.gpu import gpu_estimate
from waferllm.api.llm import LLM, RequestOutput, SamplingParams
from waferllm.api.provenance import package_version
from waferllm.api.reproduce import Reproduction, reproduce
from waferllm.api.serve_sim import ServeSim, serve_sim
from waferllm.api.sweep import SweepResult, sweep
from waferllm.api.sweep_spec import Sweep, load_sweep
from waferllm.device import Device, get_device, list_devices, tiny, wse2, wse3

__version__ = package_version()

__all__ = [
    "LLM",
    "RequestOutput",
    "SamplingParams",
    "KernelReport",
    "bench_gemm",
    "bench_gemv",
    "Estimate",
    "estimate",
    "Reproduction",
    "reproduce",
    "gpu_estimate",
    "Sweep",
    "SweepResult",
    "load_sweep",
    "sweep",
    "ServeSim",
    "serve_sim",
    "Device",
    "get_device",
    "list_devices",
    "tiny",
    "wse2",
    "wse3",
    "__version__",
]
