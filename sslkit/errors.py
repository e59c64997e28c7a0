"""The one exception type sslkit raises for bad input.

Every message is one line that names the problem and the fix, e.g.
``nt_xent needs at least 2 pairs per batch (got batch size 1): use --batch-size 2 or more``.
The command line prints such errors without a traceback.
"""


class SSLKitError(ValueError):
    """Bad input to sslkit: the message says what is wrong and how to fix it."""
