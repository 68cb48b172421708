"""Handshake and counter helpers shared by the pipeline stages."""

from amaranth import Signal, Value

__all__ = ["registered_output", "decoupling_register", "group_counter", "group_output"]


def registered_output(m, source, sink):
    """Drive ``source.ready`` so that ``sink`` behaves as a pipeline register.

    The stage accepts a beat whenever its output register is empty or being
    read in the same cycle, so a stage runs at one beat per cycle without
    backpressure. ``sink.valid`` clears after a transfer; the caller sets it
    again (in a later statement) when it writes a new output.

    Returns the signal that is high in the cycles where ``source`` transfers.
    """
    transfer = Signal()
    m.d.comb += [
        source.ready.eq(~sink.valid | sink.ready),
        transfer.eq(source.valid & source.ready),
    ]
    with m.If(sink.ready):
        m.d.sync += sink.valid.eq(0)
    return transfer


def decoupling_register(m, source, sink, name):
    """Pass beats from ``source`` to ``sink`` through a register that accepts only while empty.

    ``source.ready`` is the register's inverted valid bit and ``sink.valid``
    the bit itself, so no combinational path joins the two sides. A beat
    waits at least one cycle, and the stage moves at most one beat every two
    cycles, enough for a byte stream such as a UART's.
    """
    payload = Signal.like(sink.payload, name=f"{name}_payload")
    valid = Signal(name=f"{name}_valid")
    m.d.comb += [
        source.ready.eq(~valid),
        sink.valid.eq(valid),
        sink.payload.eq(payload),
    ]
    with m.If(~valid & source.valid):
        m.d.sync += [payload.eq(source.payload), valid.eq(1)]
    with m.Elif(sink.ready):
        m.d.sync += valid.eq(0)


def group_counter(m, transfer, length, name):
    """Count transfers modulo ``length``.

    Returns ``(first, last)``: high while the current transfer is the first,
    or the last, of its group. With ``length == 1`` both are always high.
    """
    if length == 1:
        return 1, 1
    count = Signal(range(length), name=f"{name}_count")
    with m.If(transfer):
        m.d.sync += count.eq(0)
        with m.If(count != length - 1):
            m.d.sync += count.eq(count + 1)
    return count == 0, count == length - 1


def group_output(m, source, sink, length, name):
    """Drive ``source.ready`` for a stage that writes ``sink`` once per group of ``length`` transfers.

    The stage sums a group of transfers and writes ``sink`` only with the
    last one. It takes the other transfers even while ``sink`` still contains
    the previous group's result, so a downstream stage may keep ``sink``
    for up to ``length`` cycles without slowing the stream. The last
    transfer of a group waits until ``sink`` is empty or being read.
    ``sink.valid`` clears after a transfer; the caller sets it again (in a
    later statement) when it writes a new output.

    Returns ``(transfer, first, last)``: the signal that is high in the
    cycles where ``source`` transfers, and the flags of
    :func:`group_counter`.
    """
    transfer = Signal(name=f"{name}_transfer")
    first, last = group_counter(m, transfer, length, name)
    m.d.comb += [
        source.ready.eq(~Value.cast(last) | ~sink.valid | sink.ready),
        transfer.eq(source.valid & source.ready),
    ]
    with m.If(sink.ready):
        m.d.sync += sink.valid.eq(0)
    return transfer, first, last
