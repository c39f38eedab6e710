"""Prompt rendering and label parsing: the one place training, evaluation and export agree on.

A row becomes ``(prompt, completion)``. Training puts the loss on the completion only;
evaluation feeds the prompt and parses the generated text back into a label.
"""

from __future__ import annotations

import functools
import string

from core.errors import UserError


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a text template of plain field names, or None. A field may only
    name a column: no format spec (``{phrase:>100000000}`` would allocate gigabytes), no
    conversion (``!r``), no attribute or index (``{x.__class__}``, ``{x[0]}``)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"not a valid template: {e}"
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier():
            return f"field {{{name}}} must be a plain column name (no index, attribute or positional field)"
        if spec or conversion:
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            return f"field {{{shown}}}: format specs and conversions are not allowed; write {{{name}}}"
    return None


def template_fields(template: str) -> list[str]:
    problem = template_problem(template)
    if problem:
        raise UserError(f"data.text_template: {problem}")
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def check_template(template: str, columns: set[str]) -> None:
    missing = [f for f in template_fields(template) if f not in columns]
    if missing:
        raise UserError(
            f"data.text_template names column(s) {missing} that the data lacks; columns are {sorted(columns)}"
        )


@functools.lru_cache(maxsize=16)
def _split_template(template: str, label_col: str) -> tuple[str, str]:
    cut = template.index("{" + label_col + "}")
    return template[:cut], template[cut:]


def render(row: dict, data_cfg, tokenizer=None) -> tuple[str, str]:
    """Split one row into the prompt the model sees and the completion it must produce."""
    label = str(row[data_cfg.label_col])
    if data_cfg.prompt_format == "template":
        # Olive semantics: the text_template over text_cols; everything before the label is the prompt.
        head, tail = _split_template(data_cfg.text_template, data_cfg.label_col)
        # format(v, "") is str(v) for every JSON, CSV and datasets value type: no copy of the row needed.
        return head.format_map(row), tail.format_map(row)
    user = "\n".join(str(row[c]) for c in data_cfg.text_cols if c != data_cfg.label_col)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": label}], tokenize=False
    )
    if not full.startswith(prompt):
        raise UserError(
            "the tokenizer's chat template does not extend the prompt with the answer; use prompt_format: template"
        )
    return prompt, full[len(prompt) :].rstrip("\n")


def parse_label(generated: str, labels: list[str]) -> str | None:
    """The label a generation names: its first word(s) up to a newline or special token."""
    text = generated.split("<|")[0].split("\n")[0].strip().strip(".:!\"'").lower()
    by_length = sorted(labels, key=len, reverse=True)
    for label in by_length:
        if text == label.lower():
            return label
    for label in by_length:
        if text.startswith(label.lower()):
            return label
    return None
