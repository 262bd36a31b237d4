"""Tuning tables are data: the user's table beats the shipped one, which beats the analytic
default, and a table survives a round trip through its JSON file."""
import json

import pytest

from cudit import _tuning
from cudit._tuning import DeviceSpec, Tuning, analytic, tuning_for

CARD = DeviceSpec(arch=(9, 0), sms=132, name="NVIDIA Test Card 96GB")


def test_a_table_round_trips_through_json():
    t = Tuning(ahead_waves_in_row=0.25, one_row_blocks_up_to=0, name="x").with_kind("block_targets", "full/2", 128)
    assert Tuning.from_json(json.loads(json.dumps(t.to_json()))) == t


def test_a_table_with_an_unknown_field_is_refused():
    with pytest.raises(ValueError, match="unknown fields.*'blok_targets'"):
        Tuning.from_json({"blok_targets": {"full/1": 128}})


def test_user_table_then_shipped_table_then_analytic(tmp_path, monkeypatch):
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    user.mkdir(), shipped.mkdir()
    monkeypatch.setenv("CUDIT_TUNING_DIR", str(user))
    monkeypatch.setattr(_tuning, "SHIPPED", shipped)
    assert tuning_for(CARD) == analytic(CARD)
    name = _tuning.device_key(CARD) + ".json"
    assert name == "nvidia-test-card-96gb.json"
    (shipped / name).write_text(json.dumps(Tuning(ahead_waves_in_row=0.75, name="shipped").to_json()))
    assert tuning_for(CARD).ahead_waves_in_row == 0.75
    (user / name).write_text(json.dumps(Tuning(ahead_waves_in_row=0.25, name="mine").to_json()))
    assert tuning_for(CARD).ahead_waves_in_row == 0.25 and tuning_for(CARD).name.startswith("mine")


def test_the_analytic_default_follows_the_device():
    small, big = DeviceSpec(arch=(8, 6), sms=28, threads_per_sm=1536), DeviceSpec(arch=(10, 0), sms=148)
    a, b = analytic(small), analytic(big)
    assert a.small_grid_threads < b.small_grid_threads and a.one_row_blocks_up_to < b.one_row_blocks_up_to
    assert a.full_grid < b.full_grid and a.row_iters_for("full", 1)[1] < b.row_iters_for("full", 1)[1]


def test_every_shipped_table_loads():
    paths = sorted(_tuning.SHIPPED.glob("*.json"))
    assert paths
    for path in paths:
        t = Tuning.from_json(json.loads(path.read_text()))
        assert t.name and all(v > 0 for _, v in t.block_targets)


def test_tune_changes_one_kind_of_row_at_a_time():
    from cudit._tune import value_of, with_value

    t = Tuning()
    bigger = with_value(t, "row_iters/full/1", (4, 0))
    assert value_of(bigger, "row_iters/full/1") == (4, 0)
    assert [v for k, v in bigger.row_iters if k != "full/1"] == [v for k, v in t.row_iters if k != "full/1"]
    smaller = with_value(t, "block_targets/head/2", 128)
    assert value_of(smaller, "block_targets/head/2") == 128 and value_of(smaller, "block_targets/full/1") == 256
    assert value_of(with_value(t, "ahead_waves_in_row", 0.25), "ahead_waves_in_row") == 0.25
