"""SPEC.md §9: user errors exit 2 with one line; anything else is a bug: one line, exit 1."""

from __future__ import annotations

import pytest

from waferllm.cli import main, one_line
from waferllm.errors import WaferError


def _patch_devices(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    from waferllm.cli import devices

    def boom(args: object) -> int:
        raise exc

    monkeypatch.setattr(devices, "run", boom)


def test_a_user_error_is_one_line_and_exit_2(capsys):
    assert main(["devices", "--device", "no-such-device"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("waferllm: error: unknown device")
    assert captured.err.count("\n") == 1


def test_a_bug_is_one_internal_error_line_and_exit_1(monkeypatch, capsys):
    _patch_devices(monkeypatch, ZeroDivisionError("division by zero"))
    assert main(["devices"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("waferllm: internal error: ZeroDivisionError: division by zero")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_bare_value_error_is_a_bug_not_a_user_error(monkeypatch, capsys):
    _patch_devices(monkeypatch, ValueError("not a WaferError"))
    assert main(["devices"]) == 1
    assert "internal error: ValueError" in capsys.readouterr().err


def test_a_wafer_error_raised_anywhere_is_a_user_error(monkeypatch, capsys):
    _patch_devices(monkeypatch, WaferError("bad\ninput"))
    assert main(["devices"]) == 2
    assert capsys.readouterr().err == "waferllm: error: bad input\n"


def test_long_messages_are_capped_to_one_short_line():
    text = one_line(WaferError("x" * 10_000 + "\n" + "y"))
    assert len(text) <= 500 and "\n" not in text and text.endswith("...")


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
        ),
    ],
    ids=["MemoryError", "torch-allocator"],
)
def test_running_out_of_host_memory_is_one_clear_line_and_exit_2(monkeypatch, capsys, exc):
    _patch_devices(monkeypatch, exc)
    assert main(["devices"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("waferllm: error: out of host memory") and err.count("\n") == 1


def test_another_runtime_error_is_still_a_bug(monkeypatch, capsys):
    _patch_devices(monkeypatch, RuntimeError("shape mismatch"))
    assert main(["devices"]) == 1
    assert "internal error: RuntimeError: shape mismatch" in capsys.readouterr().err
