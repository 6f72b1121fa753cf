"""Errors a user can cause, and input validation shared by every backend."""

from __future__ import annotations

import numpy as np


class PihError(ValueError):
    """A user-caused error. The message names the offending argument and its value.

    The ``pih`` command prints it as one line and exits with ``exit_code`` (2)."""

    exit_code = 2


class ProtocolMismatch(PihError):
    """Two records obtained under different protocols were about to be compared."""


class StoreError(PihError):
    """A results store that cannot be read or written as it is: the message names the file (and the line)."""


class Interrupted(PihError):
    """The user interrupted a command (SIGINT); the message says what was kept. Exit code 130."""

    exit_code = 130


class PihWarning(UserWarning):
    """Something the user must know that does not stop the command (a repaired store tail, an adjusted input).

    The ``pih`` command prints each as one line on stderr."""


def bad(name: str, value: object, why: str) -> PihError:
    """Build the standard error for argument ``name`` holding ``value``."""
    return PihError(f"{name}={value!r}: {why}")


def check_tensor(name: str, array: object) -> np.ndarray:
    """Return ``array`` as a float ndarray; raise if it is empty or holds NaN/Inf."""
    try:
        arr = np.asarray(array)
    except Exception as exc:  # pragma: no cover - numpy's own message is clear enough
        raise bad(name, type(array).__name__, "not convertible to an array") from exc
    if arr.size == 0:
        raise bad(name, f"array of shape {arr.shape}", "is empty")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise bad(name, f"array of dtype {arr.dtype}", "is not numeric")
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise bad(name, f"array of shape {arr.shape}", f"holds {n_nan} NaN and {n_inf} Inf values")
    return arr
