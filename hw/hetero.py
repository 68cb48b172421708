"""The heterogeneous core: low-rank vector core (LVC) and residual matrix core (RMC) side by side.

Dataflow, token by token:

1. FP16 activations of a token arrive on ``x`` and go both to the online
   HGQ quantizer and to the LVC. The quantizer's codes fill one bank of the
   code buffer, and the LVC's outputs ``Y_lr`` fill the same bank of the
   low-rank output buffer.
2. When both have finished a token, the feeder streams that token's codes,
   with the residual weights from the weight memory, through the RMC: row
   tile after row tile of ``rows`` output channels, ``K / lanes`` beats each.
3. The combiner adds each RMC result to ``Y_lr`` and the bias,
   ``y = fp32(fp32(Y_lr + Y_res) + b)``, and sends ``rows`` outputs per beat
   on ``y``.

The banks alternate between tokens, so that steps 1 and 2 overlap: while the
RMC works on token t, the quantizer and the LVC prepare token t + 1. The
residual weights and the bias are loaded once per layer through ``load``
before the first token; the LVC's weights through ``lvc_load``.
"""


from dataclasses import dataclass, field

from amaranth import Const, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.formats import FP16, FP32
from golden.lowrank import SVDMPConfig

from .config import RMCConfig
from .fp import FP32Adder
from .lvc import LowRankVectorCore, LVCConfig
from .lvc import load_layout as lvc_load_layout
from .quantizer import HGQQuantizer
from .rmc import ResidualMatrixCore

__all__ = ["CoreConfig", "LoadTarget", "HeterogeneousCore"]


class LoadTarget(enum.Enum, shape=2):
    """Memory that a ``load`` beat writes."""

    CODES = 0
    SHIFTS = 1
    SCALES = 2
    BIAS = 3


@dataclass(frozen=True)
class CoreConfig:
    """Parameters of the heterogeneous core.

    Parameters
    ----------
    rmc : RMCConfig
        The residual matrix core; its ``lanes`` is also the activation beat width.
    rank : int
        Low-rank components r; 0 leaves out the LVC.
    lvc_lanes : int
        FP lanes of the LVC.
    svdmp : SVDMPConfig
        Significand widths and slice width of the LVC's multipliers.
    max_k, max_n : int
        Largest layer shape that the memories hold. ``max_k`` must be a
        multiple of the coarse group and ``max_n`` of ``rmc.rows``.

    Raises
    ------
    ValueError
        If a parameter breaks one of the rules above.
    """

    rmc: RMCConfig = field(default_factory=RMCConfig)
    rank: int = 32
    lvc_lanes: int = 32
    svdmp: SVDMPConfig = field(default_factory=SVDMPConfig)
    max_k: int = 1536
    max_n: int = 1536

    def __post_init__(self):
        if not isinstance(self.rmc, RMCConfig):
            raise TypeError(f"rmc must be an RMCConfig, not {type(self.rmc).__name__}")
        if not isinstance(self.svdmp, SVDMPConfig):
            raise TypeError(f"svdmp must be an SVDMPConfig, not {type(self.svdmp).__name__}")
        for name in ("rank", "lvc_lanes", "max_k", "max_n"):
            value = getattr(self, name)
            least = 0 if name == "rank" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                kind = "non-negative" if least == 0 else "positive"
                raise ValueError(f"{name} must be a {kind} integer, not {value!r}")
        if self.max_k % self.rmc.quant.coarse_group:
            raise ValueError(
                f"max_k must be a multiple of coarse_group ({self.rmc.quant.coarse_group}), not {self.max_k}")
        if self.max_n % self.rmc.rows:
            raise ValueError(f"max_n must be a multiple of rows ({self.rmc.rows}), not {self.max_n}")
        if self.rank > min(self.max_k, self.max_n):
            raise ValueError(f"rank must be at most min(max_k, max_n) = {min(self.max_k, self.max_n)}, "
                             f"not {self.rank}")
        if self.rank and self.lvc_lanes % self.rmc.rows:
            raise ValueError(f"lvc_lanes must be a multiple of rows ({self.rmc.rows}), not {self.lvc_lanes}")
        if self.rank and self.max_n % self.lvc_lanes:
            raise ValueError(f"max_n must be a multiple of lvc_lanes ({self.lvc_lanes}), not {self.max_n}")

    def lvc_config(self):
        """Return the configuration of the LVC; requires ``rank`` above 0."""
        return LVCConfig(lanes=self.lvc_lanes, max_rank=self.rank, max_k=self.max_k, max_n=self.max_n,
                         svdmp=self.svdmp)

    @property
    def k_beats(self):
        """Activation beats of a row of ``max_k``."""
        return self.max_k // self.rmc.lanes

    @property
    def n_tiles(self):
        """Row tiles of ``max_n``."""
        return self.max_n // self.rmc.rows

    def check_shape(self, k, n):
        """Raise ValueError unless a layer of K = ``k`` and N = ``n`` fits this core."""
        q = self.rmc.quant
        if not 0 < k <= self.max_k or k % q.coarse_group:
            raise ValueError(f"K must be a positive multiple of coarse_group ({q.coarse_group}) "
                             f"up to max_k ({self.max_k}), not {k}")
        multiple = self.lvc_lanes if self.rank else self.rmc.rows
        if not 0 < n <= self.max_n or n % multiple:
            raise ValueError(f"N must be a positive multiple of {multiple} "
                             f"up to max_n ({self.max_n}), not {n}")

    def load_layout(self):
        """Return the layout of a ``load`` beat: target memory, word address and data."""
        cfg = self.rmc
        return data.StructLayout({
            "target": LoadTarget,
            "address": unsigned(max(1, (self.n_tiles * self.k_beats - 1).bit_length())),
            "data": unsigned(max(cfg.rows * cfg.lanes * cfg.quant.element.bits, cfg.rows * FP32.width)),
        })

    def activation_layout(self):
        """Return the layout of an activation beat: ``lanes`` FP16 encodings and ``last`` of the token."""
        return data.StructLayout({
            "x": data.ArrayLayout(unsigned(FP16.width), self.rmc.lanes),
            "last": 1,
        })

    def shape_layout(self):
        """Return the layout of the run-time layer shape: beats per token row and row tiles."""
        return data.StructLayout({
            "k_beats": unsigned(self.k_beats.bit_length()),
            "n_tiles": unsigned(self.n_tiles.bit_length()),
        })

    def counter_layout(self):
        """Return the layout of the cycle counters (32 bits each)."""
        return data.StructLayout({
            "busy": 32,
            "stall_input": 32,
            "stall_output": 32,
        })


class HeterogeneousCore(wiring.Component):
    """LVC and RMC on the same activations, with buffers, a sequencer and cycle counters.

    Equals :func:`golden.compiler.run_layer` on FP16 activations, bit for bit.

    Parameters
    ----------
    config : CoreConfig

    Members
    -------
    load : ``In(stream.Signature(config.load_layout()))``
        Writes of residual weight codes, shifts, scales and the bias; always ready.
    shape : ``In(config.shape_layout())``
        The layer's ``K / lanes`` and ``N / rows``; hold it while tokens run.
    x : ``In(stream.Signature(config.activation_layout()))``
        Activations, ``K / lanes`` beats per token.
    y : ``Out(stream.Signature(config.rmc.output_layout()))``
        Outputs, ``N / rows`` beats per token, in token order.
    counters : ``Out(config.counter_layout())``
        ``busy``: cycles in which the PE array takes a beat. ``stall_input``:
        cycles in which it waits for the quantizer or the LVC while tokens
        are pending. ``stall_output``: cycles in which a beat waits because
        the outputs are not taken.
    """

    def __init__(self, config=CoreConfig()):
        if not isinstance(config, CoreConfig):
            raise TypeError(f"config must be a CoreConfig, not {type(config).__name__}")
        self._config = config
        members = {
            "load": In(stream.Signature(config.load_layout())),
            "shape": In(config.shape_layout()),
            "x": In(stream.Signature(config.activation_layout())),
            "y": Out(stream.Signature(config.rmc.output_layout())),
            "counters": Out(config.counter_layout()),
        }
        if config.rank:
            self._lvc = LowRankVectorCore(config.lvc_config())
            lvc_config = config.lvc_config()
            members["lvc_load"] = In(stream.Signature(lvc_load_layout(lvc_config.lanes, lvc_config.address_depth)))
        else:
            self._lvc = None
        super().__init__(members)

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        quant = cfg.rmc.quant
        rows, lanes = cfg.rmc.rows, cfg.rmc.lanes
        fine_per_row = cfg.max_k // quant.fine_group
        coarse_per_row = cfg.max_k // quant.coarse_group

        m.submodules.rmc = rmc = ResidualMatrixCore(cfg.rmc)
        m.submodules.quantizer = quantizer = HGQQuantizer(quant, lanes)

        # Weight memories, written through `load`; word w of a row tile is at tile * words + w.
        weights = _Memories(m, "weight", {
            "codes": (data.ArrayLayout(data.ArrayLayout(quant.element.bits, lanes), rows), cfg.n_tiles * cfg.k_beats),
            "shifts": (data.ArrayLayout(quant.shift_bits, rows), cfg.n_tiles * fine_per_row),
            "scales": (data.ArrayLayout(FP16.width, rows), cfg.n_tiles * coarse_per_row),
            "bias": (data.ArrayLayout(FP32.width, rows), cfg.n_tiles),
        })
        m.d.comb += self.load.ready.eq(1)
        for target, name in ((LoadTarget.CODES, "codes"), (LoadTarget.SHIFTS, "shifts"),
                             (LoadTarget.SCALES, "scales"), (LoadTarget.BIAS, "bias")):
            weights.write(m, name, self.load.valid & (self.load.payload.target == target),
                          self.load.payload.address, self.load.payload.data)

        # Two banks of activation codes and low-rank outputs: token t uses bank t % 2.
        bank_memories = {
            "codes": (data.ArrayLayout(quant.element.bits, lanes), 2 * cfg.k_beats),
            "shifts": (unsigned(quant.shift_bits), 2 * fine_per_row),
            "scales": (unsigned(FP16.width), 2 * coarse_per_row),
        }
        if cfg.rank:
            # One word of low-rank outputs contains the LVC's `lvc_lanes` results, `lvc_lanes / rows` row tiles.
            bank_memories["lowrank"] = (data.ArrayLayout(data.ArrayLayout(FP32.width, rows), cfg.lvc_lanes // rows),
                                        2 * cfg.max_n // cfg.lvc_lanes)
        banks = _Memories(m, "bank", bank_memories)
        claimed = Signal(2)         # the bank's token has started to arrive
        codes_done = Signal(2)      # the quantizer has written the bank's token
        lowrank_done = Signal(2)    # the LVC has written the bank's token
        fed = Signal(2)             # the feeder has sent the bank's token to the RMC
        released = Signal(2)        # pulse: the combiner sent the bank's last output

        # Input: every activation beat goes to the quantizer and the LVC together.
        in_bank = Signal()
        in_token = Signal()         # inside a token, after its first beat
        lvc_ready = Signal()
        can_take = ~(claimed >> in_bank)[0] | in_token
        m.d.comb += [
            quantizer.i.payload.x.eq(self.x.payload.x),
            quantizer.i.payload.last.eq(self.x.payload.last),
            quantizer.i.valid.eq(self.x.valid & can_take & lvc_ready),
            self.x.ready.eq(can_take & quantizer.i.ready & lvc_ready),
        ]
        x_transfer = Signal()
        m.d.comb += x_transfer.eq(self.x.valid & self.x.ready)
        claim = Signal(2)
        with m.If(x_transfer):
            m.d.sync += in_token.eq(~self.x.payload.last)
            m.d.comb += claim.eq(1 << in_bank)
            with m.If(self.x.payload.last):
                m.d.sync += in_bank.eq(~in_bank)

        # Quantizer output: the token's codes, shifts and scales go into its bank.
        q_out = quantizer.o
        q_bank = Signal()
        q_step = _RowPosition(m, "q", cfg)
        m.d.comb += q_out.ready.eq(1)
        banks.write(m, "codes", q_out.valid, q_bank * cfg.k_beats + q_step.beat, q_out.payload.codes)
        banks.write(m, "shifts", q_out.valid, q_bank * fine_per_row + q_step.fine, q_out.payload.shift)
        banks.write(m, "scales", q_out.valid, q_bank * coarse_per_row + q_step.coarse, q_out.payload.scale)
        codes_finished = Signal(2)
        with m.If(q_out.valid):
            q_step.advance(m, q_out.payload.last)
            with m.If(q_out.payload.last):
                m.d.comb += codes_finished.eq(1 << q_bank)
                m.d.sync += q_bank.eq(~q_bank)

        if self._lvc is None:
            # Without a low-rank path Y_lr is +0, ready as soon as the token arrives.
            lowrank_finished = claim
            m.d.comb += lvc_ready.eq(1)
        else:
            lowrank_finished = self._connect_lvc(m, banks, x_transfer, lvc_ready)

        # Feeder: the ready bank's codes and the weights of each row tile, one RMC beat per cycle.
        feed_bank = Signal()
        feed = _RowPosition(m, "feed", cfg)
        feed_tile = Signal(range(cfg.n_tiles))
        feed_valid = Signal()
        feed_last = Signal()
        fed_now = Signal(2)
        bank_ready = ((codes_done & lowrank_done & ~fed) >> feed_bank)[0]
        advance = ~feed_valid | rmc.i.ready
        issue = Signal()
        m.d.comb += issue.eq(advance & bank_ready)
        last_beat = feed.beat == self.shape.k_beats - 1
        last_tile = feed_tile == self.shape.n_tiles - 1
        reads = {
            "x_codes": banks.read(m, "codes", advance, feed_bank * cfg.k_beats + feed.beat),
            "x_shift": banks.read(m, "shifts", advance, feed_bank * fine_per_row + feed.fine),
            "x_scale": banks.read(m, "scales", advance, feed_bank * coarse_per_row + feed.coarse),
            "w_codes": weights.read(m, "codes", advance, feed_tile * cfg.k_beats + feed.beat),
            "w_shift": weights.read(m, "shifts", advance, feed_tile * fine_per_row + feed.fine),
            "w_scale": weights.read(m, "scales", advance, feed_tile * coarse_per_row + feed.coarse),
        }
        with m.If(advance):
            m.d.sync += feed_valid.eq(issue)
        with m.If(issue):
            m.d.sync += feed_last.eq(last_beat)
            feed.advance(m, last_beat)
            with m.If(last_beat):
                m.d.sync += feed_tile.eq(Mux(last_tile, 0, feed_tile + 1))
                with m.If(last_tile):
                    m.d.comb += fed_now.eq(1 << feed_bank)
                    m.d.sync += feed_bank.eq(~feed_bank)
        beat = rmc.i.payload
        m.d.comb += [
            rmc.i.valid.eq(feed_valid),
            beat.x.eq(reads["x_codes"]),
            beat.x_shift.eq(reads["x_shift"]),
            beat.x_scale.eq(reads["x_scale"]),
            beat.w.eq(reads["w_codes"]),
            beat.w_shift.eq(reads["w_shift"]),
            beat.w_scale.eq(reads["w_scale"]),
            beat.last.eq(feed_last),
        ]

        # Combiner: y = fp32(fp32(Y_lr + Y_res) + b), one output beat per RMC result.
        out_bank = Signal()
        out_tile = Signal(range(cfg.n_tiles))
        tiles_per_word = max(1, cfg.lvc_lanes // rows)
        out_word = Signal(range(max(1, cfg.max_n // max(cfg.lvc_lanes, 1))))
        out_part = Signal(range(tiles_per_word))
        # The low-rank and bias words of the expected output are read ahead;
        # `looked_up` is high once they match the current (bank, tile).
        looked_up = Signal()
        if self._lvc is None:
            lowrank = data.ArrayLayout(FP32.width, rows).const([0] * rows)
        else:
            words_per_bank = cfg.max_n // cfg.lvc_lanes
            lowrank = banks.read(m, "lowrank", 1, out_bank * words_per_bank + out_word)[out_part]
        bias = weights.read(m, "bias", 1, out_tile)
        can_send = ~self.y.valid | self.y.ready
        send = Signal()
        m.d.comb += [
            rmc.o.ready.eq(looked_up & can_send),
            send.eq(rmc.o.valid & rmc.o.ready),
        ]
        with m.If(self.y.ready):
            m.d.sync += self.y.valid.eq(0)
        # NOTE: the lookup takes one cycle after each send, so the combiner takes at
        # most one RMC result every 2 cycles. Only a layer with K = lanes, one
        # beat per row tile, is faster than that; its waits then count as
        # stall_output although `y` is ready.
        m.d.sync += looked_up.eq(~send)
        out_last_tile = out_tile == self.shape.n_tiles - 1
        with m.If(send):
            end_of_word = out_part == tiles_per_word - 1
            m.d.sync += [
                self.y.valid.eq(1),
                out_tile.eq(Mux(out_last_tile, 0, out_tile + 1)),
                out_part.eq(Mux(out_last_tile | end_of_word, 0, out_part + 1)),
                out_word.eq(Mux(out_last_tile, 0, Mux(end_of_word, out_word + 1, out_word))),
            ]
            with m.If(out_last_tile):
                m.d.comb += released.eq(1 << out_bank)
                m.d.sync += out_bank.eq(~out_bank)
        for row in range(rows):
            add_lowrank = m.submodules[f"add_lowrank_{row}"] = FP32Adder()
            add_bias = m.submodules[f"add_bias_{row}"] = FP32Adder()
            m.d.comb += [
                add_lowrank.a.eq(lowrank[row]),
                add_lowrank.b.eq(rmc.o.payload.y[row]),
                add_bias.a.eq(add_lowrank.y),
                add_bias.b.eq(bias[row]),
            ]
            with m.If(send):
                m.d.sync += self.y.payload.y[row].eq(add_bias.y)

        # Bank state: set bits as producers finish, clear them all when the combiner releases the bank.
        m.d.sync += [
            claimed.eq((claimed | claim) & ~released),
            codes_done.eq((codes_done | codes_finished) & ~released),
            lowrank_done.eq((lowrank_done | lowrank_finished) & ~released),
            fed.eq((fed | fed_now) & ~released),
        ]

        # Counters: a token is pending from its first activation beat to its last output.
        pending = Signal()
        m.d.comb += pending.eq((claimed | claim) != 0)
        with m.If(rmc.i.valid & rmc.i.ready):
            m.d.sync += self.counters.busy.eq(self.counters.busy + 1)
        with m.Elif(rmc.i.valid):
            m.d.sync += self.counters.stall_output.eq(self.counters.stall_output + 1)
        with m.Elif(pending):
            m.d.sync += self.counters.stall_input.eq(self.counters.stall_input + 1)
        return m

    def _connect_lvc(self, m, banks, x_transfer, lvc_ready):
        """Feed the LVC from the activation input and write its outputs into the low-rank bank.

        The LVC takes one FP16 activation per beat, so a serializer keeps one
        activation beat and hands out its ``lanes`` values in turn. Returns the
        pulses that mark a bank's low-rank outputs complete.
        """
        cfg = self._config
        lanes = cfg.rmc.lanes
        m.submodules.lvc = lvc = self._lvc
        wiring.connect(m, wiring.flipped(self.lvc_load), lvc.load)
        m.d.comb += [
            lvc.rank.eq(cfg.rank),
            lvc.k.eq(self.shape.k_beats * lanes),
            lvc.n.eq(self.shape.n_tiles * cfg.rmc.rows),
        ]

        serial_beat = Signal(data.ArrayLayout(FP16.width, lanes))
        serial_valid = Signal()
        serial_index = Signal(range(lanes))
        m.d.comb += [
            lvc_ready.eq(~serial_valid),
            lvc.i.valid.eq(serial_valid),
            lvc.i.payload.eq(serial_beat[serial_index]),
        ]
        with m.If(lvc.i.valid & lvc.i.ready):
            m.d.sync += serial_index.eq(serial_index + 1)
            with m.If(serial_index == lanes - 1):
                m.d.sync += [serial_valid.eq(0), serial_index.eq(0)]
        with m.If(x_transfer):
            m.d.sync += [serial_beat.eq(self.x.payload.x), serial_valid.eq(1), serial_index.eq(0)]

        words_per_bank = cfg.max_n // cfg.lvc_lanes
        words_per_token = self.shape.n_tiles * cfg.rmc.rows // cfg.lvc_lanes
        out_bank = Signal()
        out_word = Signal(range(words_per_bank))
        finished = Signal(2)
        m.d.comb += lvc.o.ready.eq(1)
        banks.write(m, "lowrank", lvc.o.valid, out_bank * words_per_bank + out_word, lvc.o.payload.y)
        with m.If(lvc.o.valid):
            with m.If(out_word == words_per_token - 1):
                m.d.comb += finished.eq(1 << out_bank)
                m.d.sync += [out_word.eq(0), out_bank.eq(~out_bank)]
            with m.Else():
                m.d.sync += out_word.eq(out_word + 1)
        return finished


class _Memories:
    """Named ``lib.memory`` memories with one write port and any number of synchronous read ports.

    A memory of zero width is not built; its reads return 0.
    """

    def __init__(self, m, prefix, specs):
        self._shapes = {}
        self._memories = {}
        for name, (shape, depth) in specs.items():
            self._shapes[name] = shape
            if Shape.cast(shape).width:
                memory = Memory(shape=shape, depth=depth, init=[])
                m.submodules[f"{prefix}_{name}"] = memory
                self._memories[name] = memory

    def write(self, m, name, enable, address, value):
        """Write ``value`` at ``address`` in the cycles where ``enable`` is high."""
        if name not in self._memories:
            return
        port = self._memories[name].write_port()
        m.d.comb += [
            port.en.eq(enable),
            port.addr.eq(address),
            port.data.eq(value),
        ]

    def read(self, m, name, enable, address):
        """Return the data of a new read port: the word at ``address`` one cycle after ``enable``."""
        shape = self._shapes[name]
        if name not in self._memories:
            return Const(0, Shape.cast(shape))
        port = self._memories[name].read_port()
        m.d.comb += [
            port.en.eq(enable),
            port.addr.eq(address),
        ]
        return port.data


class _RowPosition:
    """Beat, fine-group and coarse-group index within a row of K, advanced beat by beat."""

    def __init__(self, m, name, config):
        quant = config.rmc.quant
        self._beats_per_fine = config.rmc.beats_per_fine_group
        self._fine_per_coarse = quant.fine_per_coarse
        self.beat = Signal(range(config.k_beats), name=f"{name}_beat")
        self.fine = Signal(range(config.max_k // quant.fine_group), name=f"{name}_fine")
        self.coarse = Signal(range(config.max_k // quant.coarse_group), name=f"{name}_coarse")
        self._beat_in_fine = Signal(range(self._beats_per_fine), name=f"{name}_beat_in_fine")
        self._fine_in_coarse = Signal(range(self._fine_per_coarse), name=f"{name}_fine_in_coarse")

    def advance(self, m, row_end):
        """Step to the next beat, or back to the start of a row after ``row_end``."""
        end_of_fine = self._beat_in_fine == self._beats_per_fine - 1
        end_of_coarse = end_of_fine & (self._fine_in_coarse == self._fine_per_coarse - 1)
        with m.If(row_end):
            m.d.sync += [
                self.beat.eq(0), self.fine.eq(0), self.coarse.eq(0),
                self._beat_in_fine.eq(0), self._fine_in_coarse.eq(0),
            ]
        with m.Else():
            m.d.sync += [
                self.beat.eq(self.beat + 1),
                self._beat_in_fine.eq(Mux(end_of_fine, 0, self._beat_in_fine + 1)),
            ]
            with m.If(end_of_fine):
                m.d.sync += [
                    self.fine.eq(self.fine + 1),
                    self._fine_in_coarse.eq(Mux(end_of_coarse, 0, self._fine_in_coarse + 1)),
                ]
            with m.If(end_of_coarse):
                m.d.sync += self.coarse.eq(self.coarse + 1)
