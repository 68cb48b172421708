"""Subcommands of `sevedo`: build, which makes a bitstream of the host interface for an FPGA board."""

import json
import math
import sys
import time
from pathlib import Path

__all__ = ["add_commands"]

# The boards of hw.board.BOARDS, listed here so that `sevedo --help` need not import Amaranth.
BOARD_NAMES = ("icebreaker", "ulx3s-85f")

OVERRIDES = ("rows", "lanes", "coarse_group", "fine_group", "shift_bits", "weight_words", "activation_words",
             "result_words", "baud")


def add_commands(commands):
    """Add this module's subcommands to the commands subparsers of `sevedo`."""
    build = commands.add_parser(
        "build", help="build a bitstream of the host interface and its core for an FPGA board",
        description="Synthesize, place and route the UART host interface with its residual matrix core for a "
                    "board, with Yosys and nextpnr (the YoWASP wheels), and report nextpnr's Fmax and the "
                    "device utilization. The design runs at the board's oscillator frequency; --freq only "
                    "sets the timing goal of place and route. Exits with 1 when the design does not fit, a "
                    "tool fails, or Fmax is below the oscillator frequency, and with 2 on invalid options.")
    build.add_argument("--board", required=True, choices=BOARD_NAMES, help="the board")
    build.add_argument("--freq", type=float, metavar="MHZ",
                       help="clock constraint for place and route in MHz (default: the board's goal, 30 for "
                            "icebreaker, 100 for ulx3s-85f)")
    build.add_argument("--output", "-o", metavar="DIR",
                       help="output folder (default build/boards/BOARD); only the build's own files in it are "
                            "replaced")
    build.add_argument("--seed", type=int, metavar="N", help="placement seed of nextpnr (default: nextpnr's)")
    build.add_argument("--json", action="store_true", help="print the JSON report as the last line")
    build.add_argument("--core-only", action="store_true",
                       help="build the residual matrix core alone, fed by a pseudo-random shift register and "
                            "reduced to the tx pin, to time it without the host interface; the bitstream "
                            "computes nothing useful")
    group = build.add_argument_group("configuration (default: the board's; see docs/boards.md)")
    group.add_argument("--rows", type=int, metavar="N", help="output channels computed in parallel")
    group.add_argument("--lanes", type=int, metavar="N", help="INT4 elements of K per row per cycle")
    group.add_argument("--coarse-group", type=int, metavar="N", help="elements per FP16 coarse scale")
    group.add_argument("--fine-group", type=int, metavar="N", help="elements per shift code")
    group.add_argument("--shift-bits", type=int, metavar="N", help="width of a fine shift code in bits")
    group.add_argument("--weight-words", type=int, metavar="N", help="depth of the weight buffer, in beats")
    group.add_argument("--activation-words", type=int, metavar="N", help="depth of the activation buffer, in beats")
    group.add_argument("--result-words", type=int, metavar="N", help="depth of the result buffer: the most tokens of a tile")
    group.add_argument("--baud", type=int, metavar="N", help="UART bit rate in bit/s (default 115200)")
    build.set_defaults(handler=_command_build)


def _describe(board, config, constraint_hz, output, harness=None):
    quant = config.rmc.quant
    core = (f"rows {config.rmc.rows}, lanes {config.rmc.lanes}, coarse group {quant.coarse_group}, fine group "
            f"{quant.fine_group}, shift bits {quant.shift_bits}")
    if harness is None:
        design = (f"configuration {config.name}: {core}; buffers of {config.weight_words} weight, "
                  f"{config.activation_words} activation and {config.result_words} result words; UART "
                  f"{config.baud} bit/s ({config.divisor} cycles per bit)")
    else:
        design = (f"configuration {harness.name}: the residual matrix core alone, {core}, between a "
                  f"pseudo-random shift register and the tx pin; no host interface, no buffers")
    return [
        f"board {board.name}: {board.title}, {board.device}; the design runs at the "
        f"{board.oscillator_hz / 1e6:g} MHz oscillator, place and route aims at {constraint_hz / 1e6:g} MHz",
        design,
        f"output folder: {output}",
    ]


def _timing_line(report):
    if report.fmax_hz is None:
        return "Fmax: nextpnr reported no clock"
    goal = "met" if report.meets_constraint else "missed"
    clock = "meets" if report.runs_at_clock else "misses"
    return (f"Fmax: {report.fmax_hz / 1e6:.2f} MHz for clock '{report.clock}'; the {report.constraint_hz / 1e6:g} "
            f"MHz constraint is {goal}, and the design {clock} timing at the {report.clock_hz / 1e6:g} MHz "
            f"it runs at")


def _resource_table(resources):
    lines = [f"{'resource':<8} {'cell':<16} {'used':>6} / {'available':<9} {'percent':>7}"]
    for row in resources:
        lines.append(f"{row.name:<8} {row.cell:<16} {row.used:>6} / {row.available:<9} {row.percent:6.1f}%")
    return lines


def _summary(report, elapsed):
    fmax = "no Fmax" if report.fmax_hz is None else f"Fmax {report.fmax_hz / 1e6:.2f} MHz"
    goal = "meets" if report.meets_constraint else "misses"
    # The summary leaves out the I/O pins and the resources that the design does not use.
    usage = ", ".join(f"{row.name} {row.percent:.0f}%" for row in report.resources if row.name != "IO" and row.used)
    return (f"{report.board} {report.config}: {fmax} ({goal} the {report.constraint_hz / 1e6:g} MHz goal); "
            f"{usage}; built in {elapsed:.0f} s")


def _command_build(args):
    from hw.board import CoreTimingHarness, board_named
    from sim.fpga import BuildError, build_bitstream

    board = board_named(args.board)
    if args.freq is not None and not (args.freq > 0 and math.isfinite(args.freq)):
        raise ValueError(f"--freq must be a positive number of MHz, not {args.freq:g}")
    constraint_hz = board.goal_hz if args.freq is None else args.freq * 1e6
    config = board.configure(**{name: getattr(args, name) for name in OVERRIDES})
    output = Path(args.output if args.output is not None else Path("build", "boards", board.name))
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output must be a folder, but {str(output)!r} is a file")

    harness = name = None
    if args.core_only:
        for option in ("weight_words", "activation_words", "result_words", "baud"):
            if getattr(args, option) is not None:
                raise ValueError(f"--{option.replace('_', '-')} sets the host interface, which --core-only "
                                 f"leaves out")
        harness = CoreTimingHarness(config.rmc)
        name = "sevedo_" + board.name.replace("-", "_") + "_core"

    started = time.perf_counter()
    for line in _describe(board, config, constraint_hz, output, harness):
        print(line)
    try:
        report = build_bitstream(board, config, output, constraint_hz=constraint_hz, seed=args.seed, name=name,
                                 interface=harness, progress=lambda line: print(line, flush=True))
    except BuildError as error:
        print(f"sevedo build: error: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started

    print()
    print(_timing_line(report))
    print()
    for line in _resource_table(report.resources):
        print(line)
    print()
    # The paths are shown below the output folder as the command line named it.
    size = report.bitstream.stat().st_size
    print(f"bitstream: {output / report.bitstream.name} ({size} bytes)")
    print(f"report: {output / report.report_file.name}")
    print(f"summary: {_summary(report, elapsed)}")
    if not report.runs_at_clock:
        print(f"sevedo build: error: Fmax is below the {report.clock_hz / 1e6:g} MHz that the bitstream runs at, "
              f"so the bitstream would not work", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json()))
    return 0 if report.runs_at_clock else 1
