"""Online HGQ quantizer RTL in the Amaranth simulator, against the golden integer steps."""

import re

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.formats import FP16, FP32
from golden.hgq import HGQConfig
from golden.quantizer import (
    coarse_scale_magnitudes,
    encode_fp16_magnitudes,
    fp16_magnitudes,
)
from hw.quantizer import (
    FP16_QUIET_NAN,
    CoarseScaleUnit,
    HGQQuantizer,
    generate_verilog,
    input_layout,
    output_layout,
    quantizer_name,
)
from sim.packing import unpack
from sim.quantizer import (
    QuantizerStimulus,
    describe_mismatch,
    make_quantizer_input,
    make_quantizer_stimulus,
    minilm_ffn_in_bits,
)

from .helpers import as_rows, assert_constructor_raises, drive_streams

# (quant, lanes): the default design at two widths, the conventional design,
# the widest shift codes, and group sizes whose beat counts are not powers of two.
QUANTIZERS = {
    "default-lanes16": (HGQConfig(), 16),
    "default-lanes4": (HGQConfig(), 4),
    "conventional-g16": (HGQConfig.conventional(16), 16),
    "gc32-gf8-sb4-lanes2": (HGQConfig(32, 8, 4), 2),
    "gc48-gf24-sb1-lanes8": (HGQConfig(48, 24, 1), 8),
}


def stream_through(dut, payloads, **handshake):
    """Send integer payloads into ``dut.i``; return the output payloads, the cycle count and the final ``invalid``."""
    run = drive_streams(dut, payloads, len(payloads), finish=lambda ctx: bool(ctx.get(dut.invalid)), **handshake)
    return run.received, run.cycles, run.final


def run_case(quant, lanes, bits, **handshake):
    """Stream FP16 encodings through a fresh quantizer, and return (received rows, stimulus, cycles, invalid)."""
    return run_cases(quant, lanes, [bits], **handshake)


def run_cases(quant, lanes, inputs, **handshake):
    """Stream several inputs back to back, without reset, through a fresh quantizer.

    The quantizer counts coarse groups and ignores ``last``, so inputs with
    different row lengths can follow each other. Returns (received rows,
    stimulus of all inputs, cycles, invalid).
    """
    stimuli = [make_quantizer_stimulus(bits, quant, lanes) for bits in inputs]
    stimulus = QuantizerStimulus(
        beats=np.concatenate([part.beats for part in stimuli]),
        expected=np.concatenate([part.expected for part in stimuli]),
        invalid=any(part.invalid for part in stimuli))
    payloads = [int.from_bytes(row.tobytes(), "little") for row in stimulus.beats]
    received, cycles, invalid = stream_through(HGQQuantizer(quant, lanes), payloads, **handshake)
    return as_rows(output_layout(quant, lanes), received), stimulus, cycles, invalid


def assert_matches(quant, lanes, got, stimulus):
    message = describe_mismatch(quant, lanes, got, stimulus.expected)
    assert message is None, message
    assert np.array_equal(got, stimulus.expected)


def case_inputs(quant, seed):
    return [make_quantizer_input(case, quant, seed) for case in ("minilm", "random", "edges")]


@pytest.mark.parametrize("quantizer", QUANTIZERS.values(), ids=QUANTIZERS.keys())
def test_quantizer_full_rate(quantizer):
    """MiniLM tokens, random bit patterns and the edge rows, one beat per cycle."""
    quant, lanes = quantizer
    got, stimulus, cycles, invalid = run_cases(quant, lanes, case_inputs(quant, seed=2))
    assert_matches(quant, lanes, got, stimulus)
    assert not invalid
    # One beat per cycle: the last group's beats leave 3 cycles after its last input beat.
    assert cycles == len(stimulus.beats) + quant.coarse_group // lanes + 2


@pytest.mark.parametrize("quantizer", QUANTIZERS.values(), ids=QUANTIZERS.keys())
def test_quantizer_with_stalls(quantizer):
    quant, lanes = quantizer
    got, stimulus, _, invalid = run_cases(quant, lanes, case_inputs(quant, seed=3),
                                          valid_probability=0.6, ready_probability=0.5, seed=4)
    assert_matches(quant, lanes, got, stimulus)
    assert not invalid


def test_quantizer_output_backpressure():
    """A sink that rarely accepts fills both banks, and the input must stall without losing beats."""
    quant, lanes = HGQConfig(), 16
    got, stimulus, _, _ = run_case(quant, lanes, make_quantizer_input("random", quant, seed=5),
                                   valid_probability=1.0, ready_probability=0.1, seed=6)
    assert_matches(quant, lanes, got, stimulus)


def test_quantizer_minilm_outliers():
    """The first 16 tokens of layer0.ffn_in; the [CLS] token has the largest outliers."""
    quant, lanes = HGQConfig(), 16
    bits = minilm_ffn_in_bits()[:16]
    got, stimulus, _, invalid = run_case(quant, lanes, bits, valid_probability=0.9, ready_probability=0.8, seed=7)
    assert_matches(quant, lanes, got, stimulus)
    assert not invalid
    scales = unpack(output_layout(quant, lanes), got)["scale"]
    assert FP16.from_bits(scales).max() > 2.0


NON_FINITE = ["default-lanes16", "conventional-g16", "gc48-gf24-sb1-lanes8"]


@pytest.mark.parametrize("quantizer", [QUANTIZERS[name] for name in NON_FINITE], ids=NON_FINITE)
def test_quantizer_non_finite_groups(quantizer):
    quant, lanes = quantizer
    got, stimulus, _, invalid = run_case(quant, lanes, make_quantizer_input("non_finite", quant, seed=8),
                                         valid_probability=0.8, ready_probability=0.7, seed=9)
    assert_matches(quant, lanes, got, stimulus)
    assert invalid
    fields = unpack(output_layout(quant, lanes), got)
    flagged = fields["scale"] == FP16_QUIET_NAN
    assert flagged.any()
    assert not fields["codes"][flagged].any()


def test_invalid_flag_timing():
    """``invalid`` rises in the cycle after the NaN beat is accepted and stays high."""
    quant, lanes = HGQConfig.conventional(16), 16
    dut = HGQQuantizer(quant, lanes)
    bits = np.zeros((3, 16), dtype=np.int64)
    bits[1, 4] = FP16_QUIET_NAN
    stimulus = make_quantizer_stimulus(bits, quant, lanes)
    payloads = [int.from_bytes(row.tobytes(), "little") for row in stimulus.beats]
    trace = []

    async def testbench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for payload in payloads:
            ctx.set(dut.i.payload.as_value(), payload)
            trace.append(ctx.get(dut.invalid))
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(4):
            trace.append(ctx.get(dut.invalid))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert trace == [0, 0, 1, 1, 1, 1, 1]


def test_scale_unit_every_amax():
    """Every finite FP16 amax, and NaN and Inf, through the combinational scale unit."""
    dut = CoarseScaleUnit(7)
    bits = np.r_[np.arange(FP16.exp_max << FP16.frac_bits), [0x7C00, 0x7E00, 0x7C01, 0xFBFF]]
    got = []

    async def testbench(ctx):
        for value in bits.tolist():
            ctx.set(dut.a, value)
            got.append(ctx.get(dut.y))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    _, amax = fp16_magnitudes(bits[:-4])
    expected = encode_fp16_magnitudes(coarse_scale_magnitudes(amax, 7))
    assert np.array_equal(got[:-4], expected)
    assert got[-4:-1] == [FP16_QUIET_NAN] * 3
    # The sign bit is ignored: -65504 gives the scale of 65504.
    assert got[-1] == expected[0x7BFF]


@pytest.mark.parametrize("divisor", [1, 2, 3])
def test_scale_unit_other_divisors(divisor):
    """Divisors with ties (2) and other quotient widths, on every 7th finite amax."""
    dut = CoarseScaleUnit(divisor)
    bits = np.arange(0, FP16.exp_max << FP16.frac_bits, 7)
    got = []

    async def testbench(ctx):
        for value in bits.tolist():
            ctx.set(dut.a, value)
            got.append(ctx.get(dut.y))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    _, amax = fp16_magnitudes(bits)
    assert np.array_equal(got, encode_fp16_magnitudes(coarse_scale_magnitudes(amax, divisor)))


def test_layouts():
    quant = HGQConfig()
    assert input_layout(16).size == 16 * 16 + 1
    assert output_layout(quant, 16).size == 16 * 4 + 2 + 16 + 1
    assert output_layout(HGQConfig.conventional(16), 4).size == 4 * 4 + 0 + 16 + 1
    assert quantizer_name(quant, 16) == "hgq_quantizer_l16_gc128_gf16_sb2"


def test_describe_mismatch_names_field():
    quant, lanes = HGQConfig(), 16
    stimulus = make_quantizer_stimulus(make_quantizer_input("random", quant, seed=1), quant, lanes)
    got = stimulus.expected.copy()
    assert describe_mismatch(quant, lanes, got, stimulus.expected) is None
    fields = unpack(output_layout(quant, lanes), got[5:6])
    got[5, -1] ^= 0x01  # The last byte contains the top bits of scale and last.
    message = describe_mismatch(quant, lanes, got, stimulus.expected)
    assert message.startswith("1 of 48 output beats differ from the golden model; first at beat 5: ")
    assert "scale: RTL" in message
    assert f"golden {fields['scale'][0]}" in message


@pytest.mark.parametrize("quantizer", [QUANTIZERS["default-lanes4"], QUANTIZERS["conventional-g16"]],
                         ids=["default-lanes4", "conventional-g16"])
def test_verilog_blocks_start_at_reset(quantizer):
    """Icarus leaves an ``always @*`` block undefined until one of its inputs changes.

    Yosys's time-zero trigger does not run it under ``iverilog -g2012``
    (Icarus 11), which cocotb uses. Every such block must therefore read
    ``rst``, whose reset pulse runs it.
    """
    verilog = generate_verilog(*quantizer)
    blocks = re.findall(r"always @\* begin(.*?)\n  end\n", verilog, re.DOTALL)
    assert [block for block in blocks if "rst" not in block] == []


@pytest.mark.parametrize("arguments, error, message", [
    ([16], TypeError, "quant must be an HGQConfig, not int"),
    ([HGQConfig(), 0], ValueError, "lanes must be a positive integer, not 0"),
    ([HGQConfig(), 4.0], ValueError, "lanes must be a positive integer, not 4.0"),
    ([HGQConfig(), True], ValueError, "lanes must be a positive integer, not True"),
    ([HGQConfig(), 3], ValueError, "lanes must divide fine_group (16), not 3"),
    ([HGQConfig(), 32], ValueError, "lanes must divide fine_group (16), not 32"),
    ([HGQConfig(16, 16, 0, scale=FP32), 16], ValueError, "quant.scale must be FP16, not fp32"),
])
def test_quantizer_invalid_parameters(arguments, error, message):
    assert_constructor_raises(HGQQuantizer, arguments, error, message)


@pytest.mark.parametrize("divisor", [0, -7, 7.0])
def test_scale_unit_invalid_divisor(divisor):
    assert_constructor_raises(CoarseScaleUnit, [divisor], ValueError,
                              f"divisor must be a positive integer, not {divisor!r}")
