"""Errors the command line turns into exit statuses (ValueError / FileNotFoundError: bad input, 2)."""


class RunsFailed(Exception):
    """Some runs raised (a diverged run is a result, not a failure): exit status 1 after the others finished."""


class DevicePoisoned(Exception):
    """A run's CUDA error left this process's context unusable (a device-side assert, an illegal
    access): the run is recorded failed and the process exits with EXIT_POISONED, so a fresh one
    (a restarted --jobs worker, or the same command again) takes the remaining runs."""


EXIT_POISONED = 75  # EX_TEMPFAIL: try again in a fresh process
