"""An mkdocs hook that writes the protocol reference from the pydantic models themselves.

``docs/protocol.md`` holds two markers, which this hook replaces when the site is built:

- ``<!-- protocol-reference: summary -->``: one table row per event type (its ``type``, class,
  required and optional fields);
- ``<!-- protocol-reference: models -->``: one section per model (every event, then the models
  their fields use, such as ``ChatMessage``), with its docstring, an event's smallest wire
  JSON (made by the model itself), and a table of its fields: type, constraints, required or
  not, default, when the field is on the wire, and the field's ``description`` when the model
  gives one.

Everything comes from ``streamflow.events``: the events are the members of the ``Event``
union, so a new event type or field appears in the reference without editing the docs, and
the reference cannot drift from the code. A page that lost a marker fails the build.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Iterator
from typing import Any

import annotated_types
from mkdocs.exceptions import PluginError
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from streamflow import events as protocol

SUMMARY = "<!-- protocol-reference: summary -->"
MODELS = "<!-- protocol-reference: models -->"
PAGE = "protocol.md"


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    """mkdocs calls this for every page, with its Markdown before rendering."""
    if page.file.src_uri == PAGE:
        for marker in (SUMMARY, MODELS):
            if markdown.count(marker) != 1:
                raise PluginError(f"{PAGE} must contain the marker {marker} exactly once")
    return render(markdown)


def render(markdown: str) -> str:
    """``markdown`` with both markers replaced by the generated reference."""
    if SUMMARY in markdown:
        markdown = markdown.replace(SUMMARY, summary_table())
    if MODELS in markdown:
        markdown = markdown.replace(MODELS, model_sections())
    return markdown


def event_models() -> list[type[BaseModel]]:
    """The event classes, in the order of the ``Event`` union."""
    union = protocol.Event
    if typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    return [model for model in typing.get_args(union) if issubclass(model, BaseModel)]


def event_type(model: type[BaseModel]) -> str:
    """The value of the ``type`` field that identifies ``model`` on the wire."""
    (value,) = typing.get_args(model.model_fields["type"].annotation)
    return str(value)


def nested_models() -> list[type[BaseModel]]:
    """Models used in events' fields (``ChatMessage``), in order of first use."""
    found: list[type[BaseModel]] = []
    for model in event_models():
        for field in model.model_fields.values():
            for inner in _models_in(field.annotation):
                if inner not in found and inner not in event_models():
                    found.append(inner)
    return found


def summary_table() -> str:
    rows = ["| `type` | class | required fields | optional fields |", "|---|---|---|---|"]
    for model in event_models():
        required, optional = [], []
        for name, field in model.model_fields.items():
            if name == "type":
                continue
            (required if field.is_required() else optional).append(f"`{name}`")
        rows.append(
            f"| [`{event_type(model)}`](#{event_type(model)}) | `{model.__name__}` "
            f"| {', '.join(required) or '—'} | {', '.join(optional) or '—'} |"
        )
    return "\n".join(rows)


def model_sections() -> str:
    sections = [_section(model, anchor=event_type(model)) for model in event_models()]
    sections += [_section(model, anchor=model.__name__.lower()) for model in nested_models()]
    return "\n\n".join(sections)


def _section(model: type[BaseModel], *, anchor: str) -> str:
    lines = [f"### {model.__name__} {{#{anchor}}}", ""]
    is_event = model in event_models()
    doc = inspect.getdoc(model)
    if doc and doc != inspect.getdoc(BaseModel):
        lines += [_markdown(doc), ""]
    if is_event:
        lines += [f"Its smallest form on the wire: `{_smallest(model)}`", ""]
    described = any(field.description for field in model.model_fields.values())
    header = "| field | type | required | default | on the wire |"
    rule = "|---|---|---|---|---|"
    if described:
        header, rule = header + " description |", rule + "---|"
    lines += [header, rule]
    for name, field in model.model_fields.items():
        cells = [
            f"`{name}`",
            _type_cell(field),
            "in JSON" if is_event and name == "type" else _required(field),
            _default(field),
            _on_the_wire(field),
        ]
        if described:
            cells.append(_markdown(field.description or "").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _smallest(model: type[BaseModel]) -> str:
    """The wire JSON of ``model`` with only its required fields, each a placeholder."""
    placeholders = {str: "...", int: 1, float: 1.0, bool: False, list: [], dict: {}}
    values = {}
    for name, field in model.model_fields.items():
        if field.is_required():
            kind = typing.get_origin(field.annotation) or field.annotation
            values[name] = placeholders.get(kind)
    event = model.model_validate(values)
    return str(event.to_json())  # type: ignore[attr-defined]


def _required(field: FieldInfo) -> str:
    return "yes" if field.is_required() else "no"


def _type_cell(field: FieldInfo) -> str:
    cell = f"`{_type_name(field.annotation)}`"
    constraints = [_constraint(item) for item in field.metadata]
    if constraints:
        cell += ", " + ", ".join(constraints)
    links = [f"[{inner.__name__}](#{inner.__name__.lower()})" for inner in _models_in(field.annotation)]
    if links:
        cell += " (see " + ", ".join(links) + ")"
    return cell


def _type_name(annotation: Any) -> str:
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f'"{arg}"' if isinstance(arg, str) else repr(arg) for arg in args)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_name(arg) for arg in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(arg) for arg in args)}]"
    name = getattr(annotation, "__name__", None)
    return name if isinstance(name, str) else str(annotation)


def _constraint(item: Any) -> str:
    symbols = {
        annotated_types.Ge: ("≥", "ge"),
        annotated_types.Gt: (">", "gt"),
        annotated_types.Le: ("≤", "le"),
        annotated_types.Lt: ("<", "lt"),
        annotated_types.MinLen: ("length ≥", "min_length"),
        annotated_types.MaxLen: ("length ≤", "max_length"),
    }
    for kind, (symbol, attribute) in symbols.items():
        if isinstance(item, kind):
            return f"{symbol} {getattr(item, attribute)}"
    return f"`{item!r}`"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "—"
    if isinstance(field.default, str):
        return f"`{json.dumps(field.default)}`"
    return f"`{field.default!r}`"


def _on_the_wire(field: FieldInfo) -> str:
    # to_json() leaves out the fields that are None, and only those.
    if field.default is None:
        return "left out when `None`"
    return "always"


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


_ROLE = re.compile(r":(?:class|func|data|meth|attr|mod):`~?(?:[\w.]*\.)?([\w]+)`")


def _markdown(text: str) -> str:
    """reStructuredText docstring markup as Markdown: ``x`` and :class:`~a.B` become code."""
    text = _ROLE.sub(r"`\1`", text)
    return text.replace("``", "`")
