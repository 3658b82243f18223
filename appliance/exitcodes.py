"""Process exit codes. They are part of the public interface: scripts branch on them."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug in appliance itself; the only case that prints a traceback
    USAGE = 2  # bad command line or bad input file (facts, profile, model, inventory)
    DOES_NOT_FIT = 3  # hardware or profile cannot run the requested model
    VERIFICATION_FAILED = 4
    DEPLOYMENT_FAILED = 5
    INTERRUPTED = 130
