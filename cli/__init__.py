"""The `classroom` command line."""


class CliError(Exception):
    """A user-facing CLI failure; printed as one line."""
