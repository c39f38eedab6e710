"""User-facing errors: one clear line and a non-zero exit, never a deep traceback."""


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
