"""User-facing errors: one clear line and a non-zero exit, never a deep traceback."""


class UserError(Exception):
    """Bad input or config. The message is printed as-is, with exit code 2."""

    exit_code = 2


class QualityGateError(UserError):
    """The evaluated model is below the configured quality gate."""

    exit_code = 3
