"""Declared variables: every variable a role (roles/<role>/schema.yml) or opskit itself
(opskit/core/defaults/<area>.yml) reads, with its type, default, constraints and a doc line.

The inventory loader checks every value it reads against its declaration once, at load, so a
bad value is refused before anything connects (exit 2). docs/writing-a-role.md documents the
format; in short, one entry per variable:

    backup_schedule:
      type: cron                  # see TYPES
      default: "0 */6 * * *"
      doc: When the backup runs (cron syntax), as postgres.

Constraints: `min`/`max` (inclusive) and `above` (exclusive) for numbers, `pattern` (a Python
regular expression the whole text must match) for text, `choices` for enums, `items` (and
`min_items`) for lists, `keys`/`values`/`fields` for mappings, `one_of` for either-or types,
`schemes` for URLs, `absolute: false` for paths on the operator's machine. Modifiers: `nullable`
(null accepted), `empty` ("" accepted: "not set"), `required` (a host with the role must set it:
neither null nor ""), `secret` (a non-empty value must come from `{secret: NAME}`).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from opskit.core.cron import validate_cron_schedule
from opskit.core.errors import ConfigError
from opskit.core.secrets import Secret

# type -> what a value of it is, in words (messages and the README tables)
TYPES: dict[str, str] = {
    "any": "any value",
    "str": "text",
    "int": "a whole number",
    "number": "a number",
    "bool": "true or false",
    "enum": "one of the choices",
    "list": "a list",
    "mapping": "a mapping",
    "cron": "a cron schedule (5 fields, or @daily, @hourly, ...)",
    "timezone": "an IANA time zone name (e.g. UTC, Europe/Berlin)",
    "port": "a TCP port number 1-65535",
    "path": "an absolute path",
    "url": "a URL",
    "duration": "a duration: seconds, or a number with s, m, h, d or w (10m, 1h)",
    "size": "a size: bytes, or a number with k, m or g (512k, 10m, 1g)",
    "host": "a host name or IP address",
    "network": "an IP network in CIDR notation (10.0.0.0/24)",
    "email": "an e-mail address",
}
DOC_POINTER = "docs/writing-a-role.md"

_DURATION = re.compile(r"(\d+[smhdw])+|\d+")
_SIZE = re.compile(r"\d+[kKmMgG]?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_EMAIL = re.compile(r"[^@\s,;'\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


@dataclass(frozen=True)
class Spec:
    """What values a variable (or a list item, mapping value or field) accepts."""

    type: str = "any"
    doc: str = ""
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    above: float | None = None
    pattern: str | None = None
    items: Spec | None = None
    min_items: int = 0
    keys: Spec | None = None
    values: Spec | None = None
    fields: Mapping[str, Spec] | None = None
    one_of: tuple[Spec, ...] = ()
    schemes: tuple[str, ...] = ("http", "https")
    absolute: bool = True
    nullable: bool = False
    empty: bool = False
    required: bool = False
    secret: bool = False
    what: str = ""  # what a value is, in words ("an S3 bucket name"): messages and docs


# What a declaration may say: the Spec's fields, and the variable's default.
SPEC_KEYS = frozenset({f.name for f in dataclasses.fields(Spec)} | {"default"})


@dataclass(frozen=True)
class Variable:
    """One declared variable: `owner` is the role name, or `opskit` for opskit's own."""

    name: str
    spec: Spec
    default: Any
    owner: str
    source: Path

    @property
    def doc(self) -> str:
        return self.spec.doc


class Invalid(ConfigError):
    """A value does not fit its spec; `at` is where inside it ('', '[2]', '.path', ...)."""

    def __init__(self, at: str, message: str) -> None:
        super().__init__(f"{at}: {message}" if at else message)
        self.at, self.message = at, message


# --- reading declarations ---------------------------------------------------------------------


def parse_spec(raw: Any, where: str) -> Spec:
    """A Spec from its YAML form (a mapping, or a type name such as `int` or `list of path`)."""
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with at least `type` and `doc`")
    unknown = [k for k in raw if k not in SPEC_KEYS]
    if unknown:
        hint = did_you_mean(unknown[0], SPEC_KEYS)
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'{hint}")
    kind = raw.get("type")
    if kind is None:
        kind = "enum" if "choices" in raw else "one_of" if "one_of" in raw else "any"
    if not isinstance(kind, str):
        raise ConfigError(f"{where}.type: expected a type name ({', '.join(TYPES)})")
    items = raw.get("items")
    if kind.startswith("list of "):
        if items is not None:
            raise ConfigError(f"{where}: give the item type once (`list of X` or `items`)")
        kind, items = "list", kind.removeprefix("list of ").strip()
    if kind not in TYPES and kind != "one_of":
        raise ConfigError(f"{where}.type: unknown type '{kind}'{did_you_mean(kind, TYPES)}")
    choices = raw.get("choices", ())
    if kind == "enum" and (not isinstance(choices, list) or not choices):
        raise ConfigError(f"{where}.choices: an enum needs a non-empty list of choices")
    one_of = raw.get("one_of", ())
    if kind == "one_of" and (not isinstance(one_of, list) or len(one_of) < 2):
        raise ConfigError(f"{where}.one_of: a list of at least two specs")
    for key in ("min", "max", "above"):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{where}.{key}: expected a number")
    pattern = raw.get("pattern")
    if pattern is not None:
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise ConfigError(f"{where}.pattern: not a regular expression ({exc})") from None
    fields = raw.get("fields")
    if fields is not None and not isinstance(fields, dict):
        raise ConfigError(f"{where}.fields: expected a mapping of field name: spec")
    schemes = raw.get("schemes", ["http", "https"])
    if not isinstance(schemes, list) or not all(isinstance(s, str) for s in schemes):
        raise ConfigError(f"{where}.schemes: expected a list of URL schemes")
    flags = {k: raw.get(k, False) for k in ("nullable", "empty", "required", "secret")}
    flags["absolute"] = raw.get("absolute", True)
    for key, flag in flags.items():
        if not isinstance(flag, bool):
            raise ConfigError(f"{where}.{key}: expected true or false")
    doc, what = raw.get("doc", ""), raw.get("what", "")
    if not isinstance(doc, str) or not isinstance(what, str):
        raise ConfigError(f"{where}: `doc` and `what` are text")
    return Spec(
        type=kind,
        doc=" ".join(doc.split()),
        choices=tuple(choices),
        min=raw.get("min"),
        max=raw.get("max"),
        above=raw.get("above"),
        pattern=None if pattern is None else str(pattern),
        items=None if items is None else parse_spec(items, f"{where}.items"),
        min_items=int(raw.get("min_items", 0)),
        keys=None if raw.get("keys") is None else parse_spec(raw["keys"], f"{where}.keys"),
        values=None if raw.get("values") is None else parse_spec(raw["values"], f"{where}.values"),
        fields=None
        if fields is None
        else {str(k): parse_spec(f, f"{where}.fields.{k}") for k, f in fields.items()},
        one_of=tuple(parse_spec(s, f"{where}.one_of[{i}]") for i, s in enumerate(one_of)),
        schemes=tuple(schemes),
        what=what,
        **flags,
    )


# libyaml's parser when PyYAML has it (same safe schema, same errors with their marks): every
# command reads every role's declarations, and the pure-Python parser is most of a small run's
# start-up.
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=SAFE_LOADER)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of variables")
    return data


def load_schema(path: Path, owner: str, prefix: str) -> dict[str, Variable]:
    """The variables declared in `path` (schema form); every name starts with `prefix`, every
    entry has a type and a doc line, and every default fits its own declaration."""
    out: dict[str, Variable] = {}
    for name, raw in read_yaml_mapping(path).items():
        name = str(name)
        where = f"{path}: {name}"
        if not name.startswith(prefix):
            raise ConfigError(f"{where}: variables here start with '{prefix}'")
        if not isinstance(raw, dict) or not {"type", "choices", "one_of"} & set(raw):
            raise ConfigError(
                f"{where}: expected {{type: ..., default: ..., doc: ...}} "
                f"(how to declare a variable: {DOC_POINTER})"
            )
        if not raw.get("doc"):
            raise ConfigError(f"{where}: missing `doc` (one line saying what it does)")
        if "default" not in raw:
            raise ConfigError(f"{where}: missing `default` (null for a required variable)")
        spec = parse_spec(raw, where)
        default = raw["default"]
        if not (spec.required and default in (None, "")):
            try:
                check(spec, default)
            except Invalid as exc:
                raise ConfigError(f"{where}: the default does not fit: {exc}") from None
        out[name] = Variable(name, spec, default, owner, path)
    return out


def infer_variables(path: Path, owner: str, prefix: str) -> dict[str, Variable]:
    """The variables of a plain `defaults.yml` (name: default), typed after their defaults:
    text, whole number, number, true/false, list, mapping; null accepts anything."""
    kinds = {bool: "bool", int: "int", float: "number", str: "str", list: "list", dict: "mapping"}
    out: dict[str, Variable] = {}
    for name, default in read_yaml_mapping(path).items():
        name = str(name)
        if not name.startswith(prefix):
            raise ConfigError(f"{path}: {name}: role variables start with '{prefix}'")
        kind = "any" if default is None else kinds.get(type(default), "any")
        spec = Spec(type=kind, doc="(declared in defaults.yml, typed after its default)")
        out[name] = Variable(name, spec, default, owner, path)
    return out


# --- checking values --------------------------------------------------------------------------


def check(spec: Spec, value: Any, at: str = "") -> None:
    """Raise Invalid when `value` does not fit `spec`; a secret value is never shown.

    >>> check(parse_spec({"type": "int", "min": 1}, "x"), 0)
    Traceback (most recent call last):
    ...
    opskit.core.schema.Invalid: expected a whole number >= 1, got 0
    >>> check(parse_spec("list of port", "x"), [22, "http"])
    Traceback (most recent call last):
    ...
    opskit.core.schema.Invalid: [1]: expected a TCP port number 1-65535, got 'http'
    """
    if value is None:
        if spec.nullable or spec.type == "any":
            return
        raise Invalid(at, f"expected {describe(spec)}, got null")
    if spec.empty and isinstance(value, str) and value == "":
        return
    if spec.secret and not isinstance(value, Secret) and value != "":
        # Never echo it: a credential was written where it must not be.
        raise Invalid(
            at, "must be a secret reference {secret: NAME}, not a plain value in the inventory"
        )
    problem = _problem(spec, value, at)
    if problem is not None:
        raise problem


def _problem(spec: Spec, value: Any, at: str) -> Invalid | None:
    kind = spec.type
    if kind == "any":
        return None
    if kind == "one_of":
        for option in spec.one_of:
            try:
                check(option, value, at)
            except Invalid:
                continue
            return None
        return _expected(spec, value, at)
    checker = _CHECKERS[kind]
    result = checker(spec, value, at)
    if isinstance(result, Invalid):
        return result
    if result is False:
        return _expected(spec, value, at)
    return None


def _expected(spec: Spec, value: Any, at: str, hint: str = "") -> Invalid:
    if spec.what:
        return Invalid(at, f"{shown(value)} is not {spec.what}{hint}")
    return Invalid(at, f"expected {describe(spec)}, got {shown(value)}{hint}")


def shown(value: Any) -> str:
    """A value as an error message may show it: a secret never.

    >>> shown("abc"), shown(Secret("hunter2")), shown(3)
    ("'abc'", 'the secret value', '3')
    """
    if isinstance(value, Secret):
        return "the secret value"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _in_range(spec: Spec, value: float) -> bool:
    return (
        (spec.min is None or value >= spec.min)
        and (spec.max is None or value <= spec.max)
        and (spec.above is None or value > spec.above)
    )


def _str(spec: Spec, value: Any, at: str) -> bool:
    if not isinstance(value, str):
        return False
    return spec.pattern is None or re.fullmatch(spec.pattern, value) is not None


def _int(spec: Spec, value: Any, at: str) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _in_range(spec, value)


def _number(spec: Spec, value: Any, at: str) -> bool:
    return _is_number(value) and _in_range(spec, value)


def _bool(spec: Spec, value: Any, at: str) -> bool:
    return isinstance(value, bool)


def _enum(spec: Spec, value: Any, at: str) -> bool | Invalid:
    if any(type(value) is type(c) and value == c for c in spec.choices):
        return True
    words = [str(c) for c in spec.choices]
    plain = isinstance(value, str) and not isinstance(value, Secret)
    hint = did_you_mean(value, words) if plain else ""
    return _expected(spec, value, at, hint)


def _list(spec: Spec, value: Any, at: str) -> bool | Invalid:
    if not isinstance(value, list) or len(value) < spec.min_items:
        return False
    if spec.items is not None:
        for i, item in enumerate(value):
            check(spec.items, item, f"{at}[{i}]")
    return True


def _mapping(spec: Spec, value: Any, at: str) -> bool | Invalid:
    if not isinstance(value, dict):
        return False
    for k in value:
        if not isinstance(k, str):
            return Invalid(at, f"keys must be text, got {k!r}")
        if spec.keys is not None:
            try:
                check(spec.keys, k)
            except Invalid as exc:
                return Invalid(f"{at}.{k}", f"not an allowed key: {exc.message}")
    if spec.fields is not None:
        for k in value:
            if k not in spec.fields:
                hint = did_you_mean(k, spec.fields)
                allowed = ", ".join(spec.fields)
                return Invalid(f"{at}.{k}", f"unknown field{hint} (fields: {allowed})")
        for k, field_spec in spec.fields.items():
            if k in value:
                check(field_spec, value[k], f"{at}.{k}")
            elif field_spec.required:
                what = field_spec.doc or describe(field_spec)
                return Invalid(at, f"missing field '{k}' ({what})")
    if spec.values is not None:
        for k, v in value.items():
            check(spec.values, v, f"{at}.{k}")
    return True


def _cron(spec: Spec, value: Any, at: str) -> bool | Invalid:
    if not isinstance(value, str):
        return False
    try:
        validate_cron_schedule(value)
    except ConfigError as exc:
        return _expected(spec, value, at) if isinstance(value, Secret) else Invalid(at, str(exc))
    return True


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _timezone(spec: Spec, value: Any, at: str) -> bool | Invalid:
    if not isinstance(value, str):
        return False
    if value in _zones():
        return True
    hint = "" if isinstance(value, Secret) else did_you_mean(value, _zones())
    return Invalid(at, f"unknown time zone {shown(value)}{hint} (e.g. UTC, Europe/Berlin)")


def _port(spec: Spec, value: Any, at: str) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def _path(spec: Spec, value: Any, at: str) -> bool:
    if not isinstance(value, str) or not value or "\n" in value or "\0" in value:
        return False
    return not spec.absolute or value.startswith("/")


def _url(spec: Spec, value: Any, at: str) -> bool:
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in spec.schemes and bool(parts.netloc)


def _duration(spec: Spec, value: Any, at: str) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    return isinstance(value, str) and _DURATION.fullmatch(value) is not None


def _size(spec: Spec, value: Any, at: str) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    return isinstance(value, str) and _SIZE.fullmatch(value) is not None


def _host(spec: Spec, value: Any, at: str) -> bool:
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return all(_HOST_LABEL.fullmatch(label) for label in value.rstrip(".").split("."))
    return True


def _network(spec: Spec, value: Any, at: str) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _email(spec: Spec, value: Any, at: str) -> bool:
    return isinstance(value, str) and _EMAIL.fullmatch(value) is not None


_CHECKERS: dict[str, Any] = {
    "str": _str,
    "int": _int,
    "number": _number,
    "bool": _bool,
    "enum": _enum,
    "list": _list,
    "mapping": _mapping,
    "cron": _cron,
    "timezone": _timezone,
    "port": _port,
    "path": _path,
    "url": _url,
    "duration": _duration,
    "size": _size,
    "host": _host,
    "network": _network,
    "email": _email,
}


def is_unset(value: Any) -> bool:
    """What `required` refuses: null or the empty string."""
    return value is None or (isinstance(value, str) and value == "")


# --- describing -------------------------------------------------------------------------------


def _bounds(spec: Spec) -> str:
    def n(x: float) -> str:
        return f"{x:g}"

    if spec.min is not None and spec.max is not None:
        return f" {n(spec.min)}-{n(spec.max)}"
    parts = []
    if spec.above is not None:
        parts.append(f"> {n(spec.above)}")
    if spec.min is not None:
        parts.append(f">= {n(spec.min)}")
    if spec.max is not None:
        parts.append(f"<= {n(spec.max)}")
    return " " + " and ".join(parts) if parts else ""


def describe(spec: Spec) -> str:
    """What a value of `spec` is, in words.

    >>> describe(parse_spec({"type": "int", "min": 0, "max": 9}, "x"))
    'a whole number 0-9'
    >>> describe(parse_spec({"choices": ["cluster", "fork"]}, "x"))
    'one of cluster, fork'
    >>> describe(parse_spec({"type": "list of network"}, "x"))
    'a list of: an IP network in CIDR notation (10.0.0.0/24)'
    """
    kind = spec.type
    if spec.what:
        text = spec.what
    elif kind == "one_of":
        text = " or ".join(describe(s) for s in spec.one_of)
    elif kind == "enum":
        text = "one of " + ", ".join(str(c) for c in spec.choices)
    elif kind in ("int", "number"):
        text = TYPES[kind] + _bounds(spec)
    elif kind == "str" and spec.pattern is not None:
        text = f"text matching {spec.pattern}"
    elif kind == "list":
        text = "a list" + (" (not empty)" if spec.min_items else "")
        if spec.items is not None:
            text += f" of: {describe(spec.items)}"
    elif kind == "mapping" and spec.fields is not None:
        text = "a mapping with " + ", ".join(spec.fields)
    elif kind == "mapping":
        text = "a mapping"
        if spec.keys is not None:
            text += f" of {describe(spec.keys)}"
        if spec.values is not None:
            text += f" to {describe(spec.values)}"
    elif kind == "url":
        names = "http(s)" if set(spec.schemes) == {"http", "https"} else "/".join(spec.schemes)
        text = ("an " if names[0] in "aehiou" else "a ") + names + " URL"
    elif kind == "path" and not spec.absolute:
        text = "a file path (relative or absolute)"
    else:
        text = TYPES[kind]
    if spec.nullable:
        text += ", or null"
    if spec.empty:
        text += ', or "" (not set)'
    return text


def short_type(spec: Spec) -> str:
    """A compact form of the type for tables: `int 1-64`, `list of path`, `cluster\\|fork`."""
    kind = spec.type
    if spec.what:
        text = re.sub(r"^(an?|the|one) | \(.*\)$", "", spec.what)
    elif kind == "one_of":
        text = " or ".join(short_type(s) for s in spec.one_of)
    elif kind == "enum":
        text = " \\| ".join(str(c) for c in spec.choices)
    elif kind in ("int", "number"):
        text = kind + _bounds(spec)
    elif kind == "list":
        text = "list" if spec.items is None else f"list of {short_type(spec.items)}"
    elif kind == "url" and spec.schemes != ("http", "https"):
        text = "/".join(spec.schemes) + " URL"
    elif kind == "url":
        text = "URL"
    elif kind == "path" and not spec.absolute:
        text = "file"
    else:
        text = kind
    if spec.secret:
        text += ", secret"
    if spec.nullable:
        text += ", or null"
    return text


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A "did you mean" suffix, or ''.

    >>> did_you_mean("base_timezon", ["base_timezone", "base_packages"])
    " (did you mean 'base_timezone'?)"
    """
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --- the README tables ------------------------------------------------------------------------

TABLE_START = "<!-- variables: generated from schema.yml, do not edit by hand"
TABLE_END = "<!-- /variables -->"
UPDATE_HINT = "OPSKIT_UPDATE_DOCS=1 .venv/bin/python -m pytest tests/unit/test_role_docs.py"


def _flow(value: Any) -> str:
    if value == "":
        return '""'
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def variables_table(variables: Iterable[Variable]) -> str:
    """The Markdown table of a schema: variable, type, default, meaning."""
    rows = [
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for var in variables:
        spec = var.spec
        if spec.required and is_unset(var.default):
            default = "**required**"
        else:
            default = f"`{_flow(var.default)}`".replace("|", "\\|")
        doc = spec.doc.replace("|", "\\|")
        rows.append(f"| `{var.name}` | {short_type(spec)} | {default} | {doc} |")
    return "\n".join(rows)


def readme_with_table(text: str, table: str, where: str) -> str:
    """`text` (a README) with the generated block between the markers replaced by `table`."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ConfigError(
            f"{where}: no generated variables table (the lines {TABLE_START} ... -->"
            f" and {TABLE_END})"
        )
    head_end = text.index("\n", start) + 1
    return text[:head_end] + table + "\n" + text[end:]
