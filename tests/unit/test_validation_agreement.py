"""The fast payload check (supervisor.fast_check) never accepts what jsonschema rejects.

jsonschema is the judge of a payload; the fast check only spares a valid payload the cost of
importing it. Each schema below is in the fast subset (the test asserts that, so it cannot pass
by falling back), and hypothesis throws JSON values at both: whatever the fast check accepts,
jsonschema must accept. Each promised format also gets the tricky strings of its RFC.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from supervisor.fast_check import compile_fast
from supervisor.validation import check_payload, compile_schema

FORMATS = ["email", "idn-email", "date", "date-time", "uri", "uri-reference", "uuid", "ipv4", "ipv6", "regex"]

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "required": ["sku", "qty"], "additionalProperties": False,
     "properties": {"sku": {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[A-Z]+$"},
                    "qty": {"type": "integer", "minimum": 1, "exclusiveMaximum": 10}}},
    {"type": "array", "items": {"type": "number", "multipleOf": 0.5}, "minItems": 1, "maxItems": 3},
    {"anyOf": [{"type": "string"}, {"type": "null"}], "not": {"const": "x"}},
    {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 2}]},
    {"type": "object", "patternProperties": {"^n": {"type": "boolean"}}, "propertyNames": {"maxLength": 3},
     "minProperties": 1, "maxProperties": 2},
    {"if": {"type": "string"}, "then": {"enum": ["a", "b", None]}, "else": {"type": ["integer", "boolean"]}},
    {"$defs": {"item": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}},
     "type": "array", "items": {"$ref": "#/$defs/item"}, "contains": {"type": "object"}},
    {"type": "object", "properties": {f: {"type": "string", "format": f} for f in FORMATS}},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-20, 20) | st.floats(-20, 20, allow_nan=False)
    | st.sampled_from(["", "a", "b", "x", "AB", "ABCDEF", "n1", "2024-02-29", "not a date"]) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["sku", "qty", "id", "n1", "nx", "longname", *FORMATS]), inner, max_size=4),
    max_leaves=12,
)


def _jsonschema_accepts(schema: dict[str, Any], value: Any) -> bool:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return bool(cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(value))


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: ",".join(sorted(s))[:40])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_the_fast_check_never_accepts_what_jsonschema_rejects(schema: dict[str, Any], value: Any) -> None:
    fast = compile_fast(schema, formats=True)
    assert fast is not None, "this schema is meant to be in the fast subset"
    if fast(value):
        assert _jsonschema_accepts(schema, value), f"fast check accepted {value!r}"


TRICKY = {
    "email": ["a@b", "@", "no-at", "a@", ""],
    "date": ["2024-02-29", "2023-02-29", "2024-1-01", "\uff12\uff10\uff12\uff14-01-01", "2024-01-01\n", "20240101"],
    "date-time": ["2024-01-01T00:00:00Z", "2024-01-01t00:00:00z", "2024-01-01T00:00:00", "2024-01-01 00:00:00Z",
                  "2024-01-01T25:00:00Z", "2024-01-01T00:00:00+05:30", "2024-01-01T00:00:60Z"],
    "uri": ["https://example.com/a?b#c", "example.com", "urn:isbn:0451450523", "http://[::1]/", "a b:c", ""],
    "uri-reference": ["/a/b", "../x", "https://x", "a b", "#frag", ""],
    "uuid": ["12345678-1234-5678-1234-567812345678", "123456781234567812345678123456789",
             "{12345678-1234-5678-1234-567812345678}", "urn:uuid:12345678-1234-5678-1234-567812345678",
             "12345678123456781234567812345678"],
    "ipv4": ["127.0.0.1", "256.0.0.1", "1.2.3", "01.2.3.4", "::1"],
    "ipv6": ["::1", "fe80::1%eth0", "1::2::3", "127.0.0.1", "::ffff:1.2.3.4"],
    "regex": ["^a+$", "(", "[a-", "\\d"],
}


@pytest.mark.parametrize("fmt", sorted(TRICKY))
def test_each_promised_format_agrees_with_jsonschema_on_tricky_strings(fmt: str) -> None:
    schema = {"type": "string", "format": fmt}
    fast = compile_fast(schema, formats=True)
    assert fast is not None
    for value in TRICKY[fmt]:
        assert fast(value) == _jsonschema_accepts(schema, value), (fmt, value)


@pytest.mark.parametrize("schema", [
    {"type": "array", "prefixItems": [{"type": "string"}]},    # 2020-12 only
    {"type": "array", "uniqueItems": True},                    # 1 and 1.0 compare differently
    {"enum": [1, True]},                                       # True == 1 in Python
    {"$ref": "#/$defs/a", "minimum": 3, "$defs": {"a": {"type": "integer"}}},  # siblings of $ref
    {"type": "object", "dependentRequired": {"a": ["b"]}},
    {"type": "string", "format": "hostname"},                  # a format we do not copy
    {"$schema": "http://json-schema.org/draft-07/schema#", "type": "string"},
])
def test_schemas_outside_the_subset_are_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_fast(schema, formats=True) is None
    validator = compile_schema(schema)
    check_payload("t", validator, _valid_for(schema))  # jsonschema still accepts what is valid


def test_a_tuple_items_schema_is_left_to_jsonschema() -> None:
    # draft-07's tuple form; 2020-12 spells it prefixItems and jsonschema refuses it as a schema
    assert compile_fast({"type": "array", "items": [{"type": "string"}]}, formats=True) is None


def _valid_for(schema: dict[str, Any]) -> Any:
    if schema.get("type") == "array":
        return ["x"]
    if schema.get("type") == "object":
        return {"a": 1, "b": 2}
    if "enum" in schema:
        return True
    if "$ref" in schema:
        return 4
    return "example.com" if schema.get("format") else "s"


def test_a_valid_payload_is_accepted_without_importing_jsonschema() -> None:
    code = textwrap.dedent("""
        import sys
        from supervisor.validation import check_payload, compile_schema
        from supervisor.errors import InvalidPayload
        v = compile_schema({"type": "object", "required": ["email"],
                            "properties": {"email": {"type": "string", "format": "email"},
                                           "at": {"type": "string", "format": "date-time"}}})
        check_payload("t", v, {"email": "a@b", "at": "2024-01-01T00:00:00Z"})
        print("jsonschema" in sys.modules)
        try:
            check_payload("t", v, {"email": "nope", "at": 5})
        except InvalidPayload as exc:
            print(exc.problems)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "False", "the valid payload imported jsonschema"
    assert "payload.email" in out[1] and "payload.at" in out[1], out[1]
