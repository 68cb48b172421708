"""Helpers shared by the test modules."""

import gc
import re
import warnings

import pytest
from amaranth.hdl import UnusedElaboratable


def assert_constructor_raises(factory, arguments, error, message):
    """Check that ``factory(*arguments)`` raises ``error`` with exactly ``message``.

    A component whose constructor raises is never elaborated, and Amaranth
    warns about that when the object is garbage collected. The object is
    collected here, under a filter, so that the warning does not appear in a
    later test.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            factory(*arguments)
        gc.collect()
