"""NumPy golden model of the SeVeDo accelerator and its offline compiler.

This package defines the numerics bit for bit; the RTL in ``hw`` must equal
it. It imports nothing else from the project.
"""
