"""benchmarks/tuning_ab.py: the tables it compares, from its command-line specs."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tuning_ab  # noqa: E402
from cudit._tuning import DeviceSpec, Tuning, analytic  # noqa: E402


def test_a_spec_sets_scalar_knobs_and_one_kind_of_row():
    base = Tuning()
    t = tuning_ab.apply(base, "block_targets.full/1=192,row_iters.full/1=4:98304,full_grid=900,ahead_waves_in_row=0.25")
    assert t.block_target_for("full", 1) == 192 and t.row_iters_for("full", 1) == (4, 98304)
    assert t.full_grid == 900 and t.ahead_waves_in_row == 0.25
    # the other kinds keep the base's entries
    assert t.block_target_for("head", 1) == base.block_target_for("head", 1)
    assert t.row_iters_for("head", 1) == base.row_iters_for("head", 1)


def test_an_empty_spec_is_the_base_table():
    base = Tuning().with_knobs(full_grid=7)
    assert tuning_ab.apply(base, "") == base


def test_analytic_specs_start_from_the_default_not_the_table():
    device = DeviceSpec(arch=(9, 0), sms=132)
    table = Tuning().with_knobs(full_grid=7)
    assert tuning_ab.table_for("analytic", table, device) == analytic(device)
    t = tuning_ab.table_for("analytic,row_iters.full/1=4:98208", table, device)
    assert t.row_iters_for("full", 1) == (4, 98208) and t.full_grid == analytic(device).full_grid
    assert tuning_ab.table_for("full_grid=9", table, device) == table.with_knobs(full_grid=9)
