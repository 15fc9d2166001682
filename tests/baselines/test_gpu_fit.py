"""The GPU baseline's calibration: residuals on PAPER.md §3.3 and the refit of the stored constants.

The residuals are recomputed from the model with the constants stored in `gpu_specs.py`; the
refit proves those constants are what the fit produces, not numbers picked by hand.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from waferllm.baselines.gpu_fit import (
    CALIBRATION_ROWS,
    FITTED_FIELDS,
    TABLE6_ROWS,
    fit_calibration,
    fit_residuals,
    table6_check,
)
from waferllm.baselines.gpu_specs import calibrated


@pytest.fixture(scope="module")
def refit():
    return fit_calibration()


def test_the_stored_constants_reproduce_every_calibration_row_within_ten_percent():
    residuals = fit_residuals()
    assert len(residuals) == len(CALIBRATION_ROWS) == 6
    for residual, row in zip(residuals, CALIBRATION_ROWS, strict=True):
        assert residual.measured == row.measured_tpr
        assert abs(residual.error) <= 0.10, residual


def test_refitting_from_a_neutral_start_recovers_the_stored_constants(refit):
    stored = calibrated()
    for field in FITTED_FIELDS:
        assert getattr(refit.calibration, field) == pytest.approx(
            getattr(stored, field), rel=2e-3
        ), field
    assert refit.max_abs_error <= 0.10
    # The assumed constants pass through the fit untouched.
    assert refit.calibration.kernel_floor_s == stored.kernel_floor_s
    assert refit.calibration.usable_memory_fraction == stored.usable_memory_fraction


def _sum_sq_log(calibration) -> float:
    return sum(math.log(r.modelled / r.measured) ** 2 for r in fit_residuals(calibration))


def test_the_stored_constants_are_a_least_squares_minimum():
    stored = calibrated()
    best = _sum_sq_log(stored)
    for field in FITTED_FIELDS:
        for factor in (0.9, 1.1):
            value = getattr(stored, field) * factor
            if field.endswith("efficiency"):
                value = min(value, 1.0)
            moved = dataclasses.replace(stored, **{field: value})
            assert _sum_sq_log(moved) > best, (field, factor)


def test_the_fit_moves_a_constant_the_rows_depend_on():
    # Halving the HBM efficiency must roughly halve the 1-GPU decode TPR (bandwidth-bound).
    stored = calibrated()
    slower = dataclasses.replace(stored, hbm_efficiency=stored.hbm_efficiency / 2)
    decode_1 = [r for r in fit_residuals(slower) if r.label == "decode TPR, 1 A100"][0]
    assert decode_1.error == pytest.approx(-0.5, abs=0.05)


def test_table6_is_checked_not_fitted_and_compares_all_six_a100_cells():
    check = table6_check()
    assert [r.measured for r in check] == [row.measured_s for row in TABLE6_ROWS]
    assert len(check) == 6 and all(math.isfinite(r.error) for r in check)
    # The check depends on the calibration only through the model: a different HBM efficiency
    # changes the single-GPU prediction in proportion.
    stored = calibrated()
    slower = dataclasses.replace(stored, hbm_efficiency=stored.hbm_efficiency / 2)
    assert table6_check(slower)[0].modelled == pytest.approx(2 * check[0].modelled)
