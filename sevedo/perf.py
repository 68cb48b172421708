"""Subcommands of `sevedo`: perf, the cycle model and the energy estimates of transformer layers."""

import json
import math
from dataclasses import dataclass

__all__ = ["add_commands", "Workload", "WORKLOADS"]


@dataclass(frozen=True)
class Workload:
    """The linear layers of one transformer block at one token count.

    Attributes
    ----------
    name : str
    tokens : int
    layers : tuple of (str, int, int, int)
        Name, count per block, K and N of each distinct layer shape.
    """

    name: str
    tokens: int
    layers: tuple


_MINILM = (("attn q/k/v/out", 4, 384, 384), ("ffn in", 1, 384, 1536), ("ffn out", 1, 1536, 384))
_VIT = (("attn q/k/v/out", 4, 768, 768), ("mlp fc1", 1, 768, 3072), ("mlp fc2", 1, 3072, 768))
_LLAMA = (("attn q/k/v/o", 4, 4096, 4096), ("mlp gate/up", 2, 4096, 11008), ("mlp down", 1, 11008, 4096))

# all-MiniLM-L6-v2 on the default text of `sevedo run` (59 tokens), ViT-Base/16
# on a 224 x 224 image (196 patches and the class token), and Llama-2-7B on a
# 128-token prompt and on one generated token.
WORKLOADS = (
    Workload("MiniLM-L6", 59, _MINILM),
    Workload("ViT-Base", 197, _VIT),
    Workload("Llama2-7B prefill", 128, _LLAMA),
    Workload("Llama2-7B decode", 1, _LLAMA),
)

UNIT_TITLES = {
    "pe_array": "PE array", "shift_scaler": "shift sc.", "coarse_scaler": "coarse sc.", "combiner": "combiner",
    "lvc": "LVC", "quantizer": "quantizer", "buffers": "buffers",
}


def add_commands(commands):
    """Add this module's subcommands to the commands subparsers of `sevedo`."""
    from .cli import _add_config_options, _add_wide_count_option

    perf = commands.add_parser(
        "perf", help="predict cycles, PE utilization and energy of transformer layers on the core",
        description="Predict the cycles and the PE utilization of the heterogeneous core with its analytical "
                    "cycle model, and estimate the energy of each layer from per-operation energies "
                    "(default: Horowitz, ISSCC 2014, 45 nm). Without --shape it runs the linear layers of "
                    "one block of MiniLM-L6, ViT-Base and Llama2-7B (prefill and decode). Energy figures "
                    "are estimates. Exits with 2 on invalid options.")
    _add_config_options(perf)
    perf.add_argument("--rank", type=int, default=32, help="rank of the low-rank path (default 32)")
    _add_wide_count_option(perf)
    perf.add_argument("--lvc-lanes", type=int, default=32,
                      help="FP lanes of the low-rank vector core; N must be a multiple of it (default 32)")
    perf.add_argument("--shape", action="append", metavar="T,K,N",
                      help="a layer of T tokens, K inputs and N outputs instead of the model blocks; repeat "
                           "for more layers")
    perf.add_argument("--energy-table", metavar="FILE",
                      help="JSON object of energy entries in picojoules that replace the defaults "
                           "(see docs/performance.md)")
    perf.add_argument("--plots", metavar="FOLDER",
                      help="also draw utilization per layer, energy per unit and HGQ against conventional "
                           "dequantization energy as PNG files into FOLDER")
    perf.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    perf.set_defaults(handler=_command_perf)


def _parse_shape(text):
    parts = text.split(",")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"--shape must be three positive integers T,K,N, not {text!r}")
    return values


def _workloads(args):
    if not args.shape:
        return WORKLOADS
    layers = []
    for text in args.shape:
        tokens, k, n = _parse_shape(text)
        layers.append(Workload(f"T={tokens} K={k} N={n}", tokens, (("layer", 1, k, n),)))
    return tuple(layers)


def _core_for(args, k, n):
    """Return the core of the options, with memories for the layer (K rounded up as the core needs)."""
    from hw.hetero import CoreConfig
    from .cli import _core_config, _svdmp_config

    rmc = _core_config(args)
    coarse = rmc.quant.coarse_group
    n_multiple = math.lcm(rmc.rows, max(args.lvc_lanes, 1)) if args.rank else rmc.rows
    # Memories at least as large as the layer, so that CoreConfig.check_shape names an unfit K or N.
    max_k = max(1, -(-k // coarse)) * coarse
    max_n = max(1, -(-n // n_multiple)) * n_multiple
    config = CoreConfig(rmc=rmc, rank=args.rank, lvc_lanes=args.lvc_lanes, svdmp=_svdmp_config(args),
                        max_k=max_k, max_n=max_n)
    config.check_shape(k, n)
    return config


def _evaluate_layer(args, tokens, k, n, table):
    """Return the prediction, the energy, and the HGQ-against-conventional and SVD-MP ratios of one layer."""
    import numpy as np

    from golden.energy import arithmetic_energy
    from golden.formats import FP16
    from golden.hgq import HGQConfig
    from hw.perf import default_significand_bits, layer_energy, predict_cycles

    config = _core_for(args, k, n)
    bits = default_significand_bits(config) if config.rank else np.zeros(0, dtype=np.int64)
    prediction = predict_cycles(config, tokens, k, n, bits)
    energy = layer_energy(config, tokens, k, n, bits, table=table)
    quant = config.rmc.quant
    conventional = arithmetic_energy(tokens, n, k, bits, slice_bits=config.svdmp.slice_bits,
                                     quant=HGQConfig.conventional(quant.fine_group), table=table)
    wide_bits = np.full(len(bits), FP16.significand_bits)
    return {
        "prediction": prediction, "energy": energy, "conventional": conventional,
        "all_wide_prediction": predict_cycles(config, tokens, k, n, wide_bits),
        "all_wide_energy": layer_energy(config, tokens, k, n, wide_bits, table=table),
    }


@dataclass
class _Totals:
    """Sums over the layers of a block, each layer counted as often as the block has it."""

    cycles: int = 0
    busy: int = 0
    all_wide_cycles: int = 0
    energy: object = None
    conventional: object = None
    all_wide_energy: object = None

    def add(self, result, count):
        for _ in range(count):
            self.cycles += result["prediction"].cycles
            self.busy += result["prediction"].busy
            self.all_wide_cycles += result["all_wide_prediction"].cycles
            for name in ("energy", "conventional", "all_wide_energy"):
                value = result[name]
                setattr(self, name, value if getattr(self, name) is None else getattr(self, name) + value)


def _layer_json(name, count, result):
    prediction, energy = result["prediction"], result["energy"]
    return {
        "layer": name, "count": count, "tokens": prediction.tokens, "k": prediction.k, "n": prediction.n,
        "cycles": prediction.cycles, "busy_cycles": prediction.busy,
        "stall_input_cycles": prediction.stall_input, "stall_output_cycles": prediction.stall_output,
        "prologue_cycles": prediction.prologue_cycles, "rmc_token_cycles": prediction.rmc_token_cycles,
        "input_token_cycles": prediction.input_token_cycles, "pe_utilization": prediction.pe_utilization,
        "rmc_latency": prediction.rmc_latency, "limit": prediction.limit,
        "energy_estimate_uj": energy.picojoules / 1e6,
        "tops_per_watt_estimate": energy.tops_per_watt,
    }


def _block_json(totals):
    energy = totals.energy
    units = energy.unit_picojoules()
    arithmetic = energy.picojoules - units["buffers"]
    return {
        "cycles": totals.cycles, "busy_cycles": totals.busy, "pe_utilization": totals.busy / totals.cycles,
        "energy_estimate_uj": energy.picojoules / 1e6,
        "unit_energy_estimate_uj": {unit: value / 1e6 for unit, value in units.items()},
        "tops_per_watt_estimate": energy.tops_per_watt,
        "arithmetic_tops_per_watt_estimate": energy.ops / arithmetic,
        "dequantization_ratio_estimate": energy.dequantization_picojoules / totals.conventional.dequantization_picojoules,
        "svdmp_lvc_energy_ratio_estimate": _ratio(units["lvc"], totals.all_wide_energy.unit_picojoules()["lvc"]),
        "svdmp_energy_ratio_estimate": energy.picojoules / totals.all_wide_energy.picojoules,
        "svdmp_cycle_ratio": totals.cycles / totals.all_wide_cycles,
    }


def _ratio(numerator, denominator):
    return numerator / denominator if denominator else None


def _describe_core(args):
    from .cli import _core_config, _svdmp_config

    rmc = _core_config(args)
    svdmp = _svdmp_config(args)
    quant = rmc.quant
    line = (f"core: {rmc.rows} x {rmc.lanes} INT4 PEs, coarse group {quant.coarse_group}, fine group "
            f"{quant.fine_group}, {quant.shift_bits} shift bits; ")
    if args.rank:
        wide = min(svdmp.wide_count, args.rank)
        line += (f"low-rank path of rank {args.rank} on {args.lvc_lanes} LVC lanes, {wide} components with "
                 f"{svdmp.wide_bits}-bit significands, {args.rank - wide} with {svdmp.narrow_bits}-bit")
    else:
        line += "no low-rank path (rank 0)"
    return line


def _print_layers(workloads, results):
    print(f"{'workload':<18} {'layer':<15} {'x':>2} {'T':>4} {'K':>6} {'N':>6} {'cycles':>10} {'util':>6} "
          f"{'stall in':>9} {'stall out':>9} {'limit':<9} {'energy uJ':>10} {'TOPS/W':>7}")
    for workload in workloads:
        for name, count, k, n in workload.layers:
            result = results[workload.name]["layers"][name]
            p, energy = result["prediction"], result["energy"]
            print(f"{workload.name:<18} {name:<15} {count:>2} {p.tokens:>4} {k:>6} {n:>6} {p.cycles:>10} "
                  f"{p.pe_utilization:>6.1%} {p.stall_input:>9} {p.stall_output:>9} {p.limit:<9} "
                  f"{energy.picojoules / 1e6:>10.2f} {energy.tops_per_watt:>7.2f}")


def _print_blocks(workloads, results):
    print("per block, each layer times its count x; share of the energy per unit, total energy, and TOPS/W of "
          "all units and of the arithmetic alone (arith.); all estimates")
    units = list(UNIT_TITLES)
    print(f"{'workload':<18} {'cycles':>11} {'util':>6} " + " ".join(f"{UNIT_TITLES[u]:>10}" for u in units)
          + f" {'total uJ':>10} {'TOPS/W':>7} {'arith.':>7}")
    for workload in workloads:
        block = results[workload.name]["block"]
        shares = block["unit_energy_estimate_uj"]
        total = block["energy_estimate_uj"]
        print(f"{workload.name:<18} {block['cycles']:>11} {block['pe_utilization']:>6.1%} "
              + " ".join(f"{shares[u] / total:>10.1%}" for u in units)
              + f" {total:>10.1f} {block['tops_per_watt_estimate']:>7.2f} "
              f"{block['arithmetic_tops_per_watt_estimate']:>7.2f}")


def _print_ratios(workloads, results, conventional_group):
    print("dequantization energy (shift scaler and coarse scaler) against one FP16 scale per fine group, and "
          "SVD-MP against a low-rank path with all components wide; energy ratios are estimates")
    print(f"{'workload':<18} {'dequantization energy':>22} {'SVD-MP / all-wide low-rank path':>44}")
    conventional = f"HGQ / conventional({conventional_group})"
    print(f"{'':<18} {conventional:>22} {'LVC energy':>14} {'block energy':>14} {'cycles':>14}")
    for workload in workloads:
        block = results[workload.name]["block"]
        lvc = block["svdmp_lvc_energy_ratio_estimate"]
        print(f"{workload.name:<18} {block['dequantization_ratio_estimate']:>22.3f} "
              f"{'-' if lvc is None else f'{lvc:.3f}':>14} {block['svdmp_energy_ratio_estimate']:>14.3f} "
              f"{block['svdmp_cycle_ratio']:>14.3f}")


def _command_perf(args):
    from golden.energy import ENERGY_SOURCE, EnergyTable, load_energy_table

    if args.rank < 0:
        raise ValueError(f"--rank must be a non-negative integer, not {args.rank}")
    workloads = _workloads(args)
    table = EnergyTable() if args.energy_table is None else load_energy_table(args.energy_table)
    results = {}
    for workload in workloads:
        totals = _Totals()
        layers = {}
        for name, count, k, n in workload.layers:
            layers[name] = _evaluate_layer(args, workload.tokens, k, n, table)
            totals.add(layers[name], count)
        results[workload.name] = {"layers": layers, "block": _block_json(totals)}

    print(_describe_core(args))
    source = "a table from " + args.energy_table if args.energy_table else ENERGY_SOURCE
    print("cycles: the analytical model of docs/performance.md, both streams at full rate; "
          f"energy: estimates from {source}")
    print()
    _print_layers(workloads, results)
    print()
    _print_blocks(workloads, results)
    print()
    _print_ratios(workloads, results, args.fine_group)
    print()
    parts = [f"{w.name} {results[w.name]['block']['pe_utilization']:.1%} PE utilization, "
             f"{results[w.name]['block']['tops_per_watt_estimate']:.2f} TOPS/W" for w in workloads]
    if args.plots:
        paths = _draw_plots(workloads, results, args.plots, args.fine_group)
        print("plots: " + ", ".join(str(path) for path in paths))
    print("summary (per block; energy figures are estimates): " + "; ".join(parts))
    if args.json:
        summary = {
            "config": {"rows": args.rows, "lanes": args.lanes, "coarse_group": args.coarse_group,
                       "fine_group": args.fine_group, "shift_bits": args.shift_bits, "rank": args.rank,
                       "lvc_lanes": args.lvc_lanes, "wide_count": _wide_count(args)},
            "energy_table": table.as_dict(), "energy_source": source,
            "workloads": [
                {"workload": w.name, "tokens": w.tokens,
                 "layers": [_layer_json(name, count, results[w.name]["layers"][name])
                            for name, count, _, _ in w.layers],
                 "block": results[w.name]["block"]}
                for w in workloads],
        }
        print(json.dumps(summary))
    return 0


PLOT_FILES = ("utilization.png", "energy_per_unit.png", "hgq_vs_conventional.png")


def _draw_plots(workloads, results, folder, conventional_group):
    """Draw the three figures of the report as PNG files in ``folder``; return their paths."""
    from pathlib import Path

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--plots must name a folder, but {folder} is a file")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in PLOT_FILES]

    labels, utilization = [], []
    for workload in workloads:
        for name, _, k, n in workload.layers:
            labels.append(f"{workload.name}\n{name} ({k}x{n})")
            utilization.append(100 * results[workload.name]["layers"][name]["prediction"].pe_utilization)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.8 * len(labels)), 4.5))
    axes.bar(range(len(labels)), utilization, color="tab:blue")
    axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("PE utilization (%)")
    axes.set_ylim(0, 100)
    axes.set_title("PE utilization per layer shape (cycle model)")
    figure.tight_layout()
    figure.savefig(paths[0], dpi=120)
    plt.close(figure)

    names = [workload.name for workload in workloads]
    figure, axes = plt.subplots(figsize=(8.5, 4.5))
    bottom = [0.0] * len(names)
    for unit, title in UNIT_TITLES.items():
        shares = [100 * results[name]["block"]["unit_energy_estimate_uj"][unit]
                  / results[name]["block"]["energy_estimate_uj"] for name in names]
        axes.bar(names, shares, bottom=bottom, label=title)
        bottom = [b + s for b, s in zip(bottom, shares)]
    axes.set_ylabel("share of the block's energy (%), estimate")
    axes.set_title("Energy per unit, one transformer block (Horowitz 45 nm estimates)")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(paths[1], dpi=120)
    plt.close(figure)

    ratios = [results[name]["block"]["dequantization_ratio_estimate"] for name in names]
    figure, axes = plt.subplots(figsize=(7.0, 4.0))
    positions = range(len(names))
    axes.bar([p - 0.2 for p in positions], [100.0] * len(names), width=0.4,
             label=f"conventional, one FP16 scale per {conventional_group}")
    axes.bar([p + 0.2 for p in positions], [100 * r for r in ratios], width=0.4, label="HGQ")
    axes.set_xticks(list(positions), names)
    axes.set_ylabel("dequantization energy (% of conventional), estimate")
    axes.set_ylim(0, 125)
    axes.set_title("Dequantization energy: HGQ against conventional groups")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(paths[2], dpi=120)
    plt.close(figure)
    return paths


def _wide_count(args):
    from .cli import _svdmp_config

    return _svdmp_config(args).wide_count
