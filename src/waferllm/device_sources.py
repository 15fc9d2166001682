"""Where each constant of the mesh device presets (`device.wse2()`, `wse3()`) comes from.

One citation per field: the PAPER.md row, a calibration (SPEC.md §8; the benchmark that fits
it and its residuals) or a placeholder and why. Data only: the presets and their values live
in `device.py`.
"""

from __future__ import annotations

SYSTEM_LINK_SOURCES = {
    "system_link_bytes_per_s": (
        "Cerebras CS-2 system I/O (12 x 100 Gigabit Ethernet = 1.2 Tbit/s = 150 GB/s, the "
        "vendor's CS-2 datasheet; not downloaded here), every port carrying one transfer"
    ),
    "system_link_latency_s": (
        "placeholder: one switched 100 GbE traversal with its protocol stack (microseconds; no "
        "published CS-2/CS-3 figure)"
    ),
}


COMMON_SOURCES = {
    "clock_hz": "PAPER.md §2.1 clock row (1.1 GHz; the public code converts at 1.1 GHz)",
    "sram_bytes_per_core": "PAPER.md §2.1 SRAM per core (48 KB; 8 banks x 6 KiB per code notes §6)",
    "storage_dtype": "PAPER.md §2.1 data type row (f16 everywhere)",
    "sram_bytes_per_cycle": (
        "PAPER.md §2.1 core datapath (two 32-bit reads + one 32-bit write; code notes §6): two "
        "f16 MACs per cycle in a GEMV. Checked, never fitted, by Table 6's 16K -> 32K slope at "
        "720x720 (1.74 added MACs per added cycle published, 1.84 modelled; "
        "benchmarks/fidelity.py); the vendor's 20 PB/s (about 21 B per core-cycle) would give "
        "3.6 and is not used"
    ),
    "link_bytes_per_cycle": "PAPER.md §2.1 link row (one 32-bit wavelet per neighbour per cycle)",
    "ramp_bytes_per_cycle": "placeholder: assumed equal to one link (no published figure)",
    "hop_latency_cycles": "PAPER.md §2.1 per-hop latency (~1 cycle; code corrects by px+py)",
    "routes_per_core": "PAPER.md §2.1 routes row / SPEC.md §10.7 (21 free in the decode kernel)",
    "power_w": "PAPER.md §2.1 power row (~15 kW, 37.5 x 400 W)",
    "energy_pj_per_flop": (
        "placeholder: an f16 multiply (1.1 pJ) plus add (0.4 pJ) at 45 nm (Horowitz, ISSCC "
        "2014) scaled ~4x to 7 nm, per FLOP (two per MAC); no published WSE figure"
    ),
    "energy_pj_per_sram_byte": (
        "placeholder: a 64-bit read of an 8 KB SRAM at 45 nm, ~10 pJ (Horowitz, ISSCC 2014), "
        "is ~1.25 pJ/B; scaled ~4x to 7 nm; per byte read or written"
    ),
    "energy_pj_per_hop_byte": (
        "placeholder: one hop is one core pitch, ~0.23 mm (46,225 mm2 of wafer over 850,000 "
        "cores, vendor figures), of on-chip wire at ~0.1 pJ/bit/mm (~0.2 pJ/B) plus a router "
        "traversal of about the same"
    ),
    "static_power_w": (
        "derived: power_w less the events' mean power (~620 W) over the requests at PAPER.md "
        "§3.3's LLaMA3-8B operating points (4096-token prefill at 480/600/720, a decode step "
        "after a 4095-token prompt at 420/540/660, per-layer), so event energy agrees with "
        "power_w x time there within -1.0% to +1.3% (benchmarks/fidelity.py): what the wafer "
        "draws whatever it computes (leakage, clock tree, idle cores, I/O, power delivery)"
    ),
    "vector_instr_floor_cycles": (
        "calibrated on PAPER.md §4 WSE-3 MeshGEMM and MeshGEMV points with the step and op "
        "overheads and WSE-3's per-hop term (benchmarks/calibrate_wafer.py; 11 points, fit "
        "residuals -1.0% to +1.7%)"
    ),
    "step_overhead_cycles": (
        "calibrated on PAPER.md §4 WSE-3 MeshGEMM points (M=K=N=8P and P=64 1024^3) with the "
        "floor (benchmarks/calibrate_wafer.py; fit residuals -0.7% to +1.7%); WSE-2 shares it "
        "(fitting it on WSE-2 too breaks PAPER.md §3.1's flat 2K MeshGEMM)"
    ),
    "host_io_bytes_per_s": "placeholder: host I/O is reported apart from every TPR",
    **SYSTEM_LINK_SOURCES,
    "stage_latency_cycles": (
        "calibrated on PAPER.md §3.2 Table 6 MeshGEMV WSE-2 column at 720x720 with the default "
        "K = 2 tree (fit residuals +3.1%, -0.4%; jointly with §3.3's decode rows, "
        "benchmarks/calibrate_llm.py); shared by WSE-3 (same NoC, SPEC.md §8), where §4's "
        "never-fitted group_num sweep at P=80 (597/469/417 cycles for G=2/4/8) independently "
        "implies 10-13 cycles per forward-add stage. Beta 7.5 with every constant refitted "
        "(benchmarks/refit_all.py at beta 7.5 and 8.5) lowers the fitted rows' squared error by 6 "
        "percent but raises the leave-one-grid-out error by 13 percent and the unexplained "
        "layer cost by 171 cycles: 8.5 kept"
    ),
    "op_overhead_cycles": (
        "calibrated on PAPER.md §4 WSE-3 MeshGEMV points (M=N=8P, group_num 8; each a local "
        "GEMV, a reduce and a broadcast, started one after the other; fit residuals -1.0% to "
        "+1.7%; benchmarks/calibrate_wafer.py): the start of one synchronous operation (task "
        "activation, DSD and queue set-up), shared by WSE-2 (same core and runtime)"
    ),
    "scalar_cycles_per_element": (
        "placeholder: one scalar f16 operation of the decode layer's per-element loops (code "
        "notes §3.4: fast_exp's multiply-add and squarings, SiLU's and softmax's divides, "
        "RMSNorm's divide and square root) issues at one instruction per cycle (PAPER.md §2.1 "
        "core datapath: two operand fetches, one operation, one write-back per cycle) and "
        "carries its operand load, store and loop step: ~4 cycles; no published figure. Not "
        "fitted: least squares over it and layer_fixed_cycles on PAPER.md §3.3's decode rows "
        "drives it below zero (the rows' convexity is the allreduces', not per-element work)"
    ),
    "layer_fixed_cycles": (
        "calibrated on PAPER.md §3.3's LLaMA3-8B decode rows (420/540/660, per-layer, the layer "
        "as the public code ran it: one head over the hidden size and each config's group_num "
        "tree, estimate/measured.py; residuals -0.6%, -0.7%, +1.5%, leave-one-grid-out -1.1%, "
        "-1.0%, +2.1%; benchmarks/calibrate_llm.py at the shipped beta), shared by WSE-2 and "
        "WSE-3 (same core and runtime): what one decoder layer costs per pass whatever its "
        "widths and grid. Without it the modelled layer is 0.78-0.80x of each published one. "
        "Mechanism not identified; benchmarks/layer_fixed_hypotheses.py rules out, with "
        "numbers: a slower clock behind the 1.1 GHz conversion (Table 6 would then need beta "
        "<= alpha), a set-up per collective or slower decode stages (Table 6's lone "
        "collective misses by 15-30%), local GEMVs at one MAC per cycle (Table 6), per-element "
        "scalar work (its least-squares cost is negative), per-layer route reconfiguration "
        "(WSE-2 routes are static, code notes §3.5), hand-off, weight loads and per-token work "
        "(outside the timed layer, code notes §3.8, §7). A published layer time taken over 40 "
        "layers instead of 32 would match within 2.1% without it, but no source supports that "
        "(every llama8B config has layer_num 32, code notes §3.1)"
    ),
}


__all__ = ["COMMON_SOURCES", "SYSTEM_LINK_SOURCES"]
