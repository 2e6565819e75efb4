"""Prompt templates: persona + exemplar + target context -> the LM's prompt (docs/method.md section 4).

Templates are Python format strings limited to plain fields: ``{persona}``, ``{context}`` (the rendered target
context), every target context field and ``{label}`` by name, ``{exemplar_context}``, ``{exemplar_response}``
and ``{exemplar[FIELD]}`` (an exemplar's context field, ``label`` or ``response``); no attribute access, other
indexing, conversion (``!r``) or format spec (:func:`check_plain_template`: a template may come with a gate
export from anyone). A line whose fields all render empty is dropped, so one template serves prompts with and
without a persona or an exemplar (the baselines).
"""

from __future__ import annotations

import re
import string

from mop.data import BlankDict, Record, render_template, template_fields
from mop.errors import MopError, did_you_mean

DEFAULT_TEMPLATE = (
    "You embody the persona in the description to complete the task.\n"
    "Persona: {persona}\n"
    "Example: you wrote this response to {exemplar_context}:\n{exemplar_response}\n"
    "Now write a response to {context}.\n"
    "Response:"
)

FIXED_FIELDS = {"persona", "context", "exemplar", "exemplar_context", "exemplar_response", "label"}
MAX_TEMPLATE_CHARS = 65_536
_NAME = r"[^.\[\]{}!:]+"  # a field name: no attribute access, indexing, conversion or format spec
PLAIN_FIELD = re.compile(rf"(?P<name>{_NAME})|exemplar\[(?P<field>{_NAME})\]")


def check_plain_template(template: object, what: str = "prompt_template") -> list[tuple[str, str | None]]:
    """The fields of ``template`` as (name, exemplar FIELD or None), refused unless every one is a plain
    ``{name}`` or ``{exemplar[FIELD]}``: no attribute access (``{persona.__class__}``), other indexing, nested
    fields, conversion (``!r``) or format spec (``:>10``), no positional ``{}`` / ``{0}``; balanced braces.
    Format strings cannot call anything, but such fields render object reprs into prompts."""
    if not isinstance(template, str):
        raise MopError(f"{what} must be a string, found {type(template).__name__}")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise MopError(f"{what} has {len(template):,} characters, more than the {MAX_TEMPLATE_CHARS:,} a "
                       "template may have")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:  # "Single '}' encountered in format string", "unmatched '{'" ...
        raise MopError(f"{what} is not a valid template ({err}; write a literal brace as {{{{ or }}}})") \
            from err
    rule = ("a template may use only plain fields {name} and {exemplar[FIELD]} (no attribute access, "
            "indexing, conversion or format spec)")
    out = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        shown = "{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
        match = PLAIN_FIELD.fullmatch(name)
        if conversion is not None or spec or not match:
            raise MopError(f"{what} has the field {shown!r}: {rule}")
        if name.strip() != name or name.isdigit() or (match["field"] or "x").isdigit():
            raise MopError(f"{what} has the field {shown!r}: a field is a name (no positional field, no "
                           "surrounding spaces)")
        if name == "exemplar":
            raise MopError(f"{what} has the field {shown!r}: name one of the exemplar's fields, "
                           "{exemplar[FIELD]}, or use {exemplar_context} / {exemplar_response}")
        out.append((name, None) if match["name"] else ("exemplar", match["field"]))
    return out


def validate_prompt_template(template: str, context_fields: list[str], labelled: bool = True) -> None:
    """Refuse a field the prompts cannot fill (it would render empty in every prompt): a name that is neither
    a fixed field nor a context column, an ``{exemplar[FIELD]}`` whose FIELD is not a context column,
    ``label`` or ``response``, and ``{label}`` / ``{exemplar[label]}`` for a dataset without labels; and any
    field that is not plain (:func:`check_plain_template`)."""
    check_plain_template(template, "prompt_template")
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    uses_label = "label" in template_fields(template) or "exemplar[label]" in names
    if uses_label and not labelled:
        raise MopError("prompt_template uses {label} or {exemplar[label]} but the dataset has no "
                       "label_column: set data.dataset.label_column, or take the label out of the template")
    available = FIXED_FIELDS | set(context_fields)
    unknown = [f for f in template_fields(template) if f not in available]
    if unknown:
        raise MopError(f"prompt_template uses unknown field(s) {', '.join(unknown)}; available: "
                       f"{', '.join(sorted(available))}{did_you_mean(unknown, available)}")
    exemplar_fields = set(context_fields) | {"label", "response"}
    bad = [m.group(1) for name in names for m in [re.fullmatch(r"exemplar\[([^\]]*)\]", name)]
           if m and m.group(1) not in exemplar_fields]
    if bad:
        used = ", ".join("{exemplar[" + b + "]}" for b in bad)
        raise MopError(f"prompt_template uses {used}, but an exemplar has only "
                       f"{', '.join(sorted(exemplar_fields))}{did_you_mean(bad, exemplar_fields)}")


def render_prompt(template: str, context_template: str, target: Record, persona: str | None = None,
                  exemplar: Record | None = None) -> str:
    """The prompt for one (persona, exemplar, target context); persona / exemplar may be omitted."""
    target_fields = {**target.context, "label": target.label or ""}
    fields = {**target_fields, "context": render_template(context_template, target_fields),
              "persona": persona or ""}
    if exemplar is not None:
        ex_fields = {**exemplar.context, "label": exemplar.label or ""}
        fields.update(exemplar={**ex_fields, "response": exemplar.response},
                      exemplar_context=render_template(context_template, ex_fields),
                      exemplar_response=exemplar.response)
    else:
        fields.update(exemplar=BlankDict(), exemplar_context="", exemplar_response="")
    return render_template(template, fields)


def end_of_turn_id(tokenizer) -> int | None:
    """The token closing an assistant turn in the tokenizer's chat template (e.g. <|im_end|>,
    <end_of_turn>)."""
    sentinel = "MOPSENTINEL"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": sentinel}], tokenize=False)
    after = text[text.rfind(sentinel) + len(sentinel):] if sentinel in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return next((int(i) for i in ids if i in special), None)
