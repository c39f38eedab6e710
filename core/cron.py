"""Cron expressions, parsed per engine dialect: the one place a schedule is judged.

- ``argo``: robfig/cron's standard parser (what Argo's CronWorkflow uses): 5 fields, ``?``
  in day fields, month and weekday names, and the descriptors ``@yearly @annually @monthly
  @weekly @daily @midnight @hourly`` and ``@every <duration>``.
- ``kfp``: KFP's recurring runs use robfig/cron with a leading seconds field: 6 fields, and
  the same descriptors. A 5-field expression is accepted too (the config's portable form) and
  compiled with second 0 (:func:`kfp_cron`).
- ``azureml``: AzureML's ``CronTrigger``: 5 standard fields, no descriptors.

Every field is checked value by value (``61 * * * *`` is refused: minute 61 is out of range).
"""

from __future__ import annotations

import re

MONTHS = {m: i for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)}
DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
# (name, low, high, names)
SECOND = ("second", 0, 59, {})
MINUTE = ("minute", 0, 59, {})
HOUR = ("hour", 0, 23, {})
DOM = ("day-of-month", 1, 31, {})
MONTH = ("month", 1, 12, MONTHS)
DOW = ("day-of-week", 0, 6, DAYS)
STANDARD = (MINUTE, HOUR, DOM, MONTH, DOW)
DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_DURATION = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+$")  # Go's time.ParseDuration
DIALECTS = ("argo", "kfp", "azureml")


def _value(text: str, field) -> int:
    name, low, high, names = field
    if text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise ValueError(f"{name} {text!r} is not a number" + (" or a name" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is out of range {low}-{high}")
    return value


def _field(text: str, field, question: bool) -> None:
    name, low, high, _ = field
    if not text:
        raise ValueError(f"empty {name} field")
    for item in text.split(","):
        if question and item == "?":
            continue
        base, slash, step = item.partition("/")
        if slash:
            if not step.isdigit() or int(step) == 0:
                raise ValueError(f"{name} step {step!r} must be a positive number")
        if base == "*":
            continue
        start, dash, end = base.partition("-")
        a = _value(start, field)
        if dash:
            b = _value(end, field)
            if b < a:
                raise ValueError(f"{name} range {base!r} ends before it starts")


def parse(expr: str, dialect: str) -> list[str]:
    """The fields of ``expr`` (a descriptor: a one-item list), or a ValueError that says why it is
    not a cron expression of ``dialect``."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown cron dialect {dialect!r}")
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError("empty cron expression")
    if "\n" in expr or "\r" in expr:
        raise ValueError(f"cron {expr!r} contains a line break")
    text = expr.strip()
    if text.startswith("@"):
        if dialect == "azureml":
            raise ValueError(f"cron {expr!r}: AzureML takes a 5-field cron (minute hour day month weekday), no @-forms")
        if text in DESCRIPTORS:
            return [text]
        word, _, rest = text.partition(" ")
        if word == "@every" and _DURATION.match(rest.strip()):
            return [text]
        raise ValueError(f"cron {expr!r}: not one of {', '.join(DESCRIPTORS)} or '@every <duration>' (e.g. @every 6h)")
    fields = text.split()
    layouts = {"argo": [STANDARD], "azureml": [STANDARD], "kfp": [(SECOND, *STANDARD), STANDARD]}[dialect]
    layout = next((lay for lay in layouts if len(lay) == len(fields)), None)
    if layout is None:
        want = {
            "argo": "a 5-field cron (minute hour day-of-month month day-of-week)",
            "azureml": "a 5-field cron (minute hour day-of-month month day-of-week)",
            "kfp": "a 6-field cron (second minute hour day-of-month month day-of-week), or a 5-field one",
        }[dialect]
        raise ValueError(f"cron {expr!r} has {len(fields)} field(s); {dialect} expects {want}")
    for text_field, field in zip(fields, layout):
        try:
            _field(text_field, field, question=dialect != "azureml" and field in (DOM, DOW))
        except ValueError as e:
            raise ValueError(f"cron {expr!r}: {e}") from None
    return fields


def kfp_cron(expr: str) -> str:
    """KFP's cron has a leading seconds field: ``0 3 * * 1`` -> ``0 0 3 * * 1``; a 6-field
    expression or a descriptor is kept."""
    fields = parse(expr, "kfp")
    return " ".join(["0", *fields]) if len(fields) == 5 else " ".join(fields)
