"""Shipped cubins: manifest, ELF headers, resource report, and which image a GPU gets."""
import re
import struct

import pytest

import build_cubins
from cudit import _modules, _variants
from cudit._modules import Image, NoImageError, kernel_meta, select_image

EM_CUDA = 190


@pytest.fixture(scope="module")
def man():
    return _modules.manifest()


def elf_arch(blob: bytes) -> int:
    abi = blob[8]
    flags = struct.unpack_from("<I", blob, 48)[0]
    # ELF ABI 8 (sm_100 on) moved the SM number up one byte.
    return (flags >> 8) & 0xFF if abi >= 8 else flags & 0xFF


def test_build_and_runtime_share_one_variant_table():
    assert build_cubins.VARIANTS_FILE.samefile(_variants.__file__)
    assert [v.name for v in build_cubins.variants.all_variants()] == list(_variants.BY_NAME)
    assert build_cubins.ARCHS == _variants.ARCHS


def test_manifest_covers_every_arch_and_variant(man):
    assert set(man["archs"]) == set(_variants.ARCHS)
    names = set(_variants.BY_NAME) | set(_variants.BACKWARD_BY_NAME) | set(_variants.EXTRA_KERNELS)
    for arch, entry in man["archs"].items():
        assert set(entry["kernels"]) == names, arch
    assert man["ptx"]["arch"] == _variants.PTX_ARCH


@pytest.mark.parametrize("arch", build_cubins.ARCHS)
def test_cubin_is_cuda_elf_for_its_arch_with_no_spills(man, arch):
    entry = man["archs"][arch]
    blob = (_modules.CUBIN_DIR / entry["file"]).read_bytes()
    assert blob[:4] == b"\x7fELF" and blob[4] == 2          # 64-bit ELF
    assert struct.unpack_from("<H", blob, 18)[0] == EM_CUDA
    assert elf_arch(blob) == int(arch[3:])
    for name, k in entry["kernels"].items():
        assert name.encode() in blob
        assert (k["spill_stores"], k["spill_loads"], k["stack_bytes"]) == (0, 0, 0), name
        v = _variants.BY_NAME.get(name)
        bwd = _variants.BACKWARD_BY_NAME.get(name)
        bound = (v or bwd).bound(arch) if v or bwd else 1024
        assert k["registers"] * bound <= 65536, name
        if v:   # every block the planner may give this variant fits this architecture's bound
            assert bound >= _variants.planner_bound(v.parts, v.heads_per_thread, v.layer, v.source, v.out), name


def test_ptx_targets_the_oldest_arch(man):
    text = (_modules.CUBIN_DIR / man["ptx"]["file"]).read_text()
    assert ".target sm_80" in text
    assert all(f".entry {name}(" in text for name in _variants.KERNEL_NAMES)


def test_ptx_bounds_are_what_the_runtime_assumes(man):
    text = (_modules.CUBIN_DIR / man["ptx"]["file"]).read_text()
    found = {m.group(1): int(m.group(2)) for m in re.finditer(r"\.entry (\w+)\(.*?\)\s*\.maxntid (\d+),", text, re.S)}
    image = Image("ptx", man["ptx"]["arch"], man["ptx"]["file"])
    variants = {**_variants.BY_NAME, **_variants.BACKWARD_BY_NAME}
    assert set(variants) <= set(found)
    for name, v in variants.items():
        assert found[name] == kernel_meta(man, image, v)["max_threads"], name


FAKE = {"archs": {"sm_80": {"file": "a"}, "sm_86": {"file": "b"}, "sm_90": {"file": "c"},
                  "sm_120": {"file": "d"}}, "ptx": {"arch": "compute_80", "file": "p"}}


@pytest.mark.parametrize("device,expected", [
    ((8, 0), Image("cubin", "sm_80", "a")), ((8, 7), Image("cubin", "sm_86", "b")),
    ((9, 0), Image("cubin", "sm_90", "c")), ((12, 1), Image("cubin", "sm_120", "d")),
    ((10, 3), Image("ptx", "compute_80", "p")),
])
def test_select_same_major_highest_minor_else_ptx(device, expected):
    assert select_image(device, FAKE) == expected


def test_no_image_error_names_sm_shipped_archs_and_driver():
    with pytest.raises(NoImageError, match=r"sm_75.*sm_80, sm_86, sm_90, sm_120.*compute_80.*driver version 12\.4"):
        select_image((7, 5), FAKE, "12.4")


def test_parse_ptxas_report():
    report = """ptxas info    : Compiling entry function 'k_a' for 'sm_90'
ptxas info    : Function properties for k_a
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, 128 bytes smem, 464 bytes cmem[0]
ptxas info    : Compiling entry function 'k_b' for 'sm_90'
ptxas info    : Function properties for k_b
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 22 registers, used 0 barriers, 464 bytes cmem[0]
"""
    got = build_cubins.parse_ptxas_report(report)
    assert got["k_a"] == {"registers": 40, "spill_stores": 4, "spill_loads": 4, "stack_bytes": 8,
                          "static_smem": 128}
    assert got["k_b"]["registers"] == 22 and got["k_b"]["static_smem"] == 0


def test_a_kernel_missing_from_the_manifest_is_named():
    v = _variants.all_variants()[0]
    man = {"archs": {"sm_90": {"kernels": {}}}}
    with pytest.raises(NoImageError, match=f"no kernel {v.name}.*build_cubins"):
        kernel_meta(man, Image("cubin", "sm_90", "x.cubin"), v)
    assert kernel_meta(man, Image("ptx", "compute_80", "x.ptx"), v)["max_threads"] == v.bound("")
