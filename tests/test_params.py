"""cudit/_params.py must lay out the kernel's parameter struct exactly as the C header does."""
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from cudit._params import Params, SideParams

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


@pytest.mark.parametrize("py,c", [(SideParams, "SideParams"), (Params, "Params")])
def test_struct_matches_header(tmp_path, py, c):
    names = [name for name, _ in py._fields_]
    c_names = ["in" if n == "in_" else n for n in names]
    layout = c_layout(tmp_path, c, c_names)
    assert layout["size"] == ctypes.sizeof(py)
    for n, cn in zip(names, c_names):
        assert layout[cn] == getattr(py, n).offset, n
