"""The one exception type sslkit raises for bad input.

Every message is one line that names the problem and the fix, e.g.
``nt_xent needs at least 2 pairs per batch (got batch size 1): use --batch-size 2 or more``.
The command line prints such errors without a traceback.
"""


class SSLKitError(ValueError):
    """Bad input to sslkit: the message says what is wrong and how to fix it."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception (e.g. one a library raised on a damaged file), squeezed
    onto one line to go inside an SSLKitError's message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
