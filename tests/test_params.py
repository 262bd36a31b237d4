"""cudit/_params.py must lay out the kernel's parameter struct exactly as the C header does, and
the codes the kernels switch on must be the Python tables' (cudit/_variants.py)."""
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from cudit._params import BwdParams, Params, ReduceParams, SideParams

HEADER = Path(__file__).resolve().parents[1] / "kernels" / "qk_norm_rope_params.h"


def c_layout(tmp_path, struct: str, fields) -> dict:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no host C compiler to read the header's layout")
    src = tmp_path / "layout.c"
    lines = [f'#include "{HEADER}"', "#include <stddef.h>", "#include <stdio.h>", "int main(void) {",
             f'  printf("size %zu\\n", sizeof({struct}));']
    lines += [f'  printf("{f} %zu\\n", offsetof({struct}, {f}));' for f in fields]
    lines += ["  return 0;", "}"]
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run([cc, str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("py,c", [(SideParams, "SideParams"), (Params, "Params"), (BwdParams, "BwdParams"),
                                  (ReduceParams, "ReduceParams")])
def test_struct_matches_header(tmp_path, py, c):
    names = [name for name, _ in py._fields_]
    c_names = ["in" if n == "in_" else n for n in names]
    layout = c_layout(tmp_path, c, c_names)
    assert layout["size"] == ctypes.sizeof(py)
    for n, cn in zip(names, c_names):
        assert layout[cn] == getattr(py, n).offset, n


def _enum(path: Path, name: str) -> dict:
    """NAME = value pairs of a C enum in a kernel header."""
    import re

    body = re.search(r"enum " + name + r"\b[^{]*\{([^}]*)\}", path.read_text()).group(1)
    return {k.strip(): int(v) for k, v in re.findall(r"(\w+)\s*=\s*(\d+)", body)}


def test_codes_the_kernels_switch_on_match_the_python_tables():
    from cudit._variants import DTYPE_CODES, NORM_CODES, OUT_CODES, ROPE_CODES

    kernels = HEADER.parent
    assert _enum(kernels / "cudit_common.cuh", "DTypeCode") == {"DT_" + k.upper(): v for k, v in DTYPE_CODES.items()}
    assert _enum(HEADER, "RopeMode") == {"ROPE_" + k.upper(): v for k, v in ROPE_CODES.items()}
    assert _enum(HEADER, "NormKind") == {"NORM_" + k.upper(): v for k, v in NORM_CODES.items()}
    assert _enum(HEADER, "OutKind") == {"OUT_" + {"": "SAME", "f8": "FP8", "f8a": "FP8_AMAX"}[k]: v
                                        for k, v in OUT_CODES.items()}


def test_table_kind_flags_match_the_kernel():
    from cudit._variants import TABLE_HALF, TABLE_ONCE, TABLE_SHARED

    kinds = _enum(HEADER.parent / "qk_norm_rope.cu", "TableKind")
    assert kinds == {"TABLE_ANY": 0, "TABLE_SHARED": TABLE_SHARED, "TABLE_ONCE": TABLE_ONCE, "TABLE_HALF": TABLE_HALF}


def test_every_path_codes_match_the_kernel():
    from cudit._variants import EVERY_NONE, EVERY_ONLY, EVERY_TOO

    paths = _enum(HEADER.parent / "qk_norm_rope.cu", "EveryPath")
    assert paths == {"EVERY_NONE": EVERY_NONE, "EVERY_TOO": EVERY_TOO, "EVERY_ONLY": EVERY_ONLY}


def test_exchange_layout_and_stats_codes_match_the_header():
    from cudit._params import MAX_RANKS, XCHG_HEADER
    from cudit._variants import STATS_CODES

    assert _enum(HEADER, "ExchangeLayout") == {"MAX_RANKS": MAX_RANKS, "XCHG_HEADER": XCHG_HEADER}
    names = {"": "NONE", "sumsq": "WRITE", "given": "READ", "exchange": "EXCHANGE"}
    assert _enum(HEADER, "StatsMode") == {"STATS_" + names[k]: v for k, v in STATS_CODES.items()}


def test_backward_pointer_indices_are_the_struct_offsets():
    from cudit._params import BWD_POINTERS, bwd_pointer

    at = {}
    for field, n in (("x", 2), ("dy", 2), ("dx", 2)):
        for side in range(n):
            at[bwd_pointer(field, side)] = getattr(BwdParams, field).offset + 8 * side
    for side in range(2):
        for stream in range(2):
            at[bwd_pointer("w", side, stream)] = BwdParams.w.offset + 8 * (2 * side + stream)
    for field in ("cos", "sin", "part"):
        at[bwd_pointer(field)] = getattr(BwdParams, field).offset
    assert sorted(at) == list(range(BWD_POINTERS))
    assert all(offset == 8 * i for i, offset in at.items())
