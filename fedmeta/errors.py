"""The one error type a user can cause: the CLI prints it as one line and exits non-zero."""

from __future__ import annotations

__all__ = ["FedMetaError"]


class FedMetaError(Exception):
    """Bad input: a config value, a data file or a combination of them.

    The message names the file or field and what is wrong; it is shown without a traceback.
    """
