"""The fast payload check: a fastjsonschema function compiled from a schema that reads the same
under draft 2020-12 (what jsonschema applies) and draft-07 (what fastjsonschema implements).

`compile_fast` returns None for any other schema, and `supervisor.validation` then asks
jsonschema alone. The subset is a whitelist, so a keyword the two drafts read differently
(`items` as an array, `additionalItems`, `dependencies`, `$ref` beside other assertions, the
2019/2020 keywords fastjsonschema does not know) or a check the two libraries implement
differently (`uniqueItems`, `enum`/`const` over numbers and booleans, formats other than the ones
below) keeps a schema on jsonschema. The formats are copies of jsonschema's own checks, so the
fast check is never looser than jsonschema; it may be stricter (then jsonschema decides).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from datetime import date
from typing import Any
from uuid import UUID

#: Keywords whose value is one subschema, a list of them, or a map of name -> subschema.
_ONE = frozenset({"not", "if", "then", "else", "additionalProperties", "propertyNames", "contains", "items"})
_MANY = frozenset({"allOf", "anyOf", "oneOf"})
_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions"})
#: Assertions both libraries implement alike, and annotations neither asserts.
_PLAIN = frozenset({
    "type", "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "required", "minProperties",
    "maxProperties", "enum", "const", "$ref",
})
_ANNOTATIONS = frozenset({
    "$schema", "$comment", "title", "description", "default", "examples", "readOnly", "writeOnly",
    "deprecated", "contentEncoding", "contentMediaType",
})
_DRAFT_2020_12 = frozenset({"https://json-schema.org/draft/2020-12/schema",
                            "https://json-schema.org/draft/2020-12/schema#"})
_RE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)

FastCheck = Callable[[Any], bool]


class _Unsupported(Exception):
    """The schema is outside the subset: jsonschema alone checks it."""


def compile_fast(schema: Any, *, formats: bool) -> FastCheck | None:
    """A function that returns True when `value` is valid (never when jsonschema would say it is
    not), or None when `schema` is outside the subset."""
    if not isinstance(schema, dict) or schema.get("$schema", next(iter(_DRAFT_2020_12))) not in _DRAFT_2020_12:
        return None
    try:
        _walk(schema, formats, root=True)
        import fastjsonschema  # noqa: PLC0415 (only clients and daemons with a schema pay for it)

        body = {k: v for k, v in schema.items() if k != "$schema"}
        check = fastjsonschema.compile(body, formats=_FORMATS, use_default=False, use_formats=formats,
                                       handlers={})
    except Exception:  # noqa: BLE001 (outside the subset, or refused by fastjsonschema: jsonschema judges it)
        return None

    def accepts(value: Any) -> bool:
        try:
            check(value)
        except Exception:  # noqa: BLE001 (refused, or a check that cannot decide: jsonschema has the last word)
            return False
        return True

    return accepts


def _walk(node: Any, formats: bool, *, root: bool = False) -> None:
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise _Unsupported
    for key, value in node.items():
        if key in _ONE:
            if key == "items" and not isinstance(value, (dict, bool)):
                raise _Unsupported  # a tuple `items` means different things in the two drafts
            _walk(value, formats)
        elif key in _MANY:
            if not isinstance(value, list):
                raise _Unsupported
            for sub in value:
                _walk(sub, formats)
        elif key in _MAP:
            if not isinstance(value, dict):
                raise _Unsupported
            for sub in value.values():
                _walk(sub, formats)
        elif key in _PLAIN:
            _check_plain(node, key, value, formats)
        elif key == "$schema" and not root:
            raise _Unsupported
        elif key not in _ANNOTATIONS:
            raise _Unsupported


def _check_plain(node: dict[str, Any], key: str, value: Any, formats: bool) -> None:
    if key == "$ref":
        # draft-07 ignores a $ref's siblings, 2020-12 applies them; only local references
        if not isinstance(value, str) or not value.startswith("#") or any(k in _PLAIN for k in node if k != "$ref"):
            raise _Unsupported
    elif key in ("enum", "const"):
        # fastjsonschema compares with ==, under which True == 1 and 1 == 1.0; jsonschema does not
        values = value if key == "enum" else [value]
        if not isinstance(values, list) or not all(isinstance(v, str) or v is None for v in values):
            raise _Unsupported
    elif key == "format" and formats and value not in _FORMATS:
        raise _Unsupported
    elif key == "pattern" and not isinstance(value, str):
        raise _Unsupported


def _is_email(value: str) -> bool:
    return "@" in value


def _is_ipv4(value: str) -> bool:
    try:
        return bool(ipaddress.IPv4Address(value))
    except ipaddress.AddressValueError:
        return False


def _is_ipv6(value: str) -> bool:
    try:
        address = ipaddress.IPv6Address(value)
    except ipaddress.AddressValueError:
        return False
    return not getattr(address, "scope_id", "")


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return all(value[position] == "-" for position in (8, 13, 18, 23))


def _is_date(value: str) -> bool:
    try:
        return bool(_RE_DATE.fullmatch(value) and date.fromisoformat(value))
    except ValueError:
        return False


def _is_datetime(value: str) -> bool:
    from rfc3339_validator import validate_rfc3339  # noqa: PLC0415

    return bool(validate_rfc3339(value.upper()))


def _is_uri(value: str) -> bool:
    from rfc3986_validator import validate_rfc3986  # noqa: PLC0415

    return bool(validate_rfc3986(value, rule="URI"))


def _is_uri_reference(value: str) -> bool:
    from rfc3986_validator import validate_rfc3986  # noqa: PLC0415

    return bool(validate_rfc3986(value, rule="URI_reference"))


def _is_regex(value: str) -> bool:
    try:
        return bool(re.compile(value))
    except re.error:
        return False


#: jsonschema's checks of the formats we promise (its `_format.py`, draft 2020-12).
_FORMATS: dict[str, Callable[[str], bool]] = {
    "email": _is_email, "idn-email": _is_email, "ipv4": _is_ipv4, "ipv6": _is_ipv6, "uuid": _is_uuid,
    "date": _is_date, "date-time": _is_datetime, "uri": _is_uri, "uri-reference": _is_uri_reference,
    "regex": _is_regex,
}
