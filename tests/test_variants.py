"""The variant table's entries for second forms of a variant (cudit/_variants.py EVERY_HEAD_PATHS,
ALL_HEADS_PATHS, ONCE_TABLE_PATHS, LAYER_ONCE_PATHS): no stale keys, and the flag reaches the kernel's instantiation."""
import dataclasses

from cudit._variants import (ALL_HEADS_OUT_BOUNDS, ALL_HEADS_PATHS, ARCHS, BACKWARD_BY_NAME, BY_NAME,
                             EVERY_ARCH_BOUNDS, EVERY_HEAD_PATHS, EVERY_NONE, EVERY_ONLY, EVERY_TOO,
                             LAYER_ONCE_BOUNDS, LAYER_ONCE_PATHS, ONCE_ARCH_BOUNDS, ONCE_TABLE_PATHS, TABLE_HALF,
                             TABLE_ONCE, TABLE_SHARED, all_variants)


def every_path_variants(alone: bool) -> list:
    return [v for v in all_variants() if v.every_path and v.all_heads == alone and not v.layer_once]


def path_key(v) -> tuple:
    return v.rope, v.norm, v.heads_per_thread, v.source, v.shared_table


def test_every_head_path_keys_each_name_a_built_variant():
    assert {path_key(v) for v in every_path_variants(alone=False)} == EVERY_HEAD_PATHS
    assert {path_key(v) for v in every_path_variants(alone=True)} == ALL_HEADS_PATHS


def test_every_head_path_bounds_each_name_a_variant_carrying_the_path():
    carried = {(a, v.dtype, v.table, v.norm, v.heads_per_thread) for v in every_path_variants(False) for a in ARCHS}
    assert set(EVERY_ARCH_BOUNDS) <= carried
    for out, bounds in ALL_HEADS_OUT_BOUNDS.items():
        alone = {(v.dtype, v.table, v.rope, v.norm, v.heads_per_thread, v.shared_table)
                 for v in every_path_variants(True) if v.out == out}
        assert set(bounds) == alone and all(len(b) == len(ARCHS) for b in bounds.values()), out


def test_only_plain_and_fp8_forms_carry_the_path_and_the_kernel_is_told():
    for v in all_variants():
        assert not v.every_path or v.layer_once or v.all_heads and v.out or not (v.layer or v.out or v.stats)
        every_arg = int(v.instantiation("sm_90").rstrip(")").split(", ")[-2])
        assert every_arg == (EVERY_ONLY if v.all_heads else EVERY_TOO if v.every_path else EVERY_NONE), v.name


def test_each_variant_of_all_heads_alone_has_its_general_form():
    for v in every_path_variants(alone=True):
        general = dataclasses.replace(v, all_heads=False)
        assert general.name in BY_NAME, v.name


def once_table_variants() -> list:
    return [v for v in all_variants() if v.once_table and not v.layer_once]


def test_once_table_keys_each_name_a_built_variant():
    keys = {(v.rope, v.norm, v.heads_per_thread, v.shared_table) for v in once_table_variants()}
    assert keys == ONCE_TABLE_PATHS


def test_once_table_bounds_each_name_a_variant_carrying_the_form():
    carried = {(a, v.dtype, v.table, v.norm) for v in once_table_variants() for a in ARCHS}
    assert set(ONCE_ARCH_BOUNDS) <= carried


def test_only_plain_table_forms_read_the_slice_once_and_the_kernel_is_told():
    for v in all_variants():
        assert not v.once_table or v.layer_once or (v.plain and v.source == "table")
        table_arg = int(v.instantiation("sm_90").rstrip(")").split(", ")[7])
        assert table_arg == TABLE_SHARED * v.shared_table | TABLE_ONCE * v.once_table | TABLE_HALF * v.half_table, v.name


def test_every_rotate_half_variant_by_table_has_a_half_table_twin_built_alike():
    for table in (BY_NAME, BACKWARD_BY_NAME):
        twins = [v for v in table.values() if v.half_table]
        assert twins and all(v.rope == "half" and getattr(v, "source", "table") == "table" for v in twins)
        whole = {dataclasses.replace(v, half_table=False) for v in twins}
        assert whole == {v for v in table.values() if v.rope == "half" and getattr(v, "source", "table") == "table"
                         and not v.half_table}


def test_layernorm_once_forms_each_have_a_general_form_and_the_kernel_is_told():
    forms = [v for v in all_variants() if v.layer_once]
    assert {(v.rope, v.norm, v.heads_per_thread) for v in forms} == LAYER_ONCE_PATHS
    assert {(v.dtype, v.table) for v in forms} == set(LAYER_ONCE_BOUNDS)
    for v in forms:
        assert dataclasses.replace(v, shared_table=False, all_heads=False).name in BY_NAME, v.name
        assert v.source == "table" and not (v.out or v.stats)
        args = v.instantiation("sm_90").rstrip(")").split(", ")
        assert (int(args[7]), int(args[9]), int(args[-2])) == (TABLE_SHARED | TABLE_ONCE, 1, EVERY_ONLY), v.name
