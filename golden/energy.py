"""Energy estimates of a linear layer from operation counts and a per-operation energy table.

Every figure here is an estimate: an operation count times an energy per
operation. The default table is the 45 nm data of M. Horowitz,
"Computing's energy problem (and what we can do about it)", IEEE ISSCC
2014. It lists 8- and 32-bit integer adds and multiplies, FP16 and FP32
adds and multiplies, and a 64-bit read from an 8 KB SRAM. The other entries
are derived from those by the rules written next to them, and every rule is
an estimate too. A JSON file can override any entry (:func:`load_energy_table`).

:func:`arithmetic_energy` prices the arithmetic of one layer, counted by
:func:`golden.opcost.op_counts` and extended with the integer adds and
shifts at the widths of :func:`golden.residual.accumulator_widths` and with
the online quantizer's comparisons. Buffer accesses depend on the core's
memories and are counted in :mod:`hw.perf`.
"""

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from .formats import FP16, FP32
from .hgq import HGQConfig
from .opcost import op_counts
from .quantizer import MAGNITUDE_BITS
from .residual import accumulator_widths

__all__ = [
    "ENERGY_SOURCE", "UNITS", "EnergyTable", "load_energy_table", "EnergyItem", "EnergyReport",
    "arithmetic_energy",
]

ENERGY_SOURCE = ('M. Horowitz, "Computing\'s energy problem (and what we can do about it)", '
                 "IEEE ISSCC 2014; 45 nm")

# The units of the core, in the order of the reports.
UNITS = ("pe_array", "shift_scaler", "coarse_scaler", "combiner", "lvc", "quantizer", "buffers")

# Bits of the FP32 significand, hidden bit included: the rounding increment of a conversion to FP32.
_FP32_SIGNIFICAND_BITS = FP32.frac_bits + 1


@dataclass(frozen=True)
class EnergyTable:
    """Energy per operation, in picojoules; every figure is an estimate.

    The first nine entries are Horowitz's 45 nm figures (:data:`ENERGY_SOURCE`).
    The last four are derived from them when not given; the rule of each is
    in its description below. Width-dependent costs follow from the entries
    by the rules of the methods.

    Parameters
    ----------
    int8_add, int8_multiply, int32_add, int32_multiply : float
        Integer add and multiply: 0.03, 0.2, 0.1 and 3.1 pJ.
    fp16_add, fp16_multiply, fp32_add, fp32_multiply : float
        IEEE add and multiply: 0.4, 1.1, 0.9 and 3.7 pJ.
    sram_read_64bit : float
        A 64-bit read from an 8 KB SRAM array: 10 pJ.
    int4_multiply : float
        Derived: ``int8_multiply * (4 / 8)**2`` = 0.05 pJ. An array
        multiplier has one partial-product cell per pair of operand bits, so
        its energy scales about with the square of the width.
    int4_add : float
        Derived: ``int8_add * 4 / 8`` = 0.015 pJ. A ripple-carry adder has one
        full-adder cell per bit, so its energy scales about linearly with the width.
    mux_bit : float
        Derived: ``int8_add / 8 / 3`` = 0.00125 pJ, one bit of a 2:1
        multiplexer. The estimate is that it has about a third of the
        transistors of a full-adder bit.
    sram_write_64bit : float
        Derived: ``sram_read_64bit`` = 10 pJ. A write drives the same bit
        lines and word line as a read.

    Raises
    ------
    ValueError
        If an entry is not a positive finite number; the message names the entry.
    """

    int8_add: float = 0.03
    int8_multiply: float = 0.2
    int32_add: float = 0.1
    int32_multiply: float = 3.1
    fp16_add: float = 0.4
    fp16_multiply: float = 1.1
    fp32_add: float = 0.9
    fp32_multiply: float = 3.7
    sram_read_64bit: float = 10.0
    int4_multiply: float | None = None
    int4_add: float | None = None
    mux_bit: float | None = None
    sram_write_64bit: float | None = None

    def __post_init__(self):
        derived = {
            "int4_multiply": lambda: self.int8_multiply * (4 / 8) ** 2,
            "int4_add": lambda: self.int8_add * 4 / 8,
            "mux_bit": lambda: self.int8_add / 8 / 3,
            "sram_write_64bit": lambda: self.sram_read_64bit,
        }
        for name in self.base_entries():
            _check_entry(name, getattr(self, name))
        for name, rule in derived.items():
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, rule())
            else:
                _check_entry(name, value)

    @classmethod
    def base_entries(cls):
        """Return the names of the entries that come from the source, not from a rule."""
        return tuple(f.name for f in fields(cls) if f.default is not None)

    @classmethod
    def entries(cls):
        """Return the names of all entries."""
        return tuple(f.name for f in fields(cls))

    def as_dict(self):
        """Return every entry, derived ones included, as a dict of picojoules."""
        return {name: getattr(self, name) for name in self.entries()}

    def integer_add(self, width):
        """Energy of a ``width``-bit integer add (or comparison), linear in the width.

        Piecewise linear through the 4-, 8- and 32-bit entries; below 4 bits
        in proportion to ``int4_add``, above 32 bits to ``int32_add``.
        """
        _check_width(width)
        if width <= 4:
            return self.int4_add * width / 4
        if width <= 8:
            return self.int4_add + (self.int8_add - self.int4_add) * (width - 4) / 4
        if width <= 32:
            return self.int8_add + (self.int32_add - self.int8_add) * (width - 8) / 24
        return self.int32_add * width / 32

    def shift(self, width, stages):
        """Energy of a logarithmic shifter of ``width`` bits with ``stages`` levels of 2:1 multiplexers."""
        _check_width(width)
        return width * stages * self.mux_bit

    def int_to_fp32(self, width):
        """Energy of the conversion of a ``width``-bit integer to FP32.

        A leading-zero count, about a carry chain of the width, a normalizing
        shift of ``ceil(log2(width))`` levels and the rounding increment of
        the 24-bit significand.
        """
        return (self.integer_add(width) + self.shift(width, math.ceil(math.log2(width)))
                + self.integer_add(_FP32_SIGNIFICAND_BITS))

    def fp32_to_fp16(self):
        """Energy of the rounding of an FP32 value to FP16.

        An alignment shift of the 24-bit significand (5 levels, for FP16
        subnormals) and the rounding increment of the 11-bit significand.
        """
        return self.shift(_FP32_SIGNIFICAND_BITS, 5) + self.integer_add(FP16.significand_bits)

    def scale_product(self):
        """Energy of an exact FP16 x FP16 to FP32 product: an FP16 multiply, whose rounding it skips."""
        return self.fp16_multiply

    def multiplier_slice(self, slice_bits):
        """Energy of one slice of the bit-sliced FP16 multiplier, per lane.

        A slice multiplies the 11-bit activation significand with
        ``slice_bits`` bits of the weight significand: ``slice_bits / 11`` of
        the partial products of an FP16 multiply, so ``fp16_multiply *
        slice_bits / 11``.
        """
        _check_width(slice_bits)
        return self.fp16_multiply * slice_bits / FP16.significand_bits

    def buffer_read(self, width):
        """Energy of reading a ``width``-bit word: ``sram_read_64bit * width / 64``."""
        _check_width(width)
        return self.sram_read_64bit * width / 64

    def buffer_write(self, width):
        """Energy of writing a ``width``-bit word: ``sram_write_64bit * width / 64``."""
        _check_width(width)
        return self.sram_write_64bit * width / 64


def _check_entry(name, value):
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"energy entry {name} must be a positive finite number of picojoules, not {value!r}")


def _check_width(width):
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer of bits, not {width!r}")


def load_energy_table(path):
    """Return the default :class:`EnergyTable` with the entries of a JSON file replaced.

    The file contains one object that maps entry names to picojoules, for
    example ``{"int8_add": 0.025, "sram_read_64bit": 5}``. Derived entries
    that the file leaves out are derived from the file's base entries.

    Raises
    ------
    ValueError
        If the file cannot be read or parsed, is not an object, or names an
        unknown entry or a value that is not a positive number.
    """
    path = Path(path)
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"energy table {str(path)!r} cannot be read: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"energy table {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"energy table {str(path)!r} must contain a JSON object of entry names and "
                         f"picojoules, not a {type(overrides).__name__}")
    known = EnergyTable.entries()
    for name in overrides:
        if name not in known:
            raise ValueError(f"energy table {str(path)!r} has the unknown entry {name!r}; "
                             f"known entries: {', '.join(known)}")
    return EnergyTable(**overrides)


@dataclass(frozen=True)
class EnergyItem:
    """One kind of operation of a layer: its unit, a description, the count and the energy of each.

    Attributes
    ----------
    unit : str
        One of :data:`UNITS`.
    operation : str
        What is counted, with its width.
    count : int
    picojoules_each : float
        An estimate.
    """

    unit: str
    operation: str
    count: int
    picojoules_each: float

    @property
    def picojoules(self):
        """The estimated energy of all operations of this item."""
        return self.count * self.picojoules_each


@dataclass(frozen=True)
class EnergyReport:
    """Estimated energy of one layer, or of several, item by item.

    Reports add: ``a + b`` joins the items of both and adds their operations.

    Attributes
    ----------
    items : tuple of EnergyItem
    ops : int
        Operations of the layers, ``2 * T * N * K`` each (one multiply and one add per MAC).
    """

    items: tuple = ()
    ops: int = 0

    def __add__(self, other):
        if not isinstance(other, EnergyReport):
            return NotImplemented
        return EnergyReport(items=self.items + other.items, ops=self.ops + other.ops)

    def unit_picojoules(self):
        """Return the estimated energy of each unit of :data:`UNITS`, in picojoules."""
        totals = dict.fromkeys(UNITS, 0.0)
        for item in self.items:
            totals[item.unit] += item.picojoules
        return totals

    @property
    def picojoules(self):
        """The estimated energy of all items."""
        return sum(item.picojoules for item in self.items)

    @property
    def dequantization_picojoules(self):
        """The estimated energy of the shift scaler and the coarse scaler."""
        units = self.unit_picojoules()
        return units["shift_scaler"] + units["coarse_scaler"]

    @property
    def tops_per_watt(self):
        """Operations per picojoule, which equals tera-operations per second per watt; an estimate."""
        return self.ops / self.picojoules


def arithmetic_energy(tokens, n, k, significand_bits, *, slice_bits=4, quant=HGQConfig(), bias=True,
                      table=None):
    """Estimate the energy of the arithmetic of one layer, all units but the buffers.

    The counts are those of :func:`golden.opcost.op_counts` (same parameters),
    extended as follows, at the widths of
    :func:`golden.residual.accumulator_widths`:

    - PE array: one INT4 multiply per MAC and ``Gf - 1`` adds per fine group
      and output at the partial-sum width. The adder tree's first levels
      are narrower, so this is an upper estimate.
    - Shift scaler: one shift per fine group and output, of the aligned
      width, with as many multiplexer levels as the shift amount
      ``2 * smax`` has bits (none without shift bits), and ``Gc / Gf - 1``
      adds per coarse group at the coarse-sum width.
    - Coarse scaler: per coarse group and output, the conversion of the
      coarse sum to FP32, the FP16 scale product, an FP32 multiply and an
      FP32 add.
    - Combiner: the FP32 adds ``Y_lr + Y_res`` and ``+ b``.
    - LVC: the multiplier slices of each component and the FP32 adds of
      both projections, and the rounding of h to FP16 (``T * r``).
    - Quantizer, per activation: one comparison for the maxima, the shift
      of the FP16 value to its magnitude integer (5 levels), the fine shift
      (``shift_bits`` levels), and two comparisons (greater, equal) with each
      of the ``emax + 1`` thresholds. Per fine group, ``smax`` comparisons
      for its shift. Per coarse group, the ``emax + 1`` threshold products
      (one add each) and the division by ``emax``, one add of 4 bits per
      quotient bit of the 15-bit dividend.

    Parameters
    ----------
    tokens, n, k, significand_bits, slice_bits, quant, bias
        As for :func:`golden.opcost.op_counts`.
    table : EnergyTable, optional
        Default: ``EnergyTable()``, the Horowitz 45 nm figures.

    Returns
    -------
    EnergyReport
        With ``ops = 2 * T * N * K``; every figure is an estimate.

    Examples
    --------
    >>> report = arithmetic_energy(1, 8, 128, [11, 4])
    >>> round(report.unit_picojoules()["pe_array"], 3)
    91.2
    """
    table = EnergyTable() if table is None else table
    if not isinstance(table, EnergyTable):
        raise TypeError(f"table must be an EnergyTable, not {type(table).__name__}")
    counts = op_counts(tokens, n, k, significand_bits, slice_bits=slice_bits, quant=quant, bias=bias)
    items = [
        *_residual_items(counts, quant, table),
        EnergyItem("combiner", "FP32 add", counts.output_fp32_adds, table.fp32_add),
        EnergyItem("lvc", f"{slice_bits}-bit multiplier slice", counts.lowrank_slices,
                   table.multiplier_slice(slice_bits)),
        EnergyItem("lvc", "FP32 add", counts.lowrank_fp32_adds, table.fp32_add),
        EnergyItem("lvc", "FP32 to FP16", tokens * len(significand_bits), table.fp32_to_fp16()),
        *_quantizer_items(tokens, k, quant, table),
    ]
    return EnergyReport(items=tuple(item for item in items if item.count), ops=2 * tokens * n * k)


def _residual_items(counts, quant, table):
    """Return the items of the PE array, the shift scaler and the coarse scaler."""
    widths = accumulator_widths(quant)
    fine_groups = counts.shifts
    coarse_groups = counts.int_to_fp32
    shift_levels = (2 * quant.max_shift).bit_length()
    return [
        EnergyItem("pe_array", "INT4 multiply", counts.int4_macs, table.int4_multiply),
        EnergyItem("pe_array", f"{widths.partial_sum}-bit add", counts.int4_macs - fine_groups,
                   table.integer_add(widths.partial_sum)),
        EnergyItem("shift_scaler", f"{widths.aligned}-bit shift, {shift_levels} levels", fine_groups,
                   table.shift(widths.aligned, shift_levels)),
        EnergyItem("shift_scaler", f"{widths.coarse_sum}-bit add", fine_groups - coarse_groups,
                   table.integer_add(widths.coarse_sum)),
        EnergyItem("coarse_scaler", f"{widths.coarse_sum}-bit INT to FP32", coarse_groups,
                   table.int_to_fp32(widths.coarse_sum)),
        EnergyItem("coarse_scaler", "FP16 x FP16 scale product", counts.scale_products, table.scale_product()),
        EnergyItem("coarse_scaler", "FP32 multiply", counts.residual_fp32_multiplies, table.fp32_multiply),
        EnergyItem("coarse_scaler", "FP32 add", counts.residual_fp32_adds, table.fp32_add),
    ]


def _quantizer_items(tokens, k, quant, table):
    """Return the items of the online quantizer for ``tokens`` rows of K activations."""
    activations = tokens * k
    coarse_groups = tokens * (k // quant.coarse_group)
    thresholds = quant.element.max + 1
    compare_width = MAGNITUDE_BITS + 1 + quant.max_shift
    dividend_bits = FP16.significand_bits + 4
    items = [
        EnergyItem("quantizer", f"{FP16.width - 1}-bit maximum", activations, table.integer_add(FP16.width - 1)),
        EnergyItem("quantizer", f"{MAGNITUDE_BITS}-bit magnitude shift, 5 levels", activations,
                   table.shift(MAGNITUDE_BITS, 5)),
        EnergyItem("quantizer", f"{compare_width}-bit threshold comparison", activations * 2 * thresholds,
                   table.integer_add(compare_width)),
        EnergyItem("quantizer", f"{MAGNITUDE_BITS}-bit shift comparison",
                   tokens * (k // quant.fine_group) * quant.max_shift, table.integer_add(MAGNITUDE_BITS)),
        EnergyItem("quantizer", f"{compare_width}-bit threshold product", coarse_groups * thresholds,
                   table.integer_add(compare_width)),
        EnergyItem("quantizer", "4-bit division step", coarse_groups * dividend_bits, table.integer_add(4)),
    ]
    if quant.shift_bits:
        items.append(EnergyItem("quantizer", f"{compare_width}-bit fine shift, {quant.shift_bits} levels",
                                activations, table.shift(compare_width, quant.shift_bits)))
    return items
