"""The root of every error nextclick raises on purpose.

A `NextclickError`'s message is the explanation an operator reads: the CLI prints it as the one line
(operators/infra/failures.py stops there instead of walking on to its causes, which stay for
--debug). Each subclass also keeps the builtin base it had (ValueError for bad input, RuntimeError for
a state of the world), so callers that catch those still do. Anything else reaching the top is
unexpected: the CLI prints its root cause with the class name when the message alone says nothing.
"""

from __future__ import annotations


class NextclickError(Exception):
    """An error whose message already is the explanation."""
