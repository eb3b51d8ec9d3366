"""msgspec's validation messages as sentences a person reads, led by the field they name.

msgspec says ``Expected `str` of length >= 8 - at `$.password```; people (the CLI's error
line, the dashboard's forms) read ``password: must be at least 8 characters``. Every place
where a validation failure can reach a person goes through :func:`explain` (the master's
error handler, the CLI's and the dashboard's own checks, settings), so the wording is one.
A message this module does not recognise keeps msgspec's words after the field's name.
"""

from __future__ import annotations

import re

import msgspec

from mlsm import errors

_AT = re.compile(r" - at `(?:(?P<key>[^`]*)` in `)?(?P<path>\$[^`]*)`$")
_BOUND = re.compile(r"^Expected `(?P<type>\w+)` (?P<op>>=|<=|>|<) (?P<n>-?[\d.e+-]+)$")
_LENGTH = re.compile(r"^Expected `(?P<type>\w+)` of length (?P<op>>=|<=) (?P<n>\d+)$")
_REGEX = re.compile(r"^Expected `str` matching regex (?P<regex>.+)$")
_TYPE = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_ENUM = re.compile(r"^Invalid enum value (?P<value>.+)$")
_MULTIPLE = re.compile(r"^Expected `\w+` that is a multiple of (?P<n>[\d.]+)$")

#: msgspec's type names in words.
_TYPE_WORDS = {
    "str": "text",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping of names to values",
    "null": "empty (null)",
}
_COMPARE = {">=": "at least", "<=": "at most", ">": "greater than", "<": "less than"}


def field_of(path: str) -> str:
    """``$.argv[0]`` -> ``argv[0]``; ``$`` (the whole value) -> ``''``."""
    return path.removeprefix("$").removeprefix(".")


def _words(type_name: str) -> str:
    return " or ".join(_TYPE_WORDS.get(t.strip(), t.strip()) for t in type_name.split("|"))


def _number(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else text


def _sentence(text: str) -> tuple[str, str]:
    """The sentence for one message without its location, and a field it names itself."""
    if m := _LENGTH.match(text):
        n, op = int(m["n"]), m["op"]
        unit = {"str": "character", "array": "item", "object": "entry"}.get(m["type"], "item")
        if op == ">=" and n == 1:
            return "must not be empty", ""
        plural = unit if n == 1 else ("entries" if unit == "entry" else unit + "s")
        verb = "must be" if unit == "character" else "must have"
        return f"{verb} {_COMPARE[op]} {n} {plural}", ""
    if m := _BOUND.match(text):
        return f"must be {_COMPARE[m['op']]} {_number(m['n'])}", ""
    if m := _REGEX.match(text):
        return f"has characters or a form that is not allowed (it must match {m['regex']})", ""
    if m := _TYPE.match(text):
        return f"must be {_words(m['want'])}, not {_words(m['got'])}", ""
    if m := _MISSING.match(text):
        return "is required", m["field"]
    if m := _UNKNOWN.match(text):
        return "is not a known field", m["field"]
    if m := _ENUM.match(text):
        return f"{m['value']} is not one of the allowed values", ""
    if m := _MULTIPLE.match(text):
        return f"must be a multiple of {_number(m['n'])}", ""
    return text, ""


def explain(message: str, key: str = "") -> tuple[str, str]:
    """``(field, "field: sentence")`` for one msgspec message; ``key`` names the field when
    the message does not (a query parameter's name)."""
    text = " ".join(str(message).split())
    where = key
    if m := _AT.search(text):
        text = text[: m.start()]
        inner = field_of(m["path"])
        if m["key"]:  # a mapping's key was wrong: name the mapping
            where = f"{inner} key" if inner else "key"
        else:
            where = inner or key
    sentence, named = _sentence(text)
    if named:
        where = f"{where}.{named}" if where else named
    field = where.removesuffix(" key")
    return field, f"{where}: {sentence}" if where else sentence[:1].upper() + sentence[1:]


def validation_error(exc: msgspec.ValidationError, key: str = "") -> errors.ValidationError:
    """The :class:`~mlsm.errors.ValidationError` a person reads for a msgspec failure."""
    field, sentence = explain(str(exc), key)
    return errors.ValidationError(sentence, path=field)
