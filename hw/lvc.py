"""The low-rank vector core (LVC): the FP16 low-rank path with SVD-guided mixed precision.

The core computes :func:`golden.lowrank.lowrank_matmul` bit for bit, one
token at a time, on ``lanes`` FP32 accumulation lanes that share a broadcast
FP16 operand:

- :class:`SlicedMultiplier` multiplies a broadcast FP16 activation with one
  FP16 weight per lane, one ``slice_bits``-bit slice of the weight
  significands per cycle, so a product with a narrow component takes fewer
  cycles than one with a wide component.
- :class:`FPDotLanes` adds these exact FP32 products into one FP32 sum per
  lane, in the order of the beats.
- :class:`LowRankVectorCore` stores ``L2``, ``L1`` and the components'
  significand widths in memories, and runs the down-projection (lanes on
  components) and the up-projection (lanes on outputs) through one
  :class:`FPDotLanes`.
"""

from dataclasses import dataclass, field

import numpy as np
from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.back import verilog
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from golden.formats import FP16, FP32, FP32_CANONICAL_NAN
from golden.lowrank import SVDMPConfig

from .fp import FP32Adder, FP32ToFP16, count_leading_zeros, float_layout, unpack_float
from .pipeline import registered_output

__all__ = [
    "dot_beat_layout", "product_layout", "dot_output_layout", "load_layout", "LoadTarget",
    "max_slices_for", "SlicedMultiplier", "FPDotLanes", "LVCConfig", "LowRankVectorCore", "generate_verilog",
]

# Width of a significand-width entry in the widths memory: 0 to 11.
WIDTH_FIELD_BITS = bits_for(FP16.significand_bits)


def _check_integer(name, value, low, high=None):
    """Raise unless ``value`` is an integer in [low, high] (no upper bound when ``high`` is None)."""
    is_integer = isinstance(value, int) and not isinstance(value, bool)
    if high is None:
        if not is_integer or value < low:
            rule = "a positive integer" if low == 1 else f"an integer of at least {low}"
            raise ValueError(f"{name} must be {rule}, not {value!r}")
    elif not is_integer or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, not {value!r}")


def max_slices_for(slice_bits):
    """Return the number of slices that cover the whole FP16 significand: ``ceil(11 / slice_bits)``."""
    return -(-FP16.significand_bits // slice_bits)


def dot_beat_layout(lanes, max_slices):
    """Return the layout of an input beat of :class:`FPDotLanes` and :class:`SlicedMultiplier`.

    ``a`` is the broadcast FP16 operand and ``b`` one FP16 weight per lane.
    ``slices`` is the number of slices of the weight significands that the
    beat needs, the maximum over its lanes. ``first`` starts a new sum from
    +0, and ``last`` emits the sum after this beat's product.
    """
    return data.StructLayout({
        "a": unsigned(FP16.width),
        "b": data.ArrayLayout(unsigned(FP16.width), lanes),
        "slices": range(max_slices + 1),
        "first": 1,
        "last": 1,
    })


def product_layout(lanes):
    """Return the layout of an output beat of :class:`SlicedMultiplier`: one FP32 product per lane."""
    return data.StructLayout({
        "product": data.ArrayLayout(unsigned(FP32.width), lanes),
        "first": 1,
        "last": 1,
    })


def dot_output_layout(lanes):
    """Return the layout of an output beat of :class:`FPDotLanes` and :class:`LowRankVectorCore`."""
    return data.StructLayout({"y": data.ArrayLayout(unsigned(FP32.width), lanes)})


class LoadTarget(enum.Enum, shape=2):
    """Memory that a beat of the load stream of :class:`LowRankVectorCore` writes."""

    L2 = 0
    L1 = 1
    WIDTHS = 2


def load_layout(lanes, address_depth):
    """Return the layout of a load beat: a target memory, a word address and ``lanes`` 16-bit values."""
    return data.StructLayout({
        "target": LoadTarget,
        "address": range(max(address_depth, 2)),
        "data": data.ArrayLayout(unsigned(FP16.width), lanes),
    })


def _check_slicing(lanes, slice_bits, max_slices):
    _check_integer("lanes", lanes, 1)
    _check_integer("slice_bits", slice_bits, 1, FP16.significand_bits)
    _check_integer("max_slices", max_slices, 1, max_slices_for(slice_bits))


class SlicedMultiplier(wiring.Component):
    """Bit-sliced exact products of a broadcast FP16 operand with one FP16 weight per lane.

    Each lane's ``product`` equals NumPy ``np.float32(a) * np.float32(b)`` for
    the binary16 values ``a`` and ``b[lane]``, as in :func:`golden.lowrank.lowrank_matmul`,
    except that every NaN result is :data:`FP32_CANONICAL_NAN`. The product
    of two FP16 numbers is exact in FP32, so the unit never rounds.

    The 11-bit significand of ``b`` (hidden bit included) is cut into slices
    of ``slice_bits`` bits, most significant first, and padded with zeros
    below. A beat takes ``slices`` cycles: each cycle shifts the partial
    product left by ``slice_bits`` and adds the significand of ``a`` times
    the next slice. After ``n`` slices the partial product is the exact
    significand product when the weight significands have at most
    ``n * slice_bits`` significant bits, which :func:`golden.lowrank.round_significand`
    guarantees for a ``bits``-bit component and ``n = ceil(bits / slice_bits)``.
    Fewer slices drop the low bits of the weight. ``slices`` of 0 acts as 1,
    and values above ``max_slices`` act as ``max_slices``.

    The unit accepts a beat in the last slice cycle of the previous one, so it
    takes ``max(slices, 1)`` cycles per beat, and the products are valid on
    ``o`` in the cycle after the last slice. ``first`` and ``last`` pass
    through unchanged.

    Parameters
    ----------
    lanes : int
        Weights per beat, at least 1.
    slice_bits : int
        Significand bits per slice, 1 to 11.
    max_slices : int
        Maximum slices per beat, 1 to ``ceil(11 / slice_bits)``.
        The weights must have at most ``max_slices * slice_bits`` significant
        significand bits.

    Raises
    ------
    ValueError
        If a parameter breaks one of the rules above.

    Members
    -------
    i : ``In(stream.Signature(dot_beat_layout(lanes, max_slices)))``
    o : ``Out(stream.Signature(product_layout(lanes)))``
    """

    def __init__(self, lanes, slice_bits, max_slices):
        _check_slicing(lanes, slice_bits, max_slices)
        self._lanes = lanes
        self._slice_bits = slice_bits
        self._max_slices = max_slices
        super().__init__({
            "i": In(stream.Signature(dot_beat_layout(lanes, max_slices))),
            "o": Out(stream.Signature(product_layout(lanes))),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def slice_bits(self):
        return self._slice_bits

    @property
    def max_slices(self):
        return self._max_slices

    def elaborate(self, platform):
        m = Module()
        src = FP16
        slice_bits, max_slices = self._slice_bits, self._max_slices
        padded_width = slice_bits * max_slices
        partial_width = src.significand_bits + padded_width

        beat = Signal(self.i.payload.shape())
        busy = Signal()
        count = Signal(range(max_slices))
        output_free = ~self.o.valid | self.o.ready
        final = Signal()
        m.d.comb += [
            final.eq(busy & ((count + 1 >= beat.slices) | (count == max_slices - 1))),
            self.i.ready.eq(~busy | (final & output_free)),
        ]

        # The products of this beat leave in its last slice cycle. While the
        # output register stays full, the beat waits there with its partial products.
        step = busy & ~final
        emit = final & output_free
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(step):
            m.d.sync += count.eq(count + 1)
        with m.If(emit):
            m.d.sync += [
                busy.eq(0),
                count.eq(0),
                self.o.valid.eq(1),
                self.o.payload.first.eq(beat.first),
                self.o.payload.last.eq(beat.last),
            ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [beat.eq(self.i.payload), busy.eq(1), count.eq(0)]

        a = unpack_float(m, src, beat.a, "a")
        slices_done = Signal(range(max_slices + 1))
        m.d.comb += slices_done.eq(count + 1)

        for lane in range(self._lanes):
            b = unpack_float(m, src, beat.b[lane], f"b{lane}")
            padded = Signal(padded_width, name=f"padded_{lane}")
            if padded_width >= src.significand_bits:
                m.d.comb += padded.eq(b.significand << (padded_width - src.significand_bits))
            else:
                m.d.comb += padded.eq(b.significand >> (src.significand_bits - padded_width))
            # The slices from the most significant one down, so that `count` selects the next one.
            slices_first_to_last = Cat(padded.word_select(index, slice_bits) for index in reversed(range(max_slices)))
            weight_slice = Signal(slice_bits, name=f"slice_{lane}")
            m.d.comb += weight_slice.eq(slices_first_to_last.word_select(count, slice_bits))

            partial = Signal(partial_width, name=f"partial_{lane}")
            partial_next = Signal(partial_width, name=f"partial_next_{lane}")
            m.d.comb += partial_next.eq(Mux(count == 0, 0, partial << slice_bits)
                                        + a.significand * weight_slice)
            with m.If(step):
                m.d.sync += partial.eq(partial_next)

            packed = self._pack(m, lane, a, b, partial_next, slices_done)
            with m.If(emit):
                m.d.sync += self.o.payload.product[lane].eq(packed)
        return m

    def _pack(self, m, lane, a, b, partial, slices_done):
        """Return the FP32 encoding of the product whose significand after ``slices_done`` slices is ``partial``."""
        src, dst = FP16, FP32
        width = len(partial)

        # partial = sig_a * sig_b * 2**(slices_done * slice_bits - 11), and the
        # value is sig_a * sig_b * 2**(ea + eb - 2 * (bias + frac_bits)). After
        # shifting out the leading zeros, the top bit of `partial` is the
        # hidden bit, and its biased FP32 exponent is
        # ea + eb + exponent_offset - leading_zeros - slices_done * slice_bits.
        exponent_offset = (width - 1 + src.significand_bits
                           - 2 * (src.bias + src.frac_bits) + dst.bias)
        leading_zeros = Signal(range(width + 1), name=f"leading_zeros_{lane}")
        normalized = Signal(width, name=f"normalized_{lane}")
        exponent = Signal(range(dst.exp_max), name=f"exponent_{lane}")
        m.d.comb += [
            leading_zeros.eq(count_leading_zeros(partial)),
            normalized.eq(partial << leading_zeros),
            exponent.eq(a.exponent + b.exponent + exponent_offset - leading_zeros
                        - slices_done * self._slice_bits),
        ]
        # A nonzero product of two FP16 numbers lies in [2**-48, 2**32), in
        # the FP32 normal range, and has at most 22 significant bits.
        assert 2 * src.frac_bits <= dst.frac_bits, "a product would need rounding"
        smallest = 2 * (1 - src.bias - src.frac_bits) + dst.bias
        largest = 2 * (src.exp_max - 1 - src.bias) + 1 + dst.bias
        assert smallest >= 1, "a product would be subnormal"
        assert largest < dst.exp_max, "a product would overflow"

        fraction_bits = width - 1
        if fraction_bits >= dst.frac_bits:
            # The dropped low bits are zero: the product has at most 22 significant bits.
            fraction = normalized[fraction_bits - dst.frac_bits:fraction_bits]
        else:
            fraction = normalized[:fraction_bits] << (dst.frac_bits - fraction_bits)

        packed = Signal(dst.width, name=f"product_{lane}")
        result = float_layout(dst)(packed)
        sign = a.sign ^ b.sign
        with m.If(a.is_nan | b.is_nan | (a.is_zero & b.is_inf) | (a.is_inf & b.is_zero)):
            m.d.comb += packed.eq(FP32_CANONICAL_NAN)
        with m.Elif(a.is_inf | b.is_inf):
            m.d.comb += [
                result.sign.eq(sign),
                result.exponent.eq(dst.exp_max),
                result.fraction.eq(0),
            ]
        with m.Elif(partial == 0):
            m.d.comb += [
                result.sign.eq(sign),
                result.exponent.eq(0),
                result.fraction.eq(0),
            ]
        with m.Else():
            m.d.comb += [
                result.sign.eq(sign),
                result.exponent.eq(exponent),
                result.fraction.eq(fraction),
            ]
        return packed


class FPDotLanes(wiring.Component):
    """FP32 dot products on ``lanes`` lanes that share a broadcast FP16 operand.

    For every beat, each lane computes ``acc = (first ? +0 : acc) + a * b[lane]``:
    the exact product of :class:`SlicedMultiplier` and one FP32 add, rounded
    to nearest even by :class:`~hw.fp.FP32Adder`. This is the accumulation
    order of :func:`golden.lowrank.lowrank_matmul`: products in beat order,
    from +0. After a beat with ``last`` the unit emits the ``lanes`` sums.

    A beat takes ``max(slices, 1)`` cycles when both streams flow, and the
    sums are valid on ``o`` 2 cycles after the last slice of the last beat.

    Parameters
    ----------
    lanes : int
        Sums computed in parallel, at least 1.
    slice_bits : int
        Significand bits per multiplier slice, 1 to 11.
    max_slices : int
        Maximum slices per beat, 1 to ``ceil(11 / slice_bits)``.

    Raises
    ------
    ValueError
        If a parameter breaks one of the rules above.

    Members
    -------
    i : ``In(stream.Signature(dot_beat_layout(lanes, max_slices)))``
    o : ``Out(stream.Signature(dot_output_layout(lanes)))``
    """

    def __init__(self, lanes, slice_bits, max_slices):
        _check_slicing(lanes, slice_bits, max_slices)
        self._lanes = lanes
        self._slice_bits = slice_bits
        self._max_slices = max_slices
        super().__init__({
            "i": In(stream.Signature(dot_beat_layout(lanes, max_slices))),
            "o": Out(stream.Signature(dot_output_layout(lanes))),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def slice_bits(self):
        return self._slice_bits

    @property
    def max_slices(self):
        return self._max_slices

    def elaborate(self, platform):
        m = Module()
        multiplier = m.submodules.multiplier = SlicedMultiplier(
            self._lanes, self._slice_bits, self._max_slices)
        wiring.connect(m, wiring.flipped(self.i), multiplier.i)
        products = multiplier.o.payload

        transfer = registered_output(m, multiplier.o, self.o)
        for lane in range(self._lanes):
            add = m.submodules[f"add_{lane}"] = FP32Adder()
            total = Signal(FP32.width, name=f"total_{lane}")
            m.d.comb += [
                add.a.eq(Mux(products.first, 0, total)),
                add.b.eq(products.product[lane]),
            ]
            with m.If(transfer):
                m.d.sync += total.eq(add.y)
                with m.If(products.last):
                    m.d.sync += self.o.payload.y[lane].eq(add.y)
        with m.If(transfer & products.last):
            m.d.sync += self.o.valid.eq(1)
        return m


class Phase(enum.Enum, shape=2):
    """Beats that :class:`LowRankVectorCore` fetches next."""

    # Down-projection beats of the current token, lanes on components.
    DOWN = 0
    # None: all down-projection beats are fetched, and the last group of h
    # is not yet written.
    WAIT = 1
    # Up-projection beats, lanes on outputs.
    UP = 2


def _slices_of(bits, slice_bits, max_slices):
    """Return ``min(ceil(bits / slice_bits), max_slices)`` for an unsigned value ``bits``."""
    return sum(bits > index * slice_bits for index in range(max_slices))


def _maximum(values):
    values = list(values)
    while len(values) > 1:
        pairs = [Mux(values[i] > values[i + 1], values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]
        values = pairs + values[len(pairs) * 2:]
    return values[0]


@dataclass(frozen=True)
class LVCConfig:
    """Dimensions and slicing of one low-rank vector core.

    The memories are sized for ``max_rank`` components, activation vectors
    of ``max_k`` and ``max_n`` outputs. The runtime ``rank``, ``k`` and ``n``
    of :class:`LowRankVectorCore` may be smaller.

    Parameters
    ----------
    lanes : int
        Lanes of the :class:`FPDotLanes`: components of a down-projection
        beat and outputs of an up-projection beat. At least 1.
    max_rank : int
        Maximum number of components, at least 1.
    max_k : int
        Maximum length K of an activation vector, at least 1.
    max_n : int
        Maximum number of outputs N, at least 1.
    svdmp : SVDMPConfig
        Its ``slice_bits`` (1 to 11) sets the multiplier slice, and its
        ``wide_bits`` the most slices of a beat, ``ceil(wide_bits / slice_bits)``.
        The allocation policy is the compiler's business and is not used.

    Raises
    ------
    TypeError
        If ``svdmp`` is not an :class:`~golden.lowrank.SVDMPConfig`.
    ValueError
        If a parameter breaks one of the rules above.
    """

    lanes: int = 32
    max_rank: int = 32
    max_k: int = 1536
    max_n: int = 1536
    svdmp: SVDMPConfig = field(default_factory=SVDMPConfig)

    def __post_init__(self):
        _check_integer("lanes", self.lanes, 1)
        _check_integer("max_rank", self.max_rank, 1)
        _check_integer("max_k", self.max_k, 1)
        _check_integer("max_n", self.max_n, 1)
        if not isinstance(self.svdmp, SVDMPConfig):
            raise TypeError(f"svdmp must be an SVDMPConfig, not {type(self.svdmp).__name__}")
        _check_integer("svdmp.slice_bits", self.svdmp.slice_bits, 1, FP16.significand_bits)

    @property
    def max_slices(self):
        """Slices of a product with a wide component: ``ceil(svdmp.wide_bits / svdmp.slice_bits)``."""
        return int(self.svdmp.slices(self.svdmp.wide_bits))

    @property
    def groups(self):
        """Component groups of ``lanes`` at ``max_rank``."""
        return -(-self.max_rank // self.lanes)

    @property
    def tiles(self):
        """Output tiles of ``lanes`` at ``max_n``."""
        return -(-self.max_n // self.lanes)

    @property
    def address_depth(self):
        """Words of the deepest memory, which sets the width of the load address."""
        return max(self.groups * self.max_k, self.tiles * self.max_rank)

    @property
    def name(self):
        """A short identifier, used for module and build directory names."""
        return (f"lvc_l{self.lanes}_r{self.max_rank}_k{self.max_k}_n{self.max_n}"
                f"_s{self.svdmp.slice_bits}x{self.max_slices}")

    def l2_address(self, group, k):
        """Return the load address of the ``L2`` word of component group ``group`` at column ``k``."""
        return group * self.max_k + k

    def l1_address(self, tile, component):
        """Return the load address of the ``L1`` word of output tile ``tile`` at component ``component``."""
        return tile * self.max_rank + component

    def token_issue_cycles(self, bits, k, n):
        """Return the beat cycles of one token of widths ``bits`` (one per component), K and N.

        That is ``K * sum_g slices_g + ceil(N / lanes) * max(sum_i slices_i, 1)``,
        where ``slices_g`` is the largest slice count in component group g.
        """
        slices = np.clip(self.svdmp.slices(np.asarray(bits, dtype=np.int64)), 1, self.max_slices)
        groups = -(-len(slices) // self.lanes)
        padded = np.zeros(groups * self.lanes, dtype=np.int64)
        padded[:len(slices)] = slices
        down = k * int(padded.reshape(groups, self.lanes).max(axis=1).sum())
        tiles = -(-n // self.lanes)
        return down + tiles * max(int(slices.sum()), 1)


class LowRankVectorCore(wiring.Component):
    """The low-rank path ``Y_lr = fp16(X' L2^T) L1^T`` of :func:`golden.lowrank.lowrank_matmul`, per token.

    The core stores ``L2`` (r x K), ``L1`` (N x r) and the significand width
    of each component in memories that the ``load`` stream writes. For each
    token, ``i`` delivers the K FP16 activations, one per beat, and ``o``
    sends the N FP32 outputs in beats of ``lanes``, in ascending order.
    One :class:`FPDotLanes` does all the arithmetic:

    1. Down-projection: the components form groups of ``lanes``. For each
       group and each k ascending, one beat multiplies the broadcast
       activation ``x[k]`` with ``L2[i, k]`` of the group's components. A
       beat takes the largest slice count of the group, so groups of narrow
       components are fast. The sums are rounded to FP16 by
       :class:`~hw.fp.FP32ToFP16` and stored as h.
    2. Up-projection: the outputs form tiles of ``lanes``. For each tile and
       each component i ascending, one beat multiplies the broadcast
       ``h[i]`` with ``L1[n, i]`` of the tile's outputs and takes the slices
       of component i.

    The beats of a token take :meth:`LVCConfig.token_issue_cycles` cycles:
    ``K * sum_g slices_g + ceil(N / lanes) * sum_i slices_i``, where
    ``slices_g`` is the largest slice count of group g and ``slices_i =
    ceil(bits_i / slice_bits)``. With rank 0 there is one beat of +0 per
    output tile. With both streams at full rate and rank above 0,
    back-to-back tokens take ``TOKEN_GAP`` cycles more each, while the last
    group of h passes the pipeline before the up-projection reads it. A
    token alone takes ``TOKEN_LATENCY`` cycles more, from its first
    activation to its last output. The next token's activations load, one
    per cycle, once the down-projection has read the last one.

    ``rank``, ``k`` and ``n`` are runtime inputs, which must stay constant
    while a token is in the core: ``rank`` from 0 to ``max_rank`` (rank 0
    gives ``Y_lr = +0``), ``k`` from 1 to ``max_k`` and ``n`` from 1 to
    ``max_n``. The core does not check them.

    Memory words, each of ``lanes`` 16-bit values, written by a ``load``
    beat with the given ``target`` and ``address``:

    - ``LoadTarget.L2``, address ``g * max_k + k``: value ``l`` is the FP16
      encoding of ``L2[g * lanes + l, k]``.
    - ``LoadTarget.L1``, address ``t * max_rank + i``: value ``l`` is
      ``L1[t * lanes + l, i]``.
    - ``LoadTarget.WIDTHS``, address ``g``: value ``l`` is the significand
      width, 1 to ``svdmp.wide_bits``, of component ``g * lanes + l``.

    The weights must already be rounded to their widths
    (:func:`golden.lowrank.round_significand`), and a width that is too
    small drops weight bits. Values for components at or above ``rank`` are
    never used. The lanes of the last output tile above ``n`` compute with
    whatever ``L1`` contains there. ``load`` is always ready, and a write while
    a token is in the core changes that token's result.

    Parameters
    ----------
    config : LVCConfig

    Raises
    ------
    TypeError
        If ``config`` is not an :class:`LVCConfig`.

    Members
    -------
    i : ``In(stream.Signature(unsigned(16)))``
        FP16 activations.
    o : ``Out(stream.Signature(dot_output_layout(lanes)))``
        FP32 outputs.
    load : ``In(stream.Signature(load_layout(lanes, config.address_depth)))``
        Memory writes.
    rank : ``In(range(max_rank + 1))``
    k : ``In(range(max_k + 1))``
    n : ``In(range(max_n + 1))``
    busy_cycles : ``Out(32)``
        Cycles with a token in the core: from the cycle that accepts its
        first activation to the cycle that sends its last output.
    input_stall_cycles : ``Out(32)``
        Cycles in which the core waits for an activation of a token that
        has started.
    output_stall_cycles : ``Out(32)``
        Cycles in which ``o`` offers a beat that the sink does not accept.

    The counters start at 0 on reset and wrap modulo ``2**32``.
    """

    # Cycles per token beyond the beats at full rate, checked by tests/test_hw_lvc.py.
    TOKEN_GAP = 4
    TOKEN_LATENCY = 9

    def __init__(self, config=LVCConfig()):
        if not isinstance(config, LVCConfig):
            raise TypeError(f"config must be an LVCConfig, not {type(config).__name__}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(unsigned(FP16.width))),
            "o": Out(stream.Signature(dot_output_layout(config.lanes))),
            "load": In(stream.Signature(load_layout(config.lanes, config.address_depth))),
            "rank": In(range(config.max_rank + 1)),
            "k": In(range(config.max_k + 1)),
            "n": In(range(config.max_n + 1)),
            "busy_cycles": Out(32),
            "input_stall_cycles": Out(32),
            "output_stall_cycles": Out(32),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        lanes = cfg.lanes
        dot = m.submodules.dot = FPDotLanes(lanes, cfg.svdmp.slice_bits, cfg.max_slices)

        word = data.ArrayLayout(unsigned(FP16.width), lanes)
        width_word = data.ArrayLayout(unsigned(WIDTH_FIELD_BITS), lanes)
        memories = _Memories(
            x=Memory(shape=unsigned(FP16.width), depth=cfg.max_k, init=[]),
            l2=Memory(shape=word, depth=cfg.groups * cfg.max_k, init=[]),
            l1=Memory(shape=word, depth=cfg.tiles * cfg.max_rank, init=[]),
            widths=Memory(shape=width_word, depth=cfg.groups, init=[]),
            h=Memory(shape=word, depth=cfg.groups, init=[]),
        )
        for name, memory in vars(memories).items():
            m.submodules[f"{name}_memory"] = memory

        state = _IssueState(
            phase=Signal(Phase),
            loaded=Signal(range(cfg.max_k + 1)),
            group=Signal(range(cfg.groups)),
            index=Signal(range(cfg.max_k)),
            tile=Signal(range(cfg.tiles)),
            component=Signal(range(cfg.max_rank)),
            component_group=Signal(range(cfg.groups)),
            component_lane=Signal(range(lanes)),
            rank_zero=Signal(),
            x_available=Signal(),
            advance=Signal(),
        )
        # With rank 0 there are no down-projection beats, and the token's
        # activations are only read in and dropped.
        m.d.comb += [
            state.rank_zero.eq(self.rank == 0),
            state.x_available.eq(Mux(state.rank_zero, state.loaded >= self.k, state.loaded > state.index)),
        ]

        self._elaborate_load(m, memories)
        self._elaborate_activations(m, memories, state)
        h_complete, token_done = self._elaborate_drain(m, dot, memories, state)
        self._elaborate_issue(m, dot, memories, state, h_complete)
        self._elaborate_counters(m, state, token_done)
        return m

    def _elaborate_load(self, m, memories):
        """Write the ``load`` beats into the L2, L1 and widths memories."""
        beat = self.load.payload
        m.d.comb += self.load.ready.eq(1)
        targets = ((memories.l2, LoadTarget.L2), (memories.l1, LoadTarget.L1), (memories.widths, LoadTarget.WIDTHS))
        for memory, target in targets:
            port = memory.write_port()
            if memory is memories.widths:
                value = Cat(element[:WIDTH_FIELD_BITS] for element in beat.data)
            else:
                value = beat.data
            m.d.comb += [
                port.addr.eq(beat.address),
                port.data.eq(value),
                port.en.eq(self.load.valid & (beat.target == target)),
            ]

    def _elaborate_activations(self, m, memories, state):
        """Write the activations of a token into the x memory while it has room."""
        port = memories.x.write_port()
        accept = self.i.valid & self.i.ready
        m.d.comb += [
            self.i.ready.eq(state.loaded < self.k),
            port.addr.eq(state.loaded),
            port.data.eq(self.i.payload),
            port.en.eq(accept),
        ]
        with m.If(accept):
            m.d.sync += state.loaded.eq(state.loaded + 1)

    def _elaborate_drain(self, m, dot, memories, state):
        """Route the sums of :class:`FPDotLanes`: down-projection sums to h in FP16, the rest to ``o``.

        Returns ``(h_complete, token_done)``: high in the cycle that writes
        the last group of h of a token, and in the cycle that sends the
        last output beat of a token.
        """
        cfg = self._config
        lanes = cfg.lanes
        out_group = Signal(range(cfg.groups))
        out_tile = Signal(range(cfg.tiles))
        draining_up = Signal()
        is_down = Signal()
        m.d.comb += [
            is_down.eq(~state.rank_zero & ~draining_up),
            self.o.payload.eq(dot.o.payload),
            self.o.valid.eq(dot.o.valid & ~is_down),
            dot.o.ready.eq(is_down | self.o.ready),
        ]

        port = memories.h.write_port()
        converted = []
        for lane in range(lanes):
            convert = m.submodules[f"to_fp16_{lane}"] = FP32ToFP16()
            m.d.comb += convert.a.eq(dot.o.payload.y[lane])
            converted.append(convert.y)
        h_write = dot.o.valid & is_down
        h_complete = Signal()
        m.d.comb += [
            port.addr.eq(out_group),
            port.data.eq(Cat(converted)),
            port.en.eq(h_write),
            h_complete.eq(h_write & ((out_group + 1) * lanes >= self.rank)),
        ]
        with m.If(h_write):
            m.d.sync += out_group.eq(out_group + 1)
        with m.If(h_complete):
            m.d.sync += [out_group.eq(0), draining_up.eq(1)]

        token_done = Signal()
        send = self.o.valid & self.o.ready
        m.d.comb += token_done.eq(send & ((out_tile + 1) * lanes >= self.n))
        with m.If(send):
            m.d.sync += out_tile.eq(out_tile + 1)
        with m.If(token_done):
            m.d.sync += [out_tile.eq(0), draining_up.eq(0)]
        return h_complete, token_done

    def _elaborate_issue(self, m, dot, memories, state, h_complete):
        """Step through the beats of each token and fetch their operands from the memories.

        A beat is fetched in one cycle, when the memories' read ports take
        its addresses, and offered to :class:`FPDotLanes` in the next, from
        the read ports' data. ``state.advance`` is high when the offered
        beat, if any, leaves in this cycle, so that a new one can be fetched.
        """
        cfg = self._config
        lanes = cfg.lanes
        phase = state.phase
        beat_valid = Signal()
        m.d.comb += state.advance.eq(~beat_valid | dot.i.ready)

        last_group = (state.group + 1) * lanes >= self.rank
        last_index = state.index + 1 >= self.k
        last_component = state.rank_zero | (state.component + 1 >= self.rank)
        last_tile = (state.tile + 1) * lanes >= self.n

        fetch = Signal()
        with m.Switch(phase):
            with m.Case(Phase.DOWN):
                with m.If(state.rank_zero):
                    with m.If(state.x_available):
                        m.d.sync += [state.loaded.eq(0), phase.eq(Phase.UP)]
                with m.Else():
                    m.d.comb += fetch.eq(state.advance & state.x_available)
                    with m.If(fetch):
                        m.d.sync += state.index.eq(state.index + 1)
                        with m.If(last_index):
                            m.d.sync += [state.index.eq(0), state.group.eq(state.group + 1)]
                            with m.If(last_group):
                                # The last read of x: the next token may load.
                                m.d.sync += [state.group.eq(0), state.loaded.eq(0), phase.eq(Phase.WAIT)]
            with m.Case(Phase.WAIT):
                # The first up-projection read of h comes after this write.
                with m.If(h_complete):
                    m.d.sync += phase.eq(Phase.UP)
            with m.Case(Phase.UP):
                m.d.comb += fetch.eq(state.advance)
                with m.If(fetch):
                    m.d.sync += [
                        state.component.eq(state.component + 1),
                        state.component_lane.eq(state.component_lane + 1),
                    ]
                    with m.If(state.component_lane == lanes - 1):
                        m.d.sync += [
                            state.component_lane.eq(0),
                            state.component_group.eq(state.component_group + 1),
                        ]
                    with m.If(last_component):
                        m.d.sync += [
                            state.component.eq(0),
                            state.component_lane.eq(0),
                            state.component_group.eq(0),
                            state.tile.eq(state.tile + 1),
                        ]
                        with m.If(last_tile):
                            m.d.sync += [state.tile.eq(0), phase.eq(Phase.DOWN)]

        reads = _Reads(
            x=memories.x.read_port(),
            l2=memories.l2.read_port(),
            l1=memories.l1.read_port(),
            widths=memories.widths.read_port(),
            h=memories.h.read_port(),
        )
        up = phase == Phase.UP
        m.d.comb += [
            reads.x.addr.eq(state.index),
            reads.l2.addr.eq(state.group * cfg.max_k + state.index),
            reads.l1.addr.eq(state.tile * cfg.max_rank + state.component),
            reads.widths.addr.eq(Mux(up, state.component_group, state.group)),
            reads.h.addr.eq(state.component_group),
        ]
        for port in vars(reads).values():
            m.d.comb += port.en.eq(state.advance)

        # Beat fields that the read ports do not hold.
        beat_up = Signal()
        beat_zero = Signal()
        beat_first = Signal()
        beat_last = Signal()
        beat_lane = Signal(range(lanes))
        # Lanes of a down-projection beat whose component is below rank.
        beat_lanes_used = Signal(lanes)
        with m.If(state.advance):
            m.d.sync += [
                beat_valid.eq(fetch),
                beat_up.eq(up),
                beat_zero.eq(state.rank_zero),
                beat_first.eq(Mux(up, state.component == 0, state.index == 0)),
                beat_last.eq(Mux(up, last_component, last_index)),
                beat_lane.eq(state.component_lane),
                beat_lanes_used.eq(Cat(state.group * lanes + lane < self.rank for lane in range(lanes))),
            ]

        slice_bits, max_slices = cfg.svdmp.slice_bits, cfg.max_slices
        down_slices = _maximum(
            Mux(beat_lanes_used[lane], _slices_of(reads.widths.data[lane], slice_bits, max_slices), 0)
            for lane in range(lanes))
        up_slices = _slices_of(reads.widths.data[beat_lane], slice_bits, max_slices)

        beat = dot.i.payload
        m.d.comb += dot.i.valid.eq(beat_valid)
        # Every field of the beat is assigned in each branch of one If chain,
        # so that Yosys emits one process that Icarus runs at time zero.
        with m.If(beat_zero):
            # Rank 0: one beat of +0 * +0 per output tile gives Y_lr = +0.
            m.d.comb += [
                beat.a.eq(0),
                beat.b.eq(0),
                beat.slices.eq(1),
                beat.first.eq(beat_first),
                beat.last.eq(beat_last),
            ]
        with m.Elif(beat_up):
            m.d.comb += [
                beat.a.eq(reads.h.data[beat_lane]),
                beat.b.eq(reads.l1.data),
                beat.slices.eq(up_slices),
                beat.first.eq(beat_first),
                beat.last.eq(beat_last),
            ]
        with m.Else():
            m.d.comb += [
                beat.a.eq(reads.x.data),
                beat.b.eq(reads.l2.data),
                beat.slices.eq(down_slices),
                beat.first.eq(beat_first),
                beat.last.eq(beat_last),
            ]

    def _elaborate_counters(self, m, state, token_done):
        """Count busy cycles and the cycles stalled on each stream."""
        # A token in the core either fills the x memory or has beats in the
        # beat register and the 3 stages of FPDotLanes, so at most 5 are.
        tokens_in_core = Signal(range(8))
        token_start = self.i.valid & self.i.ready & (state.loaded == 0)
        m.d.sync += tokens_in_core.eq(tokens_in_core + token_start - token_done)

        waiting_for_input = ((state.phase == Phase.DOWN) & (state.loaded != 0)
                             & ~state.x_available & state.advance)
        with m.If((tokens_in_core != 0) | token_start):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
        with m.If(waiting_for_input):
            m.d.sync += self.input_stall_cycles.eq(self.input_stall_cycles + 1)
        with m.If(self.o.valid & ~self.o.ready):
            m.d.sync += self.output_stall_cycles.eq(self.output_stall_cycles + 1)


@dataclass(frozen=True)
class _Memories:
    """The memories of :class:`LowRankVectorCore`: activations, factors, widths and h."""

    x: Memory
    l2: Memory
    l1: Memory
    widths: Memory
    h: Memory


@dataclass(frozen=True)
class _Reads:
    """One read port of each of the :class:`_Memories`, all driven by the beat fetch."""

    x: ReadPort
    l2: ReadPort
    l1: ReadPort
    widths: ReadPort
    h: ReadPort


@dataclass(frozen=True)
class _IssueState:
    """Signals shared by the sections of :meth:`LowRankVectorCore.elaborate`."""

    phase: Signal
    # Activations of the current token in the x memory, 0 to K.
    loaded: Signal
    # Down-projection position: component group and k.
    group: Signal
    index: Signal
    # Up-projection position: output tile and component, with the component's
    # group and lane.
    tile: Signal
    component: Signal
    component_group: Signal
    component_lane: Signal
    rank_zero: Signal
    # High when the x memory contains the activation of the next
    # down-projection beat. With rank 0, high when it contains all K activations.
    x_available: Signal
    advance: Signal


def generate_verilog(config=LVCConfig(), name=None):
    """Return the Verilog text of a :class:`LowRankVectorCore` of ``config`` with top module ``name``.

    The ports are ``clk``, ``rst``, the streams ``i``, ``o`` and ``load``
    (``i__payload``, ``i__valid``, ``i__ready`` and so on), the inputs
    ``rank``, ``k`` and ``n``, and the three counters. Payloads are packed
    as their layouts, first field in the least significant bits.
    """
    return verilog.convert(LowRankVectorCore(config), name=name or config.name)
