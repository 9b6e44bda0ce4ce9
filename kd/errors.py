"""The one exception type for bad user input.

Anything the user can fix (a recipe key, a CLI argument, a data folder, a checkpoint) raises
`KDError` with one line that says what is wrong, where, and how to fix it. The CLI prints that
line and exits with code 2; everything else is a bug and keeps its traceback.
"""


class KDError(Exception):
    """A problem with the user's input; the message is shown to the user as one line."""


class WriteFailed(KDError):
    """A run's file could not be written (a full disk, a folder that became read-only); `problem` is the line
    without its advice, for callers that know better what the user can do next (resume the run, or start it
    again when nothing was kept)."""

    def __init__(self, problem: str, advice: str):
        super().__init__(f"{problem}; {advice}")
        self.problem = problem


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run, carrying the run directory that a resume continues (None before one was
    made): the command line prints how to resume."""

    def __init__(self, run_dir=None, signal_name: str = "SIGINT"):
        super().__init__(str(run_dir))
        self.run_dir, self.signal_name = run_dir, signal_name


def one_line(err: BaseException) -> str:
    """An exception's text on one line (tarfile's and others' can span several)."""
    return " ".join(str(err).split()) or type(err).__name__
