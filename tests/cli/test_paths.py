"""Files and paths (issue 11 #5): checkpoints cannot reach outside their directory or block on
a FIFO, device names cannot steer result files out of --out-dir, and result files are 0644."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import waferllm.cli.reproduce as cli_reproduce
from waferllm.api.reproduce import Reproduction
from waferllm.api.tables import Column, Section
from waferllm.cli import main
from waferllm.cli.common import write_atomic
from waferllm.device import get_device
from waferllm.errors import WaferError
from waferllm.model.weights import CheckpointError, safetensors_files


def test_a_shard_index_pointing_outside_the_checkpoint_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.safetensors").write_bytes(b"\0" * 16)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    index = {"weight_map": {"model.norm.weight": "../outside/x.safetensors"}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        safetensors_files(ckpt)


def test_a_fifo_named_like_weights_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="must be regular files: model.safetensors"):
        safetensors_files(tmp_path)


def test_a_fifo_device_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "dev.json")
    with pytest.raises(WaferError, match="is not a regular file"):
        get_device(str(tmp_path / "dev.json"))


def _fake_reproduce(*, device, progress=None):
    section = Section(
        key="table6",
        title="Table 6",
        columns=(Column("gemv", "GEMV"),),
        rows=({"gemv": "16K"},),
        notes=(),
    )
    return Reproduction(device=device, sections=(section,), host_wall_s=0.1)


def test_a_device_name_cannot_place_result_files_outside_the_out_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_reproduce, "reproduce", _fake_reproduce)
    device = tmp_path / "dev.json"
    device.write_text(json.dumps({"base": "tiny", "name": "x/../../escaped"}))
    out = tmp_path / "a" / "b"
    assert main(["reproduce", "--device", str(device), "--out-dir", str(out), "--no-plot"]) == 0
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".md", ".json"))
    assert [p.parent for p in written if p != device] == [out, out]
    for path in written:
        if path != device:
            assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_result_files_are_readable_by_others(tmp_path):
    path = Path(tmp_path) / "result.json"
    write_atomic(path, "{}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
