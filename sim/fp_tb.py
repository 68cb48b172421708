"""cocotb testbench of one combinational FP unit against precomputed golden vectors.

Environment: ``SEVEDO_VECTORS`` names an ``.npz`` with arrays ``a``, ``b``
(absent for one-operand units) and ``y`` of raw encodings (int64).
NaN results must equal the canonical NaN exactly; the vectors carry it.
"""

import os

import cocotb
import numpy as np
from cocotb.triggers import Timer


@cocotb.test()
async def fp_unit_matches_golden(dut):
    """Apply every operand vector and compare the output encoding exactly."""
    vectors = np.load(os.environ["SEVEDO_VECTORS"])
    a, y = vectors["a"], vectors["y"]
    b = vectors["b"] if "b" in vectors.files else None
    width = len(dut.a.value)
    mismatches = []
    for index in range(len(a)):
        operand = int(a[index]) & ((1 << width) - 1)
        dut.a.value = operand
        if b is not None:
            dut.b.value = int(b[index])
        await Timer(1, unit="ns")
        got = dut.y.value.to_unsigned()
        if got != int(y[index]):
            mismatches.append((index, got))
    dut._log.info("%d vectors, %d mismatches", len(a), len(mismatches))
    if mismatches:
        index, got = mismatches[0]
        operands = f"a=0x{int(a[index]) & ((1 << width) - 1):x}" + (f", b=0x{int(b[index]):08x}" if b is not None else "")
        raise AssertionError(
            f"{len(mismatches)} of {len(a)} results differ; first: {operands}: "
            f"RTL 0x{got:08x}, golden 0x{int(y[index]):08x}")
