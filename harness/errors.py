"""Errors the command line turns into exit statuses (ValueError / FileNotFoundError: bad input, 2)."""


class RunsFailed(Exception):
    """Some runs raised (a diverged run is a result, not a failure): exit status 1 after the others finished."""
