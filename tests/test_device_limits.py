"""Bounded before work starts (issue 11 #2): device sizes beyond the supported limits are
refused with one line, and a plan on a large device enumerates only the regions it uses."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from waferllm.device import MAX_MESH_SIDE, get_device, with_overrides, wse2
from waferllm.errors import WaferError
from waferllm.model.regions import region_count, region_origins


@pytest.mark.parametrize("side", [8000, 10**12])
def test_a_device_file_with_a_huge_mesh_is_refused_naming_the_limit(tmp_path, side):
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"base": "wse2", "mesh_rows": side, "mesh_cols": side}))
    with pytest.raises(WaferError, match=f"mesh_rows={side} is larger than the supported"):
        get_device(str(path))


def test_region_origins_list_only_what_is_asked_and_count_the_rest():
    device = with_overrides(wse2(), {"mesh_rows": MAX_MESH_SIDE, "mesh_cols": MAX_MESH_SIDE})
    tracemalloc.start()
    first = region_origins(device, (1, 1), limit=3)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert first == [(0, 0), (0, 1), (0, 2)]
    assert region_count(device, (1, 1)) == MAX_MESH_SIDE**2
    assert peak < 1_000_000
    # serpentine: the second row of slots runs backwards
    assert region_origins(device, (1, 1024), limit=3) == [(0, 0), (0, 1024), (1, 1024)]
