"""The check the tests of bad input share: the call raises SSLKitError with a one-line message."""

from __future__ import annotations

import pytest

from sslkit.errors import SSLKitError


def one_line_error(call) -> str:
    """The message of the SSLKitError that call() raises, checked to be one line."""
    with pytest.raises(SSLKitError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message
