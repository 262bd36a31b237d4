"""build_cubins' build cache: a second build of the same sources copies, a changed source or
toolkit compiles, "off" keeps nothing. The compiler is replaced by a stub that counts its calls."""
import concurrent.futures
import json

import pytest

import build_cubins


@pytest.fixture
def stub(monkeypatch, tmp_path):
    calls = []
    tools = {"include": "", "ptxas": "", "version": "12.9", "nvrtc": "12.9"}

    def build_arch(arch, tools_, out):
        calls.append(arch)
        name = f"{build_cubins.FAMILY}.{arch}.cubin"
        (out / name).write_bytes(f"cubin {arch} {tools_['version']}".encode())
        entry = {"file": name, "kernels": {"k": {"registers": 32}}}
        if arch == build_cubins.PTX_SOURCE:
            ptx = f"{build_cubins.FAMILY}.{build_cubins.PTX_ARCH}.ptx"
            (out / ptx).write_text("ptx")
            entry["ptx"] = {"arch": build_cubins.PTX_ARCH, "file": ptx}
        return entry

    monkeypatch.setattr(build_cubins, "toolchain", lambda: dict(tools))
    monkeypatch.setattr(build_cubins, "build_arch", build_arch)
    # Threads see the stubs; worker processes might not.
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", concurrent.futures.ThreadPoolExecutor)
    monkeypatch.setenv("CUDIT_BUILD_CACHE", str(tmp_path / "cache"))
    return calls, tools


def build(out, *extra):
    assert build_cubins.main(["--out", str(out), *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


def test_second_tree_copies_from_the_cache(stub, tmp_path):
    calls, _ = stub
    first = build(tmp_path / "a")
    assert sorted(calls) == sorted(build_cubins.ARCHS)
    second = build(tmp_path / "b")
    assert sorted(calls) == sorted(build_cubins.ARCHS)          # nothing compiled again
    assert second == first
    for arch, entry in first["archs"].items():
        assert (tmp_path / "b" / entry["file"]).read_bytes() == (tmp_path / "a" / entry["file"]).read_bytes()
    assert second["ptx"] == first["ptx"]
    assert (tmp_path / "b" / first["ptx"]["file"]).read_text() == "ptx"


def test_missing_ptx_rebuilds_its_source_arch(stub, tmp_path, monkeypatch):
    calls, _ = stub
    first = build(tmp_path / "a")
    (tmp_path / "a" / first["ptx"]["file"]).unlink()
    monkeypatch.setenv("CUDIT_BUILD_CACHE", "off")
    again = build(tmp_path / "a")
    assert calls.count(build_cubins.PTX_SOURCE) == 2 and calls.count("sm_90") == 1
    assert (tmp_path / "a" / again["ptx"]["file"]).exists()


def test_changed_toolkit_misses_the_cache(stub, tmp_path):
    calls, tools = stub
    first = build(tmp_path / "a")
    tools["nvrtc"] = "12.8"
    second = build(tmp_path / "b")
    assert sorted(calls) == sorted(list(build_cubins.ARCHS) * 2)
    assert second["archs"]["sm_90"]["digest"] != first["archs"]["sm_90"]["digest"]


def test_force_compiles_and_off_keeps_nothing(stub, tmp_path, monkeypatch):
    calls, _ = stub
    build(tmp_path / "a")
    build(tmp_path / "b", "--force", "--arch", "sm_90")
    assert calls.count("sm_90") == 2
    monkeypatch.setenv("CUDIT_BUILD_CACHE", "off")
    monkeypatch.chdir(tmp_path)   # where a cache named "off" would appear
    build(tmp_path / "c", "--arch", "sm_80")
    assert calls.count("sm_80") == 2
    assert not (tmp_path / "off").exists()


def test_incomplete_cache_entry_compiles(stub, tmp_path):
    calls, _ = stub
    first = build(tmp_path / "a", "--arch", "sm_90")
    cache = next((tmp_path / "cache").iterdir())
    (cache / first["archs"]["sm_90"]["file"]).unlink()
    build(tmp_path / "b", "--arch", "sm_90")
    assert calls.count("sm_90") == 2


def test_arches_added_one_build_at_a_time(stub, tmp_path):
    calls, _ = stub
    build(tmp_path / "a", "--arch", "sm_90")                    # a manifest without the PTX
    both = build(tmp_path / "a", "--arch", build_cubins.PTX_SOURCE)
    assert sorted(both["archs"]) == sorted(["sm_90", build_cubins.PTX_SOURCE]) and both["ptx"] is not None
    assert calls == ["sm_90", build_cubins.PTX_SOURCE]
