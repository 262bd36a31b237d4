"""The card's SM clock and power while a measurement runs: nvidia-smi sampled in the background.

A long kernel that executes many instructions an element can draw the card's power limit; the
driver then lowers the SM clock, and the same call reads slower than on a card with headroom
(perf-notes v34). Benchmarks record this beside their rows so that such a run is seen as one.

    with card_state.sampled() as state:
        ...                      # the timing
    state  # {"sm_mhz_min": ..., "sm_mhz_median": ..., "power_w_max": ..., "slowdown": [...]}, or {} without nvidia-smi
"""
from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess

QUERY = "clocks.sm,power.draw,clocks_event_reasons.active"
# clocks_event_reasons bits that lower the clock under load (nvidia-smi --help-query-gpu).
SLOWDOWNS = {0x4: "power cap", 0x8: "hardware slowdown", 0x20: "thermal", 0x40: "hardware thermal",
             0x80: "power brake"}


def summarize(text: str) -> dict:
    """nvidia-smi CSV lines (no header, no units: 'MHz, W, 0xbits') -> the run's clock and power."""
    samples = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3:
            continue
        try:
            samples.append((float(fields[0]), float(fields[1]), int(fields[2], 16)))
        except ValueError:   # "[N/A]" and the like
            continue
    if not samples:
        return {}
    clocks = [mhz for mhz, _, bits in samples if not bits & 0x1]   # 0x1: idle, between launches
    seen = 0
    for _, _, bits in samples:
        seen |= bits
    return {"sm_mhz_min": min(clocks or [0.0]), "sm_mhz_median": statistics.median(clocks or [0.0]),
            "power_w_max": max(w for _, w, _ in samples),
            "slowdown": [name for bit, name in SLOWDOWNS.items() if seen & bit]}


def smi_id(ordinal: int) -> str:
    """nvidia-smi's id of the CUDA device `ordinal`: its CUDA_VISIBLE_DEVICES entry (an index or a
    UUID, both of which nvidia-smi takes) where that is set, else the ordinal."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[ordinal] if ordinal < len(visible) else str(ordinal)


@contextlib.contextmanager
def sampled(ordinal: int = 0, period_ms: int = 100):
    """Sample CUDA device `ordinal` while the body runs; the yielded dict is filled in on exit ({}
    without nvidia-smi)."""
    state: dict = {}
    smi = shutil.which("nvidia-smi")
    proc = None
    if smi:
        proc = subprocess.Popen([smi, f"--id={smi_id(ordinal)}", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                                 f"-lms={period_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield state
    finally:
        if proc is not None:
            proc.terminate()
            out, _ = proc.communicate()
            state.update(summarize(out))
