"""The energy table, its derivation rules and JSON overrides, and the per-layer arithmetic energy."""

import json
import math
import re

import pytest

from golden.energy import UNITS, EnergyItem, EnergyReport, EnergyTable, arithmetic_energy, load_energy_table
from golden.hgq import HGQConfig
from golden.opcost import op_counts

HOROWITZ_45NM = {
    "int8_add": 0.03, "int8_multiply": 0.2, "int32_add": 0.1, "int32_multiply": 3.1,
    "fp16_add": 0.4, "fp16_multiply": 1.1, "fp32_add": 0.9, "fp32_multiply": 3.7, "sram_read_64bit": 10.0,
}


# The table


def test_default_table_is_horowitz():
    table = EnergyTable()
    for name, value in HOROWITZ_45NM.items():
        assert getattr(table, name) == value, name
    assert EnergyTable.base_entries() == tuple(HOROWITZ_45NM)


def test_derived_entries_follow_their_rules():
    table = EnergyTable()
    assert table.int4_multiply == pytest.approx(0.2 / 4)
    assert table.int4_add == pytest.approx(0.03 / 2)
    assert table.mux_bit == pytest.approx(0.03 / 24)
    assert table.sram_write_64bit == 10.0


def test_base_override_changes_derived_entries():
    table = EnergyTable(int8_multiply=0.4, int8_add=0.06, sram_read_64bit=5.0)
    assert table.int4_multiply == pytest.approx(0.1)
    assert table.int4_add == pytest.approx(0.03)
    assert table.mux_bit == pytest.approx(0.0025)
    assert table.sram_write_64bit == 5.0


def test_derived_override_wins():
    table = EnergyTable(int8_multiply=0.4, int4_multiply=0.07)
    assert table.int4_multiply == 0.07


@pytest.mark.parametrize("name, value", [
    ("int8_add", 0), ("fp32_add", -0.9), ("int4_multiply", 0.0), ("mux_bit", float("nan")),
    ("sram_read_64bit", float("inf")), ("fp16_add", "0.4"), ("int32_add", True),
])
def test_table_rejects_invalid_entry(name, value):
    message = f"energy entry {name} must be a positive finite number of picojoules, not {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        EnergyTable(**{name: value})


# Rules by width


def test_integer_add_is_linear_through_table_widths():
    table = EnergyTable()
    assert table.integer_add(2) == pytest.approx(0.0075)
    assert table.integer_add(4) == pytest.approx(0.015)
    assert table.integer_add(8) == pytest.approx(0.03)
    assert table.integer_add(12) == pytest.approx(0.03 + 0.07 * 4 / 24)
    assert table.integer_add(32) == pytest.approx(0.1)
    assert table.integer_add(64) == pytest.approx(0.2)
    energies = [table.integer_add(width) for width in range(1, 65)]
    assert all(a < b for a, b in zip(energies, energies[1:]))


def test_width_rules():
    table = EnergyTable()
    assert table.shift(18, 3) == pytest.approx(18 * 3 * 0.00125)
    assert table.shift(12, 0) == 0
    assert table.int_to_fp32(21) == pytest.approx(table.integer_add(21) + table.shift(21, 5) + table.integer_add(24))
    assert table.fp32_to_fp16() == pytest.approx(table.shift(24, 5) + table.integer_add(11))
    assert table.scale_product() == 1.1
    assert table.multiplier_slice(4) * 11 / 4 == pytest.approx(1.1)
    assert table.multiplier_slice(11) == pytest.approx(1.1)
    assert table.buffer_read(64) == 10.0
    assert table.buffer_read(512) == pytest.approx(80.0)
    assert table.buffer_write(16) == pytest.approx(2.5)


@pytest.mark.parametrize("width", [0, -4, 2.5, True])
def test_rules_reject_invalid_width(width):
    with pytest.raises(ValueError, match=f"^{re.escape(f'width must be a positive integer of bits, not {width!r}')}$"):
        EnergyTable().integer_add(width)


# JSON overrides


def write_json(tmp_path, value, name="table.json"):
    path = tmp_path / name
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


def test_load_energy_table_overrides(tmp_path):
    table = load_energy_table(write_json(tmp_path, {"int8_add": 0.025, "fp32_multiply": 4, "mux_bit": 0.002}))
    assert table.int8_add == 0.025
    assert table.fp32_multiply == 4
    assert table.mux_bit == 0.002
    assert table.int4_add == pytest.approx(0.0125)
    assert table.fp16_add == 0.4


def test_load_energy_table_empty_object_is_default(tmp_path):
    assert load_energy_table(write_json(tmp_path, {})) == EnergyTable()


def test_load_energy_table_rejects_unknown_key(tmp_path):
    path = write_json(tmp_path, {"int8_add": 0.03, "int9_add": 0.04})
    message = (f"energy table {str(path)!r} has the unknown entry 'int9_add'; known entries: "
               + ", ".join(EnergyTable.entries()))
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_energy_table(path)


@pytest.mark.parametrize("value", [0, -1.5, None, "1"])
def test_load_energy_table_rejects_non_positive(tmp_path, value):
    path = write_json(tmp_path, {"fp16_multiply": value})
    message = f"energy entry fp16_multiply must be a positive finite number of picojoules, not {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_energy_table(path)


def test_load_energy_table_rejects_bad_files(tmp_path):
    array = write_json(tmp_path, [1, 2], "array.json")
    with pytest.raises(ValueError, match=r"must contain a JSON object of entry names and picojoules, not a list$"):
        load_energy_table(array)
    broken = write_json(tmp_path, "{int8_add: 1}", "broken.json")
    with pytest.raises(ValueError, match=r"broken\.json' is not valid JSON: "):
        load_energy_table(broken)
    with pytest.raises(ValueError, match=r"missing\.json' cannot be read: No such file or directory$"):
        load_energy_table(tmp_path / "missing.json")


# Arithmetic energy of a layer


def items_by_operation(report, unit):
    return {item.operation: item for item in report.items if item.unit == unit}


def test_arithmetic_counts_extend_opcost():
    bits = [11] * 2 + [4] * 6
    counts = op_counts(3, 64, 256, bits)
    report = arithmetic_energy(3, 64, 256, bits)
    pe = items_by_operation(report, "pe_array")
    assert pe["INT4 multiply"].count == counts.int4_macs
    assert pe["12-bit add"].count == counts.int4_macs - counts.shifts
    shift = items_by_operation(report, "shift_scaler")
    assert shift["18-bit shift, 3 levels"].count == counts.shifts
    assert shift["21-bit add"].count == counts.shifts - counts.int_to_fp32
    coarse = items_by_operation(report, "coarse_scaler")
    assert coarse["21-bit INT to FP32"].count == counts.int_to_fp32
    assert coarse["FP16 x FP16 scale product"].count == counts.scale_products
    assert coarse["FP32 multiply"].count == counts.residual_fp32_multiplies
    assert coarse["FP32 add"].count == counts.residual_fp32_adds
    assert items_by_operation(report, "combiner")["FP32 add"].count == counts.output_fp32_adds
    lvc = items_by_operation(report, "lvc")
    assert lvc["4-bit multiplier slice"].count == counts.lowrank_slices
    assert lvc["FP32 add"].count == counts.lowrank_fp32_adds
    assert lvc["FP32 to FP16"].count == 3 * 8
    assert report.ops == 2 * 3 * 64 * 256


def test_arithmetic_energy_by_hand():
    # One token, N = 8, K = 128: 1024 MACs in 64 fine groups and 8 coarse groups.
    table = EnergyTable()
    report = arithmetic_energy(1, 8, 128, [11, 4], table=table)
    units = report.unit_picojoules()
    assert units["pe_array"] == pytest.approx(1024 * 0.05 + 960 * table.integer_add(12))
    assert units["shift_scaler"] == pytest.approx(64 * 18 * 3 * 0.00125 + 56 * table.integer_add(21))
    assert units["coarse_scaler"] == pytest.approx(8 * (table.int_to_fp32(21) + 1.1 + 3.7 + 0.9))
    assert units["combiner"] == pytest.approx(16 * 0.9)
    # Slices: (3 + 1) per product, 128 + 8 products; FP32 adds: 2 * (128 + 8).
    assert units["lvc"] == pytest.approx(544 * 0.4 + 272 * 0.9 + 2 * table.fp32_to_fp16())
    assert units["buffers"] == 0
    assert list(units) == list(UNITS)
    assert report.picojoules == pytest.approx(sum(units.values()))
    assert report.tops_per_watt == pytest.approx(2 * 1024 / report.picojoules)


def test_quantizer_energy_per_activation():
    one = arithmetic_energy(1, 8, 128, []).unit_picojoules()["quantizer"]
    assert arithmetic_energy(3, 8, 128, []).unit_picojoules()["quantizer"] == pytest.approx(3 * one)
    assert arithmetic_energy(1, 64, 128, []).unit_picojoules()["quantizer"] == pytest.approx(one)


def test_hgq_dequantizes_with_less_energy_than_conventional():
    hgq = arithmetic_energy(4, 64, 384, [])
    conventional = arithmetic_energy(4, 64, 384, [], quant=HGQConfig.conventional(16))
    shift = items_by_operation(conventional, "shift_scaler")
    # Without shift bits the shifter has no levels, and one fine group is one coarse group.
    assert shift["12-bit shift, 0 levels"].picojoules == 0
    assert "12-bit add" not in shift
    assert items_by_operation(conventional, "coarse_scaler")["FP32 multiply"].count == 4 * 64 * 384 // 16
    ratio = hgq.dequantization_picojoules / conventional.dequantization_picojoules
    assert 0.1 < ratio < 0.2
    assert hgq.unit_picojoules()["pe_array"] == pytest.approx(conventional.unit_picojoules()["pe_array"])


def test_svdmp_needs_less_lowrank_energy():
    mixed = arithmetic_energy(2, 128, 128, [11] * 8 + [4] * 24)
    wide = arithmetic_energy(2, 128, 128, [11] * 32)
    slices = items_by_operation(mixed, "lvc")["4-bit multiplier slice"].count
    assert slices * 2 == items_by_operation(wide, "lvc")["4-bit multiplier slice"].count
    assert mixed.unit_picojoules()["lvc"] < wide.unit_picojoules()["lvc"]


def test_rank_zero_has_no_lowrank_items():
    report = arithmetic_energy(2, 16, 128, [], bias=False)
    assert report.unit_picojoules()["lvc"] == 0
    assert report.unit_picojoules()["combiner"] == 0
    assert all(item.count for item in report.items)


def test_reports_add():
    a = arithmetic_energy(1, 8, 128, [])
    b = arithmetic_energy(2, 16, 128, [11])
    total = a + b
    assert total.ops == a.ops + b.ops
    assert total.picojoules == pytest.approx(a.picojoules + b.picojoules)
    assert len(total.items) == len(a.items) + len(b.items)


def test_item_energy():
    assert EnergyItem("pe_array", "INT4 multiply", 10, 0.05).picojoules == pytest.approx(0.5)
    assert EnergyReport().picojoules == 0


def test_arithmetic_energy_rejects_invalid_input():
    with pytest.raises(TypeError, match=r"^table must be an EnergyTable, not dict$"):
        arithmetic_energy(1, 8, 128, [], table={})
    with pytest.raises(ValueError, match=r"^k must be a multiple of"):
        arithmetic_energy(1, 8, 100, [])
    with pytest.raises(ValueError, match=r"^tokens must be an integer of at least 1, not 0$"):
        arithmetic_energy(0, 8, 128, [])


def test_tops_per_watt_is_ops_per_picojoule():
    report = EnergyReport(items=(EnergyItem("pe_array", "x", 4, 0.5),), ops=8)
    assert report.tops_per_watt == 4.0
    assert math.isclose(report.dequantization_picojoules, 0.0)
