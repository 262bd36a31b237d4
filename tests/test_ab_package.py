"""benchmarks/ab_package.py: another commit's cudit beside this one, importable, own torch names."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ab_package  # noqa: E402


def test_torch_library_is_renamed_everywhere():
    src = 'L = Library("cudit", "DEF")\n@register_fake("cudit::op_")\nOP = torch.ops.cudit.op_.default\n'
    out = ab_package.rename_torch_library(src, "cudit_x")
    assert out == 'L = Library("cudit_x", "DEF")\n@register_fake("cudit_x::op_")\nOP = torch.ops.cudit_x.op_.default\n'


def test_a_commit_becomes_an_importable_package_on_this_trees_cubins(tmp_path, monkeypatch):
    if shutil.which("git") is None or subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT,
                                                     capture_output=True).returncode:
        pytest.skip("not a git checkout")
    dest = ab_package.write_package("HEAD", tmp_path)
    assert dest.name == "cudit_HEAD" and (dest / "api.py").read_text() == \
        subprocess.run(["git", "show", "HEAD:cudit/api.py"], cwd=ROOT, capture_output=True, text=True).stdout
    assert 'Library("cudit_HEAD"' in (dest / "torch.py").read_text()
    tables = subprocess.run(["git", "ls-files", "cudit/tuning"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tables and sorted(p.name for p in (dest / "tuning").iterdir()) == sorted(Path(t).name for t in tables)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CUDIT_CUBIN_DIR", raising=False)
    pkg = ab_package.import_package("cudit_HEAD")
    import cudit._modules

    assert callable(pkg.qk_norm_rope) and pkg.__file__.startswith(str(dest))
    assert sys.modules["cudit_HEAD._modules"].CUBIN_DIR == cudit._modules.CUBIN_DIR
    import os

    assert "CUDIT_CUBIN_DIR" not in os.environ   # set for that import only
