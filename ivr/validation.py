"""Validation errors in the words an operator reads, for every front end of one schema.

Pydantic's own messages ("Input should be a valid integer") say little about what to write
instead; :func:`explain` says what was expected and what came, and for an unknown key which keys
the object has and which one was probably meant. The REST API's 422 answers and the routing
rules' ``RuleError`` (YAML import, ``routing.rules_file``) use the same words.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel


def kind(value: object) -> str:
    """What a value is, in JSON words, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def shown(value: object) -> str:
    """``value`` for a message, cut short (a wrong value may be megabytes, or a structure
    whose full repr would be: only a few items and levels are ever rendered)."""
    text = _SHORT.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 2, 4, 4, 4, 4
_SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 80, 40, 80


def explain(error: Mapping[str, Any], allowed: Sequence[str] | None = None) -> str:
    """A pydantic error in the words an operator reads: what was expected, what came.

    ``allowed`` lists the keys of the object an unknown key was found in (for a "did you mean").
    Messages written by the validators themselves come through unchanged.
    """
    kind_of, given, ctx = error.get("type", ""), error.get("input"), error.get("ctx") or {}
    got = f"{kind(given)} {shown(given)}" if not isinstance(given, Mapping | list) else kind(given)
    if kind_of == "missing":
        return "is required"
    if kind_of == "extra_forbidden":
        if not allowed:
            return "unknown key"
        close = difflib.get_close_matches(str(error["loc"][-1]), list(allowed), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key (expected one of {', '.join(sorted(allowed))}){hint}"
    if kind_of in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got}"
    if kind_of in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if kind_of == "finite_number":
        return f"must be a finite number, got {shown(given)}"
    if kind_of in ("string_type", "string_unicode"):
        return f"expected a string, got {got}"
    if kind_of in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if kind_of in ("list_type", "tuple_type"):
        return f"expected a list, got {got}"
    if kind_of in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected an object, got {got}"
    if kind_of == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"unknown value {shown(given)} (expected one of {expected})"
    if kind_of in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {"greater_than": "greater than", "greater_than_equal": "at least",
                 "less_than": "less than", "less_than_equal": "at most"}[kind_of]
        bound = next(iter(ctx.values()), "")
        return f"must be {words} {bound:g}, got {shown(given)}" if isinstance(
            bound, int | float) else f"must be {words} {bound}, got {shown(given)}"
    if kind_of in ("too_short", "too_long"):
        limit = ctx.get("min_length" if kind_of == "too_short" else "max_length")
        unit = "characters" if isinstance(given, str) else "items"
        return f"at {'least' if kind_of == 'too_short' else 'most'} {limit} {unit}"
    if kind_of == "string_pattern_mismatch":
        return f"{shown(given)} does not match {ctx.get('pattern', 'the pattern')}"
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation such as ``list[WindowModel] | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def keys_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys of the object at ``loc`` inside ``model`` (empty when it is not a model)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return []
        current = _model_in(current.model_fields[part].annotation)
    return list(current.model_fields) if current is not None else []
