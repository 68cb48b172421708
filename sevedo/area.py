"""Subcommands of `sevedo`: area."""

__all__ = ["add_commands"]


def add_commands(commands):
    """Add this module's subcommands to the commands subparsers of `sevedo`."""
