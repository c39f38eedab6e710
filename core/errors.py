"""User-facing errors: one clear line and a non-zero exit, never a deep traceback.

Exit codes (README "Exit codes"); engines retry only the transient ones:

- 2 bad input or config (UserError), and a full disk: never retried;
- 3 the quality gate failed: never retried;
- 4 an internal error (a bug): never retried, a retry would fail the same way;
- 1 a transient failure (network, a hub or vault 5xx): retried;
- 137 out of memory, 143 SIGTERM or preemption (a checkpoint is saved): retried;
- 130 Ctrl-C on the local runner.
"""

import errno


class UserError(Exception):
    """Bad input or config. The message is printed as-is, with exit code 2."""

    exit_code = 2


class QualityGateError(UserError):
    """The evaluated model is below the configured quality gate."""

    exit_code = 3


def first_line(e: BaseException, limit: int = 300, with_type: bool = False) -> str:
    """A library exception as one line for a UserError: its message's first non-blank line."""
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), type(e).__name__)
    if with_type and not line.startswith(type(e).__name__):
        line = f"{type(e).__name__}: {line}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


INTERNAL = 4  # a bug: not retried
TRANSIENT = 1  # the network or a service: retried
# OSErrors that describe the machine's state, not a passing fault: a retry meets them again.
_LOCAL_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def exit_code(e: BaseException) -> int:
    """The one map from an exception that escaped a stage to its exit code."""
    if isinstance(e, UserError):
        return e.exit_code
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return 137
    if disk_full(e):
        return 2
    if isinstance(e, (ConnectionError, TimeoutError)):
        return TRANSIENT
    if isinstance(e, OSError) and not isinstance(e, _LOCAL_OS_ERRORS):
        return TRANSIENT  # sockets, HTTP clients (requests' and the hub's errors are OSErrors)
    return INTERNAL


def disk_full(e: BaseException) -> bool:
    """ENOSPC/EFBIG, also when a Rust or C++ library reports it as text (safetensors, onnx)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG):
        return True
    text = str(e)
    return any(s in text for s in ("No space left on device", "File too large", "os error 28", "os error 27"))
