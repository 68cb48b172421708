"""Parameters of the residual matrix core (RMC) and the payloads of its streams.

Number formats and integer widths come from :mod:`golden`; this module only
adds the array dimensions.
"""

from dataclasses import dataclass, field

from amaranth import signed, unsigned
from amaranth.lib import data

from golden.formats import FP16, FP32
from golden.hgq import HGQConfig
from golden.residual import accumulator_widths

__all__ = ["RMCConfig"]


@dataclass(frozen=True)
class RMCConfig:
    """Dimensions and numerics of one residual matrix core.

    The PE array has ``rows x lanes`` INT4 multipliers. Each row computes the
    dot product of one weight row (an output channel) with the activation
    vector, ``lanes`` elements per cycle. All rows share the activations.

    Parameters
    ----------
    rows : int
        Output channels computed in parallel.
    lanes : int
        Elements of K per row per cycle; must divide ``quant.fine_group``.
    quant : HGQConfig
        Group sizes and shift width; ``HGQConfig.conventional(G)`` builds the
        conventional design with one FP16 scale per group of G.

    Raises
    ------
    ValueError
        If a dimension is not a positive integer or ``lanes`` does not divide
        the fine group.
    """

    rows: int = 8
    lanes: int = 16
    quant: HGQConfig = field(default_factory=HGQConfig)

    def __post_init__(self):
        for name in ("rows", "lanes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(self.quant, HGQConfig):
            raise TypeError(f"quant must be an HGQConfig, not {type(self.quant).__name__}")
        if self.quant.fine_group % self.lanes:
            raise ValueError(
                f"lanes must divide fine_group ({self.quant.fine_group}), not {self.lanes}")

    @property
    def beats_per_fine_group(self):
        return self.quant.fine_group // self.lanes

    @property
    def beats_per_coarse_group(self):
        """Input beats per coarse group, ``C = coarse_group / lanes``.

        The shift scaler sends one coarse sum per C beats, so at one beat per
        cycle the coarse scaler receives one every C cycles.
        """
        return self.quant.coarse_group // self.lanes

    @property
    def scaler_lanes(self):
        """FP lanes of the coarse scaler, ``P = ceil(rows / C)``.

        Each lane has one INT-to-FP converter, one FP16 scale multiplier, one
        FP32 multiplier and one FP32 adder, and takes the rows of a coarse
        sum in turn. P lanes finish the ``rows`` rows in
        :attr:`scaler_cycles` ``<= C`` cycles, so the core keeps one beat
        per cycle. HGQ at the defaults (C = 8, rows <= 8) needs one lane; the
        conventional design at ``lanes = fine_group`` has C = 1 and one lane
        per row.
        """
        return -(-self.rows // self.beats_per_coarse_group)

    @property
    def scaler_cycles(self):
        """Cycles in which the coarse scaler's lanes take the rows of one coarse sum, ``ceil(rows / P)``."""
        return -(-self.rows // self.scaler_lanes)

    @property
    def widths(self):
        """Integer accumulator widths, derived in :func:`golden.residual.accumulator_widths`."""
        return accumulator_widths(self.quant)

    @property
    def name(self):
        """A short identifier, used for module and build directory names."""
        q = self.quant
        return f"rmc_r{self.rows}_l{self.lanes}_gc{q.coarse_group}_gf{q.fine_group}_sb{q.shift_bits}"

    def _group_fields(self):
        shift = unsigned(self.quant.shift_bits)
        return {
            "x_shift": shift,
            "w_shift": data.ArrayLayout(shift, self.rows),
            "x_scale": unsigned(FP16.width),
            "w_scale": data.ArrayLayout(unsigned(FP16.width), self.rows),
            "last": 1,
        }

    def beat_layout(self):
        """Return the layout of an input beat: ``lanes`` activation codes and ``rows x lanes`` weight codes.

        ``x_shift``/``w_shift`` are read on the last beat of each fine group
        and ``x_scale``/``w_scale`` (FP16 encodings) on the last beat of each
        coarse group. ``last`` marks the final beat of a row of K, which must
        end a coarse group.
        """
        element = signed(self.quant.element.bits)
        return data.StructLayout({
            "x": data.ArrayLayout(element, self.lanes),
            "w": data.ArrayLayout(data.ArrayLayout(element, self.lanes), self.rows),
            **self._group_fields(),
        })

    def fine_sum_layout(self):
        """Return the layout of a fine-group partial sum per row, with the group's shifts and scales."""
        return data.StructLayout({
            "psum": data.ArrayLayout(signed(self.widths.partial_sum), self.rows),
            **self._group_fields(),
        })

    def coarse_sum_layout(self):
        """Return the layout of an aligned coarse-group sum per row, with the group's scales."""
        fields = self._group_fields()
        return data.StructLayout({
            "acc": data.ArrayLayout(signed(self.widths.coarse_sum), self.rows),
            "x_scale": fields["x_scale"],
            "w_scale": fields["w_scale"],
            "last": 1,
        })

    def product_layout(self):
        """Return the layout of an FP32 product ``fp32(acc) * scale`` per row."""
        return data.StructLayout({
            "product": data.ArrayLayout(unsigned(FP32.width), self.rows),
            "last": 1,
        })

    def output_layout(self):
        """Return the layout of an output beat: one FP32 encoding per row."""
        return data.StructLayout({"y": data.ArrayLayout(unsigned(FP32.width), self.rows)})
