"""The paper's comparisons (PAPER.md §3), modelled: what `waferllm reproduce` prints and writes.

Prefill TPR at 480/600/720 and decode TPR at 420/540/660 for LLaMA3-8B, LLaMA2-13B,
CodeLLaMA-34B and Qwen2-72B (per-layer), A100/wafer energy ratios, end-to-end TPR of four
requests against 1, 8 and 2x8 A100s, KV capacity (shift vs concat), Table 6, the kernel
claims and the WSE-3 points; published figures beside ours with our error. Writes
`results/reproduce_<device>_<date>.{md,json}` and two PNGs, with the commit and machine.

    python benchmarks/reproduce_paper.py [--device wse2] [--no-plot]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from common import console, git_commit, machine, parser

from waferllm import reproduce
from waferllm.api.reproduce_output import to_markdown, write_artifacts


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="wse2", help="device preset (default wse2)")
    args = p.parse_args(argv)
    if args.quick:
        print("reproduce_paper has no quick mode (the whole run takes well under a minute)")
    start = time.perf_counter()
    result = reproduce(device=args.device)
    header = {
        "commit": git_commit(),
        "machine": ", ".join(f"{k} {v}" for k, v in machine().items()),
        "wall_s": f"{time.perf_counter() - start:.1f}",
    }
    out = console()
    out.print(to_markdown(result, header=header))
    for path in write_artifacts(result, args.out_dir, header=header, plots=not args.no_plot):
        out.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
