"""Board builds: nextpnr log parsing, board configurations, `sevedo build`, and real bitstreams."""

import json
from dataclasses import replace

import pytest
from amaranth import Cat, Module, Signal
from amaranth.sim import Simulator
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.board import BOARDS, BoardTop, CoreTimingHarness, board_named
from hw.config import RMCConfig
from sevedo import build as build_command
from sevedo.cli import main
from sim import fpga
from sim.fpga import (ClockTiming, DoesNotFitError, Utilization, build_bitstream, parse_nextpnr_log,
                      parse_yosys_cells, utilization)

# Excerpts of logs of nextpnr-ice40 and nextpnr-ecp5 0.11 (yowasp 0.11.1.0.post826) and
# Yosys 0.70, from builds of this project's board tops.

ICE40_LOG = """\
Info: constraining clock net 'clk12_0__io' to 30.00 MHz
Info: Packing LUT-FFs..
Info:     2899 LCs used as LUT4 only
Info:       60 LCs used as LUT4 and DFF
Info: Packing non-LUT FFs..
Info:      311 LCs used as DFF only
Info: Packing carries..
Info:       86 LCs used as CARRY only
Info: Packing indirect carry+LUT pairs...
Info:       43 LUTs merged into carry LCs
Info: Constraining chains...
Info:       29 LCs used to legalise carry chains.
Info: Checksum: 0x4fc8c264
Info: Device utilisation:
Info: \t         ICESTORM_LC:    3344/   5280    63%
Info: \t        ICESTORM_RAM:       0/     30     0%
Info: \t               SB_IO:       3/     39     7%
Info: \t               SB_GB:       4/      8    50%
Info: \t        ICESTORM_PLL:       0/      1     0%
Info: \t        ICESTORM_DSP:       5/      8    62%
Info: \t      ICESTORM_SPRAM:       0/      4     0%
Info: Placed 4 cells based on constraints.
Info: Max frequency for clock '$PACKER_GND_NET_$glb_clk': 25.77 MHz (PASS at 12.00 MHz)
Info: Max frequency for clock              'cd_sync.clk': 7.09 MHz (FAIL at 30.00 MHz)
Info: Routing complete.
Info: Max frequency for clock '$PACKER_GND_NET_$glb_clk': 26.25 MHz (PASS at 12.00 MHz)
Warning: Max frequency for clock              'cd_sync.clk': 6.92 MHz (FAIL at 30.00 MHz)

1 warning, 0 errors
"""

ICE40_OVERFULL_LOG = """\
Info: Packing LUT-FFs..
Info:       28 LCs used as LUT4 only
Info:       68 LCs used as LUT4 and DFF
Info: Packing non-LUT FFs..
Info:     5941 LCs used as DFF only
Info: Device utilisation:
Info: \t         ICESTORM_LC:    6040/   5280   114%
Info: \t        ICESTORM_RAM:       0/     30     0%
Info: \t               SB_IO:       3/     39     7%
Info: \t        ICESTORM_DSP:       0/      8     0%
Info: Placed 4 cells based on constraints.
ERROR: Unable to place cell 'r55_SB_DFFSR_Q_52_DFFLC', no BELs remaining to implement cell type 'ICESTORM_LC'
0 warnings, 1 error
"""

ECP5_LOG = """\
Info: constraining clock net 'clk25_0__io' to 100.00 MHz

Info: Logic utilisation before packing:
Info:     Total LUT4s:        24/83640     0%
Info:         logic LUTs:      0/83640     0%
Info:         carry LUTs:     24/83640     0%
Info:           RAM LUTs:      0/10455     0%
Info:          RAMW LUTs:      0/20910     0%

Info:      Total DFFs:        26/83640     0%

Info: Device utilisation:
Info: \t          TRELLIS_IO:       5/    365     1%
Info: \t                DCCA:       1/     56     1%
Info: \t              DP16KD:       2/    208     0%
Info: \t          MULT18X18D:       4/    156     2%
Info: \t                 GSR:       1/      1   100%
Info: \t          TRELLIS_FF:      26/  83640     0%
Info: \t        TRELLIS_COMB:      30/  83640     0%
Info: \t        TRELLIS_RAMW:       0/  10455     0%

Info: Max frequency for clock '$glbnet$cd_sync.clk': 463.82 MHz (PASS at 100.00 MHz)
Info: Max frequency for clock '$glbnet$cd_sync.clk': 320.51 MHz (PASS at 100.00 MHz)

Info: Program finished normally.
"""

ECP5_OVERFULL_LOG = """\
Info: Logic utilisation before packing:
Info:     Total LUT4s:      1178/83640     1%
Info:         logic LUTs:   1178/83640     1%
Info:         carry LUTs:      0/83640     0%
Info:      Total DFFs:     86002/83640   102%
Info: Device utilisation:
Info: \t          TRELLIS_IO:       5/    365     1%
Info: \t          TRELLIS_FF:   86002/  83640   102%
Info: \t        TRELLIS_COMB:    1180/  83640     1%
Info: Placed 6 cells based on constraints.
ERROR: Unable to place cell 'r106_TRELLIS_FF_Q_34', no BELs remaining to implement cell type 'TRELLIS_FF'
0 warnings, 1 error
"""

YOSYS_STAT = """\
2.50. Printing statistics.

=== sevedo_icebreaker ===

        +----------Local Count, excluding submodules.
        | 
       79 wires
        9 cells
        1   SB_GB_IO
       26   SB_CARRY
       37   SB_LUT4

=== design hierarchy ===

        +----------Count including submodules.
        | 
        9 sevedo_icebreaker

        +----------Count including submodules.
        | 
       79 wires
      110 wire bits
        - memories
        9 cells
        6   $scopeinfo
        1   SB_GB_IO
        2   SB_IO
       99 submodules
       29   SB_CARRY
        9   SB_DFFE
       24   SB_DFFSR
       37   SB_LUT4

2.51. Executing CHECK pass (checking for obvious problems).
Checking module sevedo_icebreaker...
"""


# --- nextpnr and Yosys logs -------------------------------------------------------------------------------

def test_nextpnr_ice40_utilisation():
    log = parse_nextpnr_log(ICE40_LOG)
    assert log.utilisation == {
        "ICESTORM_LC": (3344, 5280), "ICESTORM_RAM": (0, 30), "SB_IO": (3, 39), "SB_GB": (4, 8),
        "ICESTORM_PLL": (0, 1), "ICESTORM_DSP": (5, 8), "ICESTORM_SPRAM": (0, 4),
    }
    assert log.packing == {"LUT4 only": 2899, "LUT4 and DFF": 60, "DFF only": 311, "CARRY only": 86}
    assert log.logic == {}
    assert log.errors == []


def test_nextpnr_fmax_after_routing():
    log = parse_nextpnr_log(ICE40_LOG)
    # The second report of each clock (after routing) replaces the first.
    assert log.fmax == {
        "$PACKER_GND_NET_$glb_clk": ClockTiming(26.25, 12.0),
        "cd_sync.clk": ClockTiming(6.92, 30.0),
    }
    assert not log.fmax["cd_sync.clk"].passed
    assert log.fmax["$PACKER_GND_NET_$glb_clk"].passed


def test_nextpnr_ecp5_tables():
    log = parse_nextpnr_log(ECP5_LOG)
    assert log.logic == {
        "Total LUT4s": (24, 83640), "logic LUTs": (0, 83640), "carry LUTs": (24, 83640),
        "RAM LUTs": (0, 10455), "RAMW LUTs": (0, 20910), "Total DFFs": (26, 83640),
    }
    assert log.utilisation["TRELLIS_COMB"] == (30, 83640)
    assert log.utilisation["DP16KD"] == (2, 208)
    assert log.utilisation["MULT18X18D"] == (4, 156)
    assert log.fmax == {"$glbnet$cd_sync.clk": ClockTiming(320.51, 100.0)}


def test_nextpnr_errors():
    log = parse_nextpnr_log(ICE40_OVERFULL_LOG)
    assert log.errors == ["Unable to place cell 'r55_SB_DFFSR_Q_52_DFFLC', no BELs remaining to implement "
                          "cell type 'ICESTORM_LC'"]
    assert log.utilisation["ICESTORM_LC"] == (6040, 5280)
    assert log.fmax == {}


def test_yosys_cells_of_hierarchy():
    cells = parse_yosys_cells(YOSYS_STAT)
    assert cells == {"$scopeinfo": 6, "SB_GB_IO": 1, "SB_IO": 2, "SB_CARRY": 29, "SB_DFFE": 9, "SB_DFFSR": 24,
                     "SB_LUT4": 37}
    assert parse_yosys_cells("no statistics here") == {}


def test_utilization_ice40_rows():
    rows = utilization("ice40", parse_nextpnr_log(ICE40_LOG), {"SB_CARRY": 363})
    assert rows == [
        Utilization("LC", "ICESTORM_LC", 3344, 5280),
        Utilization("LUT4", "LCs with a LUT4", 2899 + 60, 5280),
        Utilization("FF", "LCs with a DFF", 60 + 311, 5280),
        Utilization("carry", "SB_CARRY", 363, 5280),
        Utilization("RAM", "ICESTORM_RAM", 0, 30),
        Utilization("SPRAM", "ICESTORM_SPRAM", 0, 4),
        Utilization("DSP", "ICESTORM_DSP", 5, 8),
        Utilization("IO", "SB_IO", 3, 39),
    ]
    assert rows[0].percent == pytest.approx(100 * 3344 / 5280)


def test_utilization_ecp5_rows():
    rows = utilization("ecp5", parse_nextpnr_log(ECP5_LOG))
    assert rows == [
        Utilization("LUT4", "TRELLIS_COMB", 30, 83640),
        Utilization("FF", "TRELLIS_FF", 26, 83640),
        Utilization("carry", "carry LUTs", 24, 83640),
        Utilization("LUTRAM", "TRELLIS_RAMW", 0, 10455),
        Utilization("EBR", "DP16KD", 2, 208),
        Utilization("DSP", "MULT18X18D", 4, 156),
        Utilization("IO", "TRELLIS_IO", 5, 365),
    ]


def test_utilization_unknown_family():
    with pytest.raises(ValueError, match=r"^family must be one of ice40, ecp5, not 'gowin'$"):
        utilization("gowin", parse_nextpnr_log(ECP5_LOG))


@pytest.mark.parametrize("text, cell, used, available", [
    (ICE40_OVERFULL_LOG, "ICESTORM_LC", 6040, 5280),
    (ECP5_OVERFULL_LOG, "TRELLIS_FF", 86002, 83640),
])
def test_overfull_resource(text, cell, used, available):
    resource = fpga._overfull(parse_nextpnr_log(text))
    assert resource == Utilization(fpga.CELL_DESCRIPTIONS[cell], cell, used, available)
    assert fpga._overfull(parse_nextpnr_log(ECP5_LOG)) is None


def test_does_not_fit_message():
    error = DoesNotFitError("iCE40UP5K-SG48", Utilization("logic cells", "ICESTORM_LC", 6040, 5280))
    assert str(error) == ("the design does not fit the iCE40UP5K-SG48: it needs 6040 logic cells "
                          "(ICESTORM_LC), and the device has 5280 (114%)")


# --- boards and configurations ------------------------------------------------------------------------------

def test_board_names():
    assert tuple(sorted(BOARDS)) == build_command.BOARD_NAMES
    assert board_named("icebreaker").device == "iCE40UP5K-SG48"
    assert board_named("ulx3s-85f").device == "LFE5U-85F-BG381"


def test_board_named_unknown():
    with pytest.raises(ValueError, match=r"^board must be one of icebreaker, ulx3s-85f, not 'arty'$"):
        board_named("arty")


def test_board_default_configurations():
    icebreaker = board_named("icebreaker")
    assert icebreaker.oscillator_hz == 12_000_000
    assert icebreaker.goal_hz == 30_000_000
    assert icebreaker.configure().name == "host_rmc_r1_l8_gc128_gf16_sb2_w192_a1024_r32"
    assert icebreaker.configure().clock_hz == 12_000_000
    ulx3s = board_named("ulx3s-85f")
    assert ulx3s.oscillator_hz == 25_000_000
    assert ulx3s.goal_hz == 100_000_000
    assert ulx3s.configure().name == "host_rmc_r8_l16_gc128_gf16_sb2_w96_a3072_r128"
    assert ulx3s.configure().divisor == 25_000_000 // 115_200


def test_board_configuration_overrides():
    config = board_named("ulx3s-85f").configure(rows=4, lanes=8, coarse_group=64, fine_group=8, shift_bits=1,
                                                weight_words=48, activation_words=256, result_words=16,
                                                baud=1_000_000)
    assert config.name == "host_rmc_r4_l8_gc64_gf8_sb1_w48_a256_r16"
    assert (config.baud, config.clock_hz, config.divisor) == (1_000_000, 25_000_000, 25)


@pytest.mark.parametrize("options, message", [
    ({"rows": 0}, r"^rows must be a positive integer, not 0$"),
    ({"lanes": 5}, r"^lanes must divide fine_group \(16\), not 5$"),
    ({"weight_words": 100}, r"^weight_words must be a multiple of coarse_group / lanes \(16\), not 100$"),
    ({"baud": 4_000_000}, r"^clock_hz // baud must be at least 4 clock cycles per bit, "
                          r"not 12000000 // 4000000 = 3$"),
])
def test_board_configuration_invalid(options, message):
    with pytest.raises(ValueError, match=message):
        board_named("icebreaker").configure(**options)


def test_board_platform_constraint():
    board = board_named("icebreaker")
    platform = board.make_platform(30e6)
    assert platform.default_clk_frequency == 30e6
    assert platform.device == "iCE40UP5K"
    clock = platform.lookup("clk12", 0)
    assert clock.ios[0].names == ["35"]
    # The platform class itself keeps the oscillator frequency.
    assert board.platform().default_clk_frequency == 12e6
    with pytest.raises(ValueError, match=r"^constraint_hz must be a positive number, not 0$"):
        board.make_platform(0)


def test_board_top_interface_ports():
    class NoRx(wiring.Component):
        tx: Out(1)

        def elaborate(self, platform):
            return Module()

    with pytest.raises(TypeError, match=r"^interface must have a port rx: In\(1\)"):
        BoardTop(board_named("icebreaker").configure(), interface=NoRx())
    with pytest.raises(TypeError, match=r"^config must be a HostConfig, not RMCConfig$"):
        BoardTop(RMCConfig())


def test_build_clock_must_be_oscillator(tmp_path):
    board = board_named("icebreaker")
    with pytest.raises(ValueError, match=r"^config.clock_hz must be the ICEBreaker oscillator frequency "
                                         r"\(12000000 Hz\), because the design runs from it, not 24000000$"):
        build_bitstream(board, replace(board.configure(), clock_hz=24_000_000), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_build_name_must_be_identifier(tmp_path):
    board = board_named("icebreaker")
    with pytest.raises(ValueError, match=r"^name must be a Python identifier, not '\.\./top'$"):
        build_bitstream(board, board.configure(), tmp_path / "out", name="../top")
    assert list(tmp_path.iterdir()) == []


# --- the core timing harness -------------------------------------------------------------------------------

def test_core_harness_rejects_host_config():
    with pytest.raises(TypeError, match="config must be an RMCConfig, not HostConfig"):
        CoreTimingHarness(board_named("icebreaker").configure())


def test_core_harness_output_depends_on_the_core():
    """tx follows the core's results: a harness whose rx differs gives another tx sequence after the core's latency."""
    def tx_sequence(rx_pattern):
        harness = CoreTimingHarness(RMCConfig(rows=1, lanes=8))
        assert harness.name == "rmc_r1_l8_gc128_gf16_sb2_timing"
        values = []

        async def testbench(ctx):
            for cycle in range(400):
                ctx.set(harness.rx, rx_pattern(cycle))
                await ctx.tick()
                values.append(ctx.get(harness.tx))

        sim = Simulator(harness)
        sim.add_clock(1e-6)
        sim.add_testbench(testbench)
        sim.run()
        return values

    steady = tx_sequence(lambda cycle: 1)
    flipped = tx_sequence(lambda cycle: int(cycle != 5))
    # Every output beat takes a coarse group of 16 beats, so tx changes over the run.
    assert 0 < sum(steady) < len(steady)
    assert steady[:8] == flipped[:8]
    assert steady != flipped


@pytest.mark.parametrize("option", ["--weight-words", "--activation-words", "--result-words", "--baud"])
def test_build_command_core_only_rejects_host_options(option, capsys, tmp_path):
    status = main(["build", "--board", "icebreaker", "--core-only", option, "96", "--output", str(tmp_path / "out")])
    assert status == 2
    assert capsys.readouterr().err == (f"sevedo build: error: {option} sets the host interface, which --core-only "
                                       f"leaves out\n")
    assert not (tmp_path / "out").exists()


def test_build_command_core_only_design(monkeypatch, capsys, tmp_path):
    calls = []

    def record(board, config, output, **options):
        calls.append(options)
        return _fake_report(tmp_path, 33_000_000)

    monkeypatch.setattr(fpga, "build_bitstream", record)
    status = main(["build", "--board", "icebreaker", "--core-only", "--rows", "2", "--lanes", "16",
                   "--output", str(tmp_path)])
    assert status == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "configuration rmc_r2_l16_gc128_gf16_sb2_timing: the residual matrix core alone, rows 2, lanes 16, coarse "
        "group 128, fine group 16, shift bits 2, between a pseudo-random shift register and the tx pin; no host "
        "interface, no buffers")
    (options,) = calls
    assert options["name"] == "sevedo_icebreaker_core"
    assert isinstance(options["interface"], CoreTimingHarness)
    assert options["interface"].config == RMCConfig(rows=2, lanes=16)
    options["interface"]._MustUse__silence = True   # the stand-in build does not elaborate it


# --- sevedo build: options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arguments, message", [
    (["--freq", "0"], "sevedo build: error: --freq must be a positive number of MHz, not 0\n"),
    (["--freq", "inf"], "sevedo build: error: --freq must be a positive number of MHz, not inf\n"),
    (["--rows", "0"], "sevedo build: error: rows must be a positive integer, not 0\n"),
    (["--lanes", "3"], "sevedo build: error: lanes must divide fine_group (16), not 3\n"),
    (["--weight-words", "200"],
     "sevedo build: error: weight_words must be a multiple of coarse_group / lanes (16), not 200\n"),
    (["--result-words", "70000"],
     "sevedo build: error: result_words must be at most 65535 (a 16-bit protocol field), not 70000\n"),
])
def test_build_command_invalid_options(arguments, message, capsys, tmp_path):
    status = main(["build", "--board", "icebreaker", "--output", str(tmp_path / "out"), *arguments])
    assert status == 2
    assert capsys.readouterr().err == message
    assert not (tmp_path / "out").exists()


def test_build_command_unknown_board(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--board", "arty"])
    assert exit_info.value.code == 2
    assert "argument --board: invalid choice: 'arty'" in capsys.readouterr().err


def test_build_command_output_is_file(capsys, tmp_path):
    path = tmp_path / "file"
    path.write_text("kept\n")
    status = main(["build", "--board", "icebreaker", "--output", str(path)])
    assert status == 2
    assert capsys.readouterr().err == f"sevedo build: error: --output must be a folder, but {str(path)!r} is a file\n"
    assert path.read_text() == "kept\n"


def test_build_command_does_not_fit_status(monkeypatch, capsys, tmp_path):
    def does_not_fit(board, config, output, **options):
        raise DoesNotFitError(board.device, Utilization("logic cells", "ICESTORM_LC", 9681, 5280))

    monkeypatch.setattr(fpga, "build_bitstream", does_not_fit)
    status = main(["build", "--board", "icebreaker", "--rows", "2", "--lanes", "16", "--output", str(tmp_path)])
    assert status == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[:2] == [
        "board icebreaker: ICEBreaker, iCE40UP5K-SG48; the design runs at the 12 MHz oscillator, "
        "place and route aims at 30 MHz",
        "configuration host_rmc_r2_l16_gc128_gf16_sb2_w192_a1024_r32: rows 2, lanes 16, coarse group 128, fine "
        "group 16, shift bits 2; buffers of 192 weight, 1024 activation and 32 result words; UART 115200 bit/s "
        "(104 cycles per bit)",
    ]
    assert captured.err == ("sevedo build: error: the design does not fit the iCE40UP5K-SG48: it needs 9681 "
                            "logic cells (ICESTORM_LC), and the device has 5280 (183%)\n")


def _fake_report(tmp_path, fmax_hz):
    bitstream = tmp_path / "sevedo_icebreaker.bin"
    bitstream.write_bytes(bytes(1000))
    return fpga.BuildReport(
        board="icebreaker", device="iCE40UP5K-SG48", config="host_rmc_r1_l8_gc128_gf16_sb2_w192_a1024_r32",
        clock_hz=12_000_000, constraint_hz=30e6, fmax_hz=fmax_hz, clock="cd_sync.clk",
        resources=[Utilization("LC", "ICESTORM_LC", 4595, 5280), Utilization("DSP", "ICESTORM_DSP", 4, 8),
                   Utilization("IO", "SB_IO", 3, 39)],
        bitstream=bitstream, report_file=tmp_path / "sevedo_icebreaker.report.json", seconds={"synthesis": 53.5})


def test_build_command_report_lines(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(fpga, "build_bitstream", lambda *arguments, **options: _fake_report(tmp_path, 14_250_000))
    status = main(["build", "--board", "icebreaker", "--output", str(tmp_path), "--json"])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3:] == [
        "",
        "Fmax: 14.25 MHz for clock 'cd_sync.clk'; the 30 MHz constraint is missed, and the design meets timing "
        "at the 12 MHz it runs at",
        "",
        "resource cell               used / available percent",
        "LC       ICESTORM_LC        4595 / 5280        87.0%",
        "DSP      ICESTORM_DSP          4 / 8           50.0%",
        "IO       SB_IO                 3 / 39           7.7%",
        "",
        f"bitstream: {tmp_path / 'sevedo_icebreaker.bin'} (1000 bytes)",
        f"report: {tmp_path / 'sevedo_icebreaker.report.json'}",
        lines[-2],
        lines[-1],
    ]
    assert lines[-2].startswith("summary: icebreaker host_rmc_r1_l8_gc128_gf16_sb2_w192_a1024_r32: Fmax 14.25 MHz "
                                "(misses the 30 MHz goal); LC 87%, DSP 50%; built in ")
    assert json.loads(lines[-1])["fmax_hz"] == 14_250_000


def test_build_command_fmax_below_clock(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(fpga, "build_bitstream", lambda *arguments, **options: _fake_report(tmp_path, 10_510_000))
    status = main(["build", "--board", "icebreaker", "--output", str(tmp_path)])
    assert status == 1
    captured = capsys.readouterr()
    assert ("Fmax: 10.51 MHz for clock 'cd_sync.clk'; the 30 MHz constraint is missed, and the design misses "
            "timing at the 12 MHz it runs at") in captured.out.splitlines()
    assert captured.err == ("sevedo build: error: Fmax is below the 12 MHz that the bitstream runs at, so the "
                            "bitstream would not work\n")


# --- real builds of small stand-in designs -------------------------------------------------------------------

class Loopback(wiring.Component):
    """A stand-in for the host interface: ``tx`` is ``rx`` XOR the top bit of a counter of ``rx`` cycles."""
    rx: In(1)
    tx: Out(1)

    def elaborate(self, platform):
        m = Module()
        count = Signal(16)
        m.d.sync += count.eq(count + self.rx)
        m.d.comb += self.tx.eq(count[-1] ^ self.rx)
        return m


class Registers(wiring.Component):
    """A stand-in with ``count`` flip-flops: rotating 100-bit registers, each fed from ``rx``."""
    rx: In(1)
    tx: Out(1)

    def __init__(self, count):
        self._count = count
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        # Many short registers rather than one long shift register, whose
        # chain of cells exhausts the call stack of Yosys' WebAssembly build.
        registers = [Signal(100, name=f"register{index}") for index in range(self._count // 100)]
        for register in registers:
            m.d.sync += register.eq(Cat(register[-1] ^ self.rx, register[:-1]))
        m.d.comb += self.tx.eq(Cat(*(register[-1] for register in registers)).xor())
        return m


def _check_ice40_bitstream(data):
    # icepack writes a comment block (0xFF 0x00 ... 0x00 0xFF), then the synchronization word.
    assert data[:2] == b"\xff\x00"
    end = data.index(b"\x00\xff")
    assert data[end + 2:end + 6] == b"\x7e\xaa\x99\x7e"


def _check_ecp5_bitstream(data):
    # ecppack writes a comment block with the part name, then the preamble 0xFFFFBDB3.
    assert data[:2] == b"\xff\x00"
    end = data.index(b"\x00\xff")
    assert data[2:end].decode() == "Part: LFE5U-85F-6CABGA381"
    assert data[end + 2:end + 6] == b"\xff\xff\xbd\xb3"


@pytest.mark.parametrize("board_name, check, resources", [
    ("icebreaker", _check_ice40_bitstream, ["LC", "LUT4", "FF", "carry", "RAM", "SPRAM", "DSP", "IO"]),
    ("ulx3s-85f", _check_ecp5_bitstream, ["LUT4", "FF", "carry", "LUTRAM", "EBR", "DSP", "IO"]),
])
def test_build_stand_in_bitstream(board_name, check, resources, tmp_path):
    board = board_named(board_name)
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("kept\n")
    bitstream = output / f"sevedo_{board_name.replace('-', '_')}{board.bitstream_suffix}"
    bitstream.write_bytes(b"stale")
    (tmp_path / "outside.txt").write_text("kept\n")
    lines = []

    report = build_bitstream(board, board.configure(), output, interface=Loopback(), progress=lines.append)

    assert report.bitstream == bitstream.resolve()
    check(bitstream.read_bytes())
    assert [row.name for row in report.resources] == resources
    io = next(row for row in report.resources if row.name == "IO")
    # The clock, rx and tx pins: the design leaves other UART pins unused.
    assert io.used == 3
    assert report.constraint_hz == board.goal_hz
    assert report.clock_hz == board.oscillator_hz
    assert report.fmax_hz > board.oscillator_hz
    assert report.runs_at_clock
    assert report.clock.endswith("cd_sync.clk")
    assert json.loads(report.report_file.read_text()) == report.to_json()
    assert report.report_file.parent == bitstream.parent.resolve()
    assert lines[0] == f"elaborating sevedo_{board_name.replace('-', '_')} ..."
    assert lines[-1].startswith("bitstream: done in ")
    assert (output / "notes.txt").read_text() == "kept\n"
    assert (tmp_path / "outside.txt").read_text() == "kept\n"


def test_build_stand_in_does_not_fit(tmp_path):
    board = board_named("icebreaker")
    (tmp_path / "sevedo_icebreaker.bin").write_bytes(b"stale")
    with pytest.raises(DoesNotFitError) as error_info:
        build_bitstream(board, board.configure(), tmp_path, interface=Registers(6000), progress=lambda line: None)
    error = error_info.value
    assert error.device == "iCE40UP5K-SG48"
    assert (error.resource.name, error.resource.cell) == ("logic cells", "ICESTORM_LC")
    assert error.resource.available == 5280
    assert error.resource.used > 6000
    assert str(error) == (f"the design does not fit the iCE40UP5K-SG48: it needs {error.resource.used} logic cells "
                          f"(ICESTORM_LC), and the device has 5280 ({error.resource.percent:.0f}%)")
    # A failed build leaves no bitstream, not even the previous one.
    assert not (tmp_path / "sevedo_icebreaker.bin").exists()


# --- real builds of the host interface ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("board_name", sorted(BOARDS))
def test_build_command_host_interface(board_name, capsys, tmp_path):
    board = board_named(board_name)
    status = main(["build", "--board", board_name, "--output", str(tmp_path), "--json"])
    output = capsys.readouterr().out
    report = json.loads(output.splitlines()[-1])
    assert status == 0, output
    assert report["config"] == board.configure().name
    assert report["runs_at_clock"]
    bitstream = tmp_path / f"sevedo_{board_name.replace('-', '_')}{board.bitstream_suffix}"
    check = _check_ice40_bitstream if board.family == "ice40" else _check_ecp5_bitstream
    check(bitstream.read_bytes())
    assert f"bitstream: {bitstream} (" in output
    assert "summary: " in output


@pytest.mark.slow
def test_build_command_rows_16_not_fitting(capsys, tmp_path):
    status = main(["build", "--board", "icebreaker", "--rows", "16", "--output", str(tmp_path)])
    assert status == 1
    error = capsys.readouterr().err
    assert error.startswith("sevedo build: error: the design does not fit the iCE40UP5K-SG48: it needs ")
    assert " logic cells (ICESTORM_LC), and the device has 5280 (" in error


@pytest.mark.slow
def test_build_command_core_only(capsys, tmp_path):
    status = main(["build", "--board", "icebreaker", "--core-only", "--rows", "2", "--lanes", "16",
                   "--output", str(tmp_path), "--json"])
    output = capsys.readouterr().out
    report = json.loads(output.splitlines()[-1])
    assert status == 0, output
    assert report["config"] == "rmc_r2_l16_gc128_gf16_sb2_timing"
    _check_ice40_bitstream((tmp_path / "sevedo_icebreaker_core.bin").read_bytes())
