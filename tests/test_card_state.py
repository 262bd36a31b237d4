"""benchmarks/card_state.py: the clock and power summary of nvidia-smi's samples."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import card_state  # noqa: E402


def test_a_capped_run_reports_its_lowest_clock_peak_power_and_the_cap():
    text = "\n".join(["345, 80.1, 0x0000000000000001",     # idle before the launches: not a clock of the run
                      "1980, 450.0, 0x0000000000000000",
                      "1590, 705.2, 0x0000000000000004",
                      "1905, 699.0, 0x0000000000000004"])
    s = card_state.summarize(text)
    assert s["sm_mhz_min"] == 1590 and s["sm_mhz_median"] == 1905 and s["power_w_max"] == 705.2
    assert s["slowdown"] == ["power cap"]


def test_an_uncapped_run_names_no_slowdown_and_unreadable_lines_are_skipped():
    s = card_state.summarize("1980, 300.5, 0x0\n[N/A], [N/A], [N/A]\nnot a sample\n1980, 310.0, 0x0\n")
    assert s == {"sm_mhz_min": 1980, "sm_mhz_median": 1980, "power_w_max": 310.0, "slowdown": []}


def test_no_samples_no_state():
    assert card_state.summarize("") == {}


def test_without_nvidia_smi_the_body_runs_and_the_state_stays_empty(monkeypatch):
    monkeypatch.setattr(card_state.shutil, "which", lambda name: None)
    with card_state.sampled() as state:
        ran = True
    assert ran and state == {}


def test_the_sampled_card_is_the_cuda_device_as_the_visible_list_names_it(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, GPU-1234")
    assert card_state.smi_id(0) == "3" and card_state.smi_id(1) == "GPU-1234"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert card_state.smi_id(1) == "1"
