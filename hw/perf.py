"""Analytical cycle model of the heterogeneous core, and the per-layer counts that need its widths.

:func:`predict_cycles` takes a :class:`~hw.hetero.CoreConfig` and a layer
of T tokens, K inputs and N outputs. It returns the values of the core's
counters ``busy``, ``stall_input`` and ``stall_output`` over the layer, and
their sum, the cycles from the first activation beat to the last output.
It assumes that both streams run at full rate: an activation beat is
offered in every cycle and every output beat is taken at once. The weights
are loaded before the first activation beat and are not counted.

The model follows each token through the core's stages with max-plus
recurrences, one step per token, and each stage's duration is a closed form
of the shape and the configuration. Only when K equals the RMC's ``lanes``
does it step through the RMC and the combiner cycle by cycle, because
their stages then wait for the combiner. The equations are derived in ``docs/performance.md``, and
``tests/test_perf.py`` checks them against the RTL in the Amaranth simulator.

:func:`layer_energy` counts the operations of a layer as the core executes
them, buffer accesses included, and prices them with a
:class:`golden.energy.EnergyTable`.
"""

from dataclasses import dataclass

import numpy as np

from golden.energy import EnergyItem, EnergyReport, EnergyTable, arithmetic_energy
from golden.formats import FP16, FP32
from golden.lowrank import allocate_significands

from .hetero import CoreConfig
from .lvc import WIDTH_FIELD_BITS, LowRankVectorCore
from .pe_array import PEArray
from .rmc import core_latency

__all__ = [
    "default_significand_bits", "CyclePrediction", "predict_cycles",
    "Buffer", "core_buffers", "layer_energy",
]

# The online quantizer emits the first output beat of a coarse group this
# many cycles after the group's last input beat (hw.quantizer.HGQQuantizer).
QUANTIZER_LATENCY = 3

# FPDotLanes (hw.lvc) makes its sums valid this many cycles after the last
# slice cycle of the last beat: the multiplier's output register, then the adder's.
DOT_LATENCY = 2

# Far in the past: the time of an event that has not happened.
_NEVER = -(1 << 62)


def default_significand_bits(config):
    """Return the significand width of each of the core's ``rank`` components under its SVD-MP policy.

    Only the fixed-count policy (``svdmp.wide_count``) is defined without
    singular values: the ``wide_count`` first components get ``wide_bits``
    and the others ``narrow_bits``.

    Raises
    ------
    ValueError
        If ``config.svdmp`` uses the energy policy, which needs singular values.
    """
    svdmp = config.svdmp
    if svdmp.wide_count is None:
        raise ValueError("significand_bits must be given when svdmp uses the energy_fraction policy, "
                         "because that policy needs the layer's singular values")
    # Descending, all distinct: the allocation then depends on the count alone.
    sigma = np.arange(config.rank, 0, -1, dtype=np.float64)
    return allocate_significands(sigma, svdmp)


@dataclass(frozen=True)
class CyclePrediction:
    """Predicted counters of one layer on the heterogeneous core, at full rate on both streams.

    Attributes
    ----------
    tokens, k, n : int
        The layer shape.
    cycles : int
        Cycles from the one that takes the first activation beat to the
        one that loads the last output beat: ``busy + stall_input + stall_output``.
    busy : int
        Cycles in which the PE array takes a beat: ``T * (N / rows) * (K / lanes)``.
    stall_input : int
        Cycles in which a token is pending and the PE array has no beat.
    stall_output : int
        Cycles in which the feeder offers a beat that the RMC does not take.
    rmc_token_cycles : int
        RMC beats of one token: ``(N / rows) * (K / lanes)``.
    input_token_cycles : int
        Cycles per token in which the activation input, the quantizer and
        the LVC deliver tokens when the RMC never makes them wait. With a
        low-rank path this is the LVC's ``token_issue_cycles`` plus its
        ``TOKEN_GAP``, unless the activations arrive slower.
    prologue_cycles : int
        Cycles before the PE array takes its first beat, while the first
        token is quantized and its low-rank outputs computed.
    rmc_latency : int
        The RMC's latency, :func:`hw.rmc.core_latency`.
    """

    tokens: int
    k: int
    n: int
    cycles: int
    busy: int
    stall_input: int
    stall_output: int
    rmc_token_cycles: int
    input_token_cycles: int
    prologue_cycles: int
    rmc_latency: int

    @property
    def pe_utilization(self):
        """INT4 MACs over PEs times cycles, which equals ``busy / cycles``."""
        return self.busy / self.cycles

    @property
    def limit(self):
        """What keeps the utilization below 1, as one of five words.

        ``"combiner"``: the combiner takes one result every 2 cycles, and
        rows of one beat (K = lanes) come faster. ``"one token"``: a single
        token cannot overlap its prologue with another token's RMC beats.
        ``"input"``: the input side (in practice the LVC) needs more cycles
        per token than the RMC. ``"banks"``: tokens wait for their bank,
        which the token two before frees only when its last output leaves
        the RMC. ``"prologue"``: only the first token's prologue and the
        RMC's latency at the end are lost.
        """
        if self.stall_output:
            return "combiner"
        if self.tokens == 1:
            return "one token"
        if self.input_token_cycles > self.rmc_token_cycles:
            return "input"
        if self.stall_input > self.prologue_cycles + self.rmc_latency:
            return "banks"
        return "prologue"


def _check_tokens(tokens):
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < 1:
        raise ValueError(f"tokens must be a positive integer, not {tokens!r}")


def _component_slices(config, significand_bits):
    """Return the slices of each of the core's ``rank`` components, as the LVC issues them.

    Components beyond ``significand_bits`` have width 0 in the LVC's widths
    memory. A width of 0 gives 0 slices, which the multiplier runs as 1, so
    every count is clipped to 1 .. max_slices.
    """
    lvc = config.lvc_config()
    bits = np.zeros(config.rank, dtype=np.int64)
    given = np.asarray(significand_bits, dtype=np.int64)
    if given.ndim != 1 or len(given) > config.rank:
        raise ValueError(f"significand_bits must be a 1-D array of at most rank ({config.rank}) widths, "
                         f"not shape {given.shape}")
    bits[:len(given)] = given
    return np.clip(config.svdmp.slices(bits), 1, lvc.max_slices).astype(np.int64)


@dataclass(frozen=True)
class _LowRankTiming:
    """Slice counts of the LVC's beats for one token."""

    group_slices: tuple     # down-projection: the widest component of each group of lanes
    last_slices: int        # up-projection: the slices of the last component
    total_slices: int       # up-projection: all components' slices, the cycles of one output tile
    tiles: int              # up-projection output tiles, N / lvc_lanes


def _lowrank_timing(config, n, significand_bits):
    slices = _component_slices(config, significand_bits)
    lanes = config.lvc_lanes
    groups = -(-config.rank // lanes)
    padded = np.ones(groups * lanes, dtype=np.int64)
    padded[:len(slices)] = slices
    return _LowRankTiming(
        group_slices=tuple(int(s) for s in padded.reshape(groups, lanes).max(axis=1)),
        last_slices=int(slices[-1]),
        total_slices=int(slices.sum()),
        tiles=n // lanes,
    )


class _LowRankPath:
    """The LVC's progress, token by token, as a max-plus recurrence.

    Times are cycles. Activation ``k`` of a token enters the LVC at
    ``load(k) = L0 + k + k // lanes``: the core hands a beat's ``lanes``
    values to the LVC one per cycle and takes the next beat in the cycle
    after the last. The multiplier accepts a down-projection beat of group g
    every ``s_g`` cycles, and beat k no earlier than ``load(k) + 2`` (the
    fetch cycle, then the beat register).
    """

    def __init__(self, config, k, timing):
        self._k = k
        self._lanes = config.rmc.lanes
        self._timing = timing
        self.multiplier_free = _NEVER   # earliest accept of the next beat: last up beat + its slices
        self.previous_accept = _NEVER   # accept cycle of the last up beat
        self.last_fetch = _NEVER        # fetch cycle of the last down-projection beat

    def load(self, first_load, index):
        return first_load + index + index // self._lanes

    def run_token(self, first_load):
        """Advance by one token whose first activation enters at ``first_load``; return the done cycle.

        The done cycle is the first in which the core's ``lowrank_done``
        bit is set for the token.
        """
        k, timing = self._k, self._timing
        slices = timing.group_slices
        first = slices[0]
        # Group 0 waits for the activations: accept(j) = max(accept(j - 1) + s_0, load(j) + 2).
        # load(j) - s_0 * j is monotonic, so the maximum over j sits at an end.
        first_accept = max(self.multiplier_free, self.load(first_load, 0) + 2)

        def group0_accept(index):
            if index == 0:
                return first_accept
            return max(first_accept + first * index, self.load(first_load, index) + 2)

        group0_end = group0_accept(k - 1)
        # The other groups read activations that have arrived: s_g cycles per beat.
        last_down = group0_end + first + k * sum(slices[1:]) - slices[-1] if len(slices) > 1 else group0_end
        # A beat is fetched in the cycle that the multiplier accepts the one before it, or
        # in the cycle after its activation enters.
        if len(slices) > 1:
            # The beat before the last is in the last group, or ends the group before it when K = 1.
            before_last = last_down - (slices[-1] if k > 1 else slices[-2])
        else:
            before_last = group0_accept(k - 2) if k > 1 else self.previous_accept
        self.last_fetch = max(before_last, self.load(first_load, k - 1) + 1)

        # TOKEN_GAP cycles pass between the last down-projection slice and the first up-projection
        # beat: h is written DOT_LATENCY cycles after that slice, the first up-projection beat is
        # fetched in the next cycle and accepted by the multiplier one cycle later.
        first_up = last_down + slices[-1] + LowRankVectorCore.TOKEN_GAP
        self.multiplier_free = first_up + timing.tiles * timing.total_slices
        self.previous_accept = self.multiplier_free - timing.last_slices
        # The last output tile leaves DOT_LATENCY cycles after its last slice,
        # and the core's lowrank_done bit is set one cycle later.
        return self.multiplier_free + DOT_LATENCY + 1


class _InputSide:
    """The activation input, the quantizer and the LVC, token by token.

    :meth:`deliver` takes the cycle from which a token's bank is free and
    returns the first cycle in which the feeder finds both the token's codes
    and its low-rank outputs in the bank.
    """

    def __init__(self, config, k, timing):
        self._lanes = config.rmc.lanes
        self._k_beats = k // self._lanes
        self._coarse_beats = config.rmc.quant.coarse_group // self._lanes
        self._lowrank = _LowRankPath(config, k, timing) if timing is not None else None
        self._last_beat = None
        self.ready_cycles = []      # what deliver returned, per token

    def deliver(self, bank_free):
        lanes, k_beats = self._lanes, self._k_beats
        first = self._last_beat is None
        if self._lowrank is None:
            # One activation beat per cycle; Y_lr = +0 is ready as soon as the token starts.
            first_beat = 0 if first else max(self._last_beat + 1, bank_free)
            last_beat = first_beat + k_beats - 1
            lowrank_done = first_beat + 1
        else:
            # The serializer takes the next beat once it has handed all `lanes` values to the LVC,
            # and the LVC takes a new token's values once its down-projection has read the last one.
            first_beat = 0 if first else max(self._last_beat + lanes + 1, bank_free)
            first_load = max(first_beat + 1, self._lowrank.last_fetch + 1)
            last_beat = first_beat if k_beats == 1 else first_load + (k_beats - 1) * (lanes + 1) - 1
            lowrank_done = self._lowrank.run_token(first_load)
        self._last_beat = last_beat
        # The quantizer writes a token's last code beat QUANTIZER_LATENCY + coarse_beats - 1
        # cycles after its last input beat, and the core sets codes_done one cycle later.
        codes_done = last_beat + self._coarse_beats + QUANTIZER_LATENCY
        self.ready_cycles.append(max(codes_done, lowrank_done))
        return self.ready_cycles[-1]


def _input_token_cycles(config, k, timing):
    """Return the cycles per token in which the input side delivers tokens when no bank is ever busy."""
    side = _InputSide(config, k, timing)
    delivered = [side.deliver(0) for _ in range(3)]
    return delivered[2] - delivered[1]


def _feed_single_beat_rows(tokens, side, rmc_beats, latency):
    """Feed the RMC when every beat ends a row (K = lanes); return the release cycles and stall_output.

    Each beat gives a result, and the combiner takes at most one result
    every 2 cycles, so the RMC fills and stops taking beats. This regime
    depends on how the RMC's stages wait, so the model steps through it
    cycle by cycle. The PE array's ``PEArray.LATENCY`` stages and the shift
    scaler's register are stream registers. They take a beat whenever they
    are empty or pass their beat on. The coarse scaler's stages, the
    rest of ``latency``, move together, and only in cycles in which its
    output register is empty or read. A token's release is the cycle in
    which the combiner takes its last result.
    """
    stream_stages = PEArray.LATENCY + 1
    scaler = [None] * (latency - stream_stages - 1)
    stream = [None] * stream_stages
    feed = output = None            # the token of the beat or result there, or None
    ready_cycles, releases = side.ready_cycles, []
    left = [rmc_beats] * tokens     # results still to send, per token
    token = issued = stall_output = 0
    sent_before = False
    cycle = 0
    while len(releases) < tokens:
        # Token `token` uses the bank of token - 2, which its last result frees.
        if token < tokens and len(ready_cycles) == token and len(releases) >= token - 1:
            side.deliver(releases[token - 2] + 1 if token >= 2 else 0)

        # The combiner looks up its operands in the cycle after a send.
        send = output is not None and not sent_before
        advance = output is None or not sent_before
        ready = [False] * stream_stages + [advance]
        for stage in reversed(range(stream_stages)):
            ready[stage] = stream[stage] is None or ready[stage + 1]
        if feed is not None and not ready[0]:
            stall_output += 1
        issue = ((feed is None or ready[0]) and len(ready_cycles) > token and ready_cycles[token] <= cycle)

        if send:
            left[output] -= 1
            if not left[output]:
                releases.append(cycle)
        if advance:
            output = scaler[-1]
            scaler = [stream[-1]] + scaler[:-1]
        incoming = [feed] + stream[:-1]
        stream = [incoming[stage] if ready[stage] else stream[stage] for stage in range(stream_stages)]
        if feed is None or ready[0]:
            feed = token if issue else None
        if issue:
            issued += 1
            if issued == rmc_beats:
                token, issued = token + 1, 0
        sent_before = send
        cycle += 1
    return releases, stall_output


def _feed(tokens, side, rmc_beats, latency):
    """Feed the RMC when a row takes K / lanes >= 2 beats; return the release cycles.

    The RMC emits a result every ``K / lanes`` cycles, which the combiner
    takes at once, so the feeder issues one beat per cycle from the cycle
    in which a token is ready. A token's release is the cycle in which the
    combiner takes its last result.
    """
    releases = []
    issue_end = _NEVER
    for t in range(tokens):
        # Token t uses the bank of token t - 2, which its last result frees.
        ready = side.deliver(releases[t - 2] + 1 if t >= 2 else 0)
        first_issue = max(issue_end + 1, ready)
        issue_end = first_issue + rmc_beats - 1
        releases.append(issue_end + 1 + latency)
    return releases


def predict_cycles(config, tokens, k, n, significand_bits=None):
    """Predict the counters of the heterogeneous core for one layer at full rate.

    Parameters
    ----------
    config : CoreConfig
    tokens : int
        Tokens T, at least 1.
    k, n : int
        Inputs K and outputs N of the layer; :meth:`CoreConfig.check_shape` must accept them.
    significand_bits : array_like of int, optional
        Significand width of each low-rank component, at most ``config.rank``
        of them. Missing components count as width 0, as the LVC reads it
        from an unwritten widths memory. Default: :func:`default_significand_bits`.

    Returns
    -------
    CyclePrediction

    Raises
    ------
    ValueError
        If the core cannot run the shape, or a parameter is out of range.
    """
    if not isinstance(config, CoreConfig):
        raise TypeError(f"config must be a CoreConfig, not {type(config).__name__}")
    _check_tokens(tokens)
    config.check_shape(k, n)
    rmc = config.rmc
    k_beats = k // rmc.lanes
    rmc_beats = (n // rmc.rows) * k_beats
    latency = core_latency(rmc)
    timing = None
    if config.rank:
        if significand_bits is None:
            significand_bits = default_significand_bits(config)
        timing = _lowrank_timing(config, n, significand_bits)

    side = _InputSide(config, k, timing)
    if k_beats > 1:
        releases = _feed(tokens, side, rmc_beats, latency)
        stall_output = 0
    else:
        releases, stall_output = _feed_single_beat_rows(tokens, side, rmc_beats, latency)

    # Counted cycles run from the first activation beat (cycle 0) to the last output's send.
    cycles = releases[-1] + 1
    busy = tokens * rmc_beats
    return CyclePrediction(
        tokens=int(tokens), k=k, n=n, cycles=cycles, busy=busy, stall_input=cycles - busy - stall_output,
        stall_output=stall_output, rmc_token_cycles=rmc_beats,
        input_token_cycles=_input_token_cycles(config, k, timing), prologue_cycles=side.ready_cycles[0] + 1,
        rmc_latency=latency,
    )


@dataclass(frozen=True)
class Buffer:
    """One memory of the core, with its accesses during one layer.

    Attributes
    ----------
    name : str
        The memory's submodule name in the RTL, prefixed by its block.
    width, depth : int
        Word width in bits and words, as the core of the configuration builds them.
    reads, writes : int
        Word accesses that the layer's beats use. Weight writes are the loads
        before the first token.
    """

    name: str
    width: int
    depth: int
    reads: int
    writes: int


def core_buffers(config, tokens, k, n):
    """Return the memories of a core of ``config`` and their accesses for one layer of T, K and N.

    A read is counted once per beat that uses its word. The RTL enables some
    read ports in idle cycles too (the feeder and the LVC whenever they can
    advance, the combiner's low-rank and bias ports in every cycle), and
    those reads are not counted. Memories of width 0 (the shift memories
    without shift bits) are not built and not listed.

    Raises
    ------
    ValueError
        If the core cannot run the shape.
    """
    if not isinstance(config, CoreConfig):
        raise TypeError(f"config must be a CoreConfig, not {type(config).__name__}")
    _check_tokens(tokens)
    config.check_shape(k, n)
    rmc = config.rmc
    quant = rmc.quant
    rows, lanes = rmc.rows, rmc.lanes
    element, shift_bits = quant.element.bits, quant.shift_bits
    k_beats, tiles = k // lanes, n // rows
    fine, coarse = k // quant.fine_group, k // quant.coarse_group
    fine_per_row, coarse_per_row = config.max_k // quant.fine_group, config.max_k // quant.coarse_group
    rmc_beats = tokens * tiles * k_beats
    outputs = tokens * tiles

    buffers = [
        Buffer("weight_codes", rows * lanes * element, config.n_tiles * config.k_beats, rmc_beats, tiles * k_beats),
        Buffer("weight_shifts", rows * shift_bits, config.n_tiles * fine_per_row, rmc_beats, tiles * fine),
        Buffer("weight_scales", rows * FP16.width, config.n_tiles * coarse_per_row, rmc_beats, tiles * coarse),
        Buffer("weight_bias", rows * FP32.width, config.n_tiles, outputs, tiles),
        Buffer("bank_codes", lanes * element, 2 * config.k_beats, rmc_beats, tokens * k_beats),
        Buffer("bank_shifts", shift_bits, 2 * fine_per_row, rmc_beats, tokens * k_beats),
        Buffer("bank_scales", FP16.width, 2 * coarse_per_row, rmc_beats, tokens * k_beats),
        # The quantizer keeps two coarse groups of input beats and the fine-group maxima.
        Buffer("quantizer.beats", lanes * FP16.width + 1, 2 * (quant.coarse_group // lanes),
               tokens * k_beats, tokens * k_beats),
        Buffer("quantizer.fine_amax", FP16.width - 1, 2 * quant.fine_per_coarse, tokens * k_beats, tokens * fine),
    ]
    if config.rank:
        lvc = config.lvc_config()
        groups = lvc.groups
        lvc_tiles = n // lvc.lanes
        down_beats = tokens * k * groups
        up_beats = tokens * lvc_tiles * config.rank
        word = lvc.lanes * FP16.width
        buffers += [
            Buffer("bank_lowrank", lvc.lanes * FP32.width, 2 * (config.max_n // lvc.lanes),
                   outputs, tokens * lvc_tiles),
            Buffer("lvc.x", FP16.width, lvc.max_k, down_beats, tokens * k),
            Buffer("lvc.l2", word, groups * lvc.max_k, down_beats, groups * k),
            Buffer("lvc.l1", word, lvc.tiles * lvc.max_rank, up_beats, lvc_tiles * config.rank),
            Buffer("lvc.widths", lvc.lanes * WIDTH_FIELD_BITS, groups, down_beats + up_beats, groups),
            Buffer("lvc.h", word, groups, up_beats, tokens * groups),
        ]
    return tuple(buffer for buffer in buffers if buffer.width)


def layer_energy(config, tokens, k, n, significand_bits=None, *, table=None, bias=True):
    """Estimate the energy of one layer on a core of ``config``: arithmetic and buffer accesses.

    The arithmetic is :func:`golden.energy.arithmetic_energy` with the
    core's HGQ configuration and slice width. The buffer accesses are those
    of :func:`core_buffers`, priced per bit of an 8 KB SRAM by the table's
    ``buffer_read`` and ``buffer_write``. A larger array costs more per bit,
    so the buffer figures are low estimates for the large weight memories.

    Parameters
    ----------
    config : CoreConfig
    tokens, k, n : int
    significand_bits : array_like of int, optional
        The layer's component widths; default :func:`default_significand_bits`.
    table : golden.energy.EnergyTable, optional
        Default: the Horowitz 45 nm table.
    bias : bool
        Whether the layer adds a bias; the core always adds one, so the
        default counts that add.

    Returns
    -------
    golden.energy.EnergyReport
        Every figure is an estimate.
    """
    buffers = core_buffers(config, tokens, k, n)
    table = EnergyTable() if table is None else table
    if significand_bits is None:
        significand_bits = default_significand_bits(config) if config.rank else []
    report = arithmetic_energy(tokens, n, k, np.asarray(significand_bits, dtype=np.int64),
                               slice_bits=config.svdmp.slice_bits, quant=config.rmc.quant, bias=bias, table=table)
    items = []
    for buffer in buffers:
        items.append(EnergyItem("buffers", f"{buffer.name} read, {buffer.width} bits", buffer.reads,
                                table.buffer_read(buffer.width)))
        items.append(EnergyItem("buffers", f"{buffer.name} write, {buffer.width} bits", buffer.writes,
                                table.buffer_write(buffer.width)))
    return report + EnergyReport(items=tuple(item for item in items if item.count))
