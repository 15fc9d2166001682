"""`waferllm sweep`: results on disk and a summary; every bad input one line and exit 2."""

from __future__ import annotations

import importlib.util
import json
import socket

import pytest

from waferllm.cli import main

TINY_AXES = ["--axis", "model=tiny", "--axis", "device=tiny", "--axis", "output_len=4"]
GRIDS = ["--axis", "prefill_grid=8", "--axis", "decode_grid=8"]


def test_a_sweep_file_and_axes_write_the_results_and_a_json_summary(tmp_path, capsys):
    path = tmp_path / "sweep.toml"
    path.write_text('model = "tiny"\ndevice = "tiny"\nprompt_len = [16, 32]\noutput_len = 4\n')
    out = tmp_path / "out"
    argv = ["sweep", str(path), *GRIDS, "--out", str(out), "--workers", "1", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["points"], summary["computed"], summary["errors"]) == (2, 2, 0)
    assert (out / "results.parquet").is_file() and (out / "results.csv").is_file()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["cached"] == 2


def test_the_table_output_names_the_files_and_the_first_error(tmp_path, capsys):
    argv = ["sweep", *TINY_AXES, *GRIDS, "--axis", "prompt_len=16", "--axis", "batch_size=100000"]
    assert main([*argv, "--out", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 points" in out and "1 with an error" in out and "results.csv" in out
    assert "the batch's KV cache does not fit: its 100000 sequences" in out and "99992 more" in out


def _closed_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return int(free.getsockname()[1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--axis", "colour=red"], "unknown sweep key 'colour'"),
        (["--axis", "prompt_len="], "is empty"),
        (["--axis", "prompt_len=sixteen"], "is not an integer"),
        (["--axis", "device.warp=1"], "unknown device field 'warp'"),
        (["--axis", "prefill_grid=3x"], "sweep axis 'prefill_grid'"),
        (["--ray-address", "nowhere"], "is not host:port"),
        (["--workers", "0"], "expected a positive integer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    argv = ["sweep", *TINY_AXES, "--axis", "prompt_len=16", *extra, "--out", str(tmp_path)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("waferllm: error: ") and message in captured.err


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (the [cluster] extra; without it --ray says so, exit 2)",
)
def test_an_unreachable_ray_cluster_is_one_line_and_exit_2(tmp_path, capsys):
    address = f"127.0.0.1:{_closed_port()}"
    argv = ["sweep", *TINY_AXES, "--axis", "prompt_len=16", "--out", str(tmp_path)]
    assert main([*argv, "--ray-address", address]) == 2
    err = capsys.readouterr().err
    assert err.startswith("waferllm: error: cannot reach the Ray cluster") and err.count("\n") == 1


def test_bad_sweep_files_are_one_line_and_exit_2(tmp_path, capsys):
    cases = {
        "unknown.toml": 'model = "tiny"\nprompt_len = 16\noutput_len = 4\ncolour = "red"\n',
        "empty.json": '{"model": "tiny", "prompt_len": [], "output_len": 4}',
        "types.toml": 'model = "tiny"\nprompt_len = ["long"]\noutput_len = 4\n',
        "broken.toml": "prompt_len = [\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2, name
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, name
    assert main(["sweep", str(tmp_path / "absent.toml"), "--out", str(tmp_path)]) == 2
    assert "cannot read sweep file" in capsys.readouterr().err
