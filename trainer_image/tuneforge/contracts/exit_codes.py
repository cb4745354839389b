"""Trainer exit codes; the operator's pod failure policy keys on them."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    #: any other non-zero code: a failure that may be retried a limited number of times
    FAILURE = 1
    #: the input (data, spec, model reference) is wrong: retrying cannot help (sysexits EX_DATAERR)
    BAD_INPUT = 65
    #: SIGTERM received, a checkpoint was saved: run the job again and it resumes (sysexits EX_TEMPFAIL)
    PREEMPTED = 75
