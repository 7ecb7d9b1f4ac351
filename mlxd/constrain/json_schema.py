"""The JSON Schema subset of OpenAI's strict mode, compiled to a byte grammar; and a validator.

Supported: ``type`` (a name or a list), ``enum``, ``const``, ``anyOf``, ``$ref`` to ``#...`` JSON
pointers (``$defs``/``definitions``, recursion included), ``properties``, ``required``,
``additionalProperties``, ``items``, ``minItems``, ``maxItems``; annotations (``title``,
``description``, ``default``, ``examples``, ...) are ignored. Anything else is refused with a
``SchemaError`` naming the keyword and where it sits, e.g. ``pattern`` and ``format``.

What generation produces is always valid, sometimes narrower than the schema allows:
- an object with ``properties`` gets only those keys, in order (``additionalProperties`` true or a
  schema adds none); one without ``properties`` gets free keys unless it says ``false``;
- a schema with no type and no object/array keywords means any JSON value;
- ``strict: false`` changes nothing: every schema is enforced.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from urllib.parse import unquote

from mlxd.constrain.grammar import Grammar, GrammarError
from mlxd.constrain.jsongrammar import Builder, literal_bytes

__all__ = ["SchemaError", "Grammar", "compile_schema", "validate", "ValidationError"]

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
}
ROOT_ONLY = {"$schema", "$id"}
OBJECT_KEYWORDS = {"properties", "required", "additionalProperties"}
ARRAY_KEYWORDS = {"items", "minItems", "maxItems"}
KEYWORDS = (
    {"type", "enum", "const", "anyOf", "$ref", "$defs", "definitions"}
    | OBJECT_KEYWORDS
    | ARRAY_KEYWORDS
    | ANNOTATIONS
)
MAX_COUNTED_ITEMS = 1024  # minItems/maxItems cost one grammar state per item counted
CACHE_SIZE = 64  # compiled schemas kept, by canonical JSON


class SchemaError(ValueError):
    """The schema uses something outside the subset, or is not a valid schema."""


class ValidationError(ValueError):
    """An instance does not match a schema (``validate``)."""


_cache: OrderedDict[str, Grammar] = OrderedDict()


def compile_schema(schema: dict | None) -> Grammar:
    """A grammar for JSON text valid against ``schema``; ``None`` means any JSON object."""
    if schema is not None and not isinstance(schema, dict):
        raise SchemaError("a schema must be a JSON object")
    try:
        return _compile(schema)
    except RecursionError:
        raise SchemaError("the schema is nested too deeply") from None


def _compile(schema: dict | None) -> Grammar:
    try:
        key = "json_object" if schema is None else json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"the schema is not JSON: {exc}") from None
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    builder = Builder()
    if schema is None:
        value = builder.free_object(builder.any_value(1))
    else:
        for word in ROOT_ONLY & set(schema):
            if not isinstance(schema[word], str):
                raise SchemaError(f"'{word}' must be a string")
        value = _Compiler(schema, builder).node(schema, "#")
    try:
        grammar = Grammar(builder.machines, value, key)
    except GrammarError as exc:
        raise SchemaError(str(exc)) from None
    _cache[key] = grammar
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return grammar


class _Compiler:
    def __init__(self, root: dict, builder: Builder) -> None:
        self.root = root
        self.b = builder
        self.refs: dict[str, int] = {}

    def node(self, schema, path: str) -> int:
        if schema is True or schema == {}:
            return self.b.any_value(1)
        if schema is False:
            raise SchemaError(f"{path}: the schema 'false' allows no value")
        if not isinstance(schema, dict):
            raise SchemaError(f"{path}: a schema must be an object, not {json.dumps(schema)}")
        _check_keywords(schema, path, root=path == "#")
        if "$ref" in schema:
            return self._ref(schema, path)
        if "anyOf" in schema:
            return self._any_of(schema, path)
        if "enum" in schema or "const" in schema:
            return self._enum(schema, path)
        alts = [self._typed(t, schema, path) for t in _types(schema, path)]
        return self.b.choice(alts, f"{path} (type)")

    def _ref(self, schema: dict, path: str) -> int:
        ref = schema["$ref"]
        others = set(schema) - {"$ref", "$defs", "definitions"} - ANNOTATIONS - ROOT_ONLY
        if others:
            raise SchemaError(f"{path}: '$ref' cannot be combined with '{sorted(others)[0]}'")
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(
                f"{path}: only local '$ref' (starting with '#') is supported, not {json.dumps(ref)}"
            )
        pointer = unquote(ref[1:])
        if pointer not in self.refs:
            self.refs[pointer] = self.b.reference(ref)
            target = _resolve(self.root, pointer, path)
            self.b.resolve(self.refs[pointer], self.node(target, "#" + pointer))
        return self.refs[pointer]

    def _any_of(self, schema: dict, path: str) -> int:
        alts = schema["anyOf"]
        others = set(schema) - {"anyOf", "$defs", "definitions"} - ANNOTATIONS - ROOT_ONLY
        if others:
            raise SchemaError(
                f"{path}: 'anyOf' cannot be combined with '{sorted(others)[0]}' "
                "(move it into each branch)"
            )
        if not isinstance(alts, list) or not alts:
            raise SchemaError(f"{path}/anyOf: must be a non-empty array of schemas")
        return self.b.choice(
            [self.node(a, f"{path}/anyOf/{i}") for i, a in enumerate(alts)], f"{path}/anyOf"
        )

    def _enum(self, schema: dict, path: str) -> int:
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{path}/enum: must be a non-empty array")
        else:
            values = [schema["const"]]
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const")}
        if "enum" in schema and "const" in schema:
            rest["const"] = schema["const"]
        _types(rest, path)  # a bad "type" is an error even beside enum
        spelled = []
        for value in values:
            try:
                text = literal_bytes(value)
            except (TypeError, ValueError):
                raise SchemaError(f"{path}: enum/const value {value!r} is not JSON") from None
            if _is_valid(value, rest, self.root) and text not in spelled:
                spelled.append(text)
        if not spelled:
            raise SchemaError(f"{path}: no enum/const value matches the schema's other keywords")
        return self.b.literals(spelled, f"{path}/enum")

    def _typed(self, kind: str, schema: dict, path: str) -> int:
        if kind == "object":
            return self._object(schema, path)
        if kind == "array":
            return self._array(schema, path)
        if kind == "boolean":
            return self.b.literals([b"true", b"false"], "boolean")
        if kind == "null":
            return self.b.literals([b"null"], "null")
        if kind == "any":
            return self.b.any_value(1)
        return self.b.leaf(kind)  # string, number, integer

    def _object(self, schema: dict, path: str) -> int:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(props, dict):
            raise SchemaError(f"{path}/properties: must be an object")
        if (
            not isinstance(required, list)
            or not all(isinstance(r, str) for r in required)
            or len(set(required)) != len(required)
        ):
            raise SchemaError(f"{path}/required: must be an array of distinct strings")
        for name in required:
            if name not in props:
                raise SchemaError(f"{path}/required: '{name}' is not in 'properties'")
        if not isinstance(extra, (bool, dict)):
            raise SchemaError(f"{path}/additionalProperties: must be a boolean or a schema")
        extra_value = (
            None if isinstance(extra, bool) else self.node(extra, f"{path}/additionalProperties")
        )
        if not props:
            if extra is False:
                return self.b.literals([b"{}"], path)
            return self.b.free_object(
                extra_value if extra_value is not None else self.b.any_value(1)
            )
        entries = [
            (name, self.node(sub, f"{path}/properties/{_escape(name)}"), name in required)
            for name, sub in props.items()
        ]
        return self.b.obj(entries, path)

    def _array(self, schema: dict, path: str) -> int:
        bounds = []
        for word in ("minItems", "maxItems"):
            n = schema.get(word)
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
                raise SchemaError(f"{path}/{word}: must be a non-negative integer")
            if n is not None and n > MAX_COUNTED_ITEMS:
                raise SchemaError(f"{path}/{word}: at most {MAX_COUNTED_ITEMS} is supported")
            bounds.append(n)
        lo, hi = bounds[0] or 0, bounds[1]
        if hi is not None and lo > hi:
            raise SchemaError(f"{path}: minItems is greater than maxItems")
        items = schema.get("items")
        if isinstance(items, list):
            raise SchemaError(f"{path}/items: an array of schemas (tuple form) is not supported")
        item = self.b.any_value(1) if items is None else self.node(items, f"{path}/items")
        return self.b.array(item, lo, hi)


def _check_keywords(schema: dict, path: str, root: bool) -> None:
    allowed = KEYWORDS | ROOT_ONLY if root else KEYWORDS
    unknown = [k for k in schema if k not in allowed]
    if unknown:
        word = unknown[0]
        where = f" at {path}" if path != "#" else ""
        raise SchemaError(
            f"unsupported JSON Schema keyword '{word}'{where}"
            + ("" if word not in ROOT_ONLY else " (allowed only at the root)")
        )
    for defs in ("$defs", "definitions"):
        if defs in schema and not isinstance(schema[defs], dict):
            raise SchemaError(f"{path}/{defs}: must be an object")


def _types(schema: dict, path: str) -> list[str]:
    """The types to generate. Without 'type', object or array keywords imply one; else any."""
    kinds = schema.get("type")
    if kinds is None:
        if OBJECT_KEYWORDS & set(schema):
            return ["object"]
        if ARRAY_KEYWORDS & set(schema):
            return ["array"]
        return ["any"]
    names = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SchemaError(f"{path}/type: must be a type name or a non-empty array of them")
    for name in names:
        if name not in TYPES:
            raise SchemaError(f"{path}/type: unknown type '{name}' (one of {', '.join(TYPES)})")
    return list(dict.fromkeys(names))


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _resolve(root: dict, pointer: str, path: str):
    """RFC 6901: '' is the whole document; '/a~1b/0' walks keys and indices."""
    node = root
    if pointer == "":
        return node
    if not pointer.startswith("/"):
        raise SchemaError(f"{path}: '$ref' '#{pointer}' is not a JSON pointer")
    for part in pointer[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SchemaError(f"{path}: '$ref' '#{pointer}' does not resolve")
    return node


# ----- validation (the same subset; unknown keywords are ignored, as JSON Schema says) -----


def validate(instance, schema, root=None, path: str = "$") -> None:
    """Raise ``ValidationError`` (naming the JSON path) unless ``instance`` matches ``schema``."""
    root = schema if root is None else root
    if schema is True or schema is None:
        return
    if schema is False:
        raise ValidationError(f"{path}: no value is allowed here")
    if "$ref" in schema:
        validate(instance, _resolve(root, unquote(schema["$ref"][1:]), path), root, path)
    if "anyOf" in schema and not any(_is_valid(instance, s, root) for s in schema["anyOf"]):
        raise ValidationError(f"{path}: matches no anyOf branch")
    if "enum" in schema and not any(_json_equal(instance, v) for v in schema["enum"]):
        raise ValidationError(f"{path}: {json.dumps(instance)} is not one of the enum values")
    if "const" in schema and not _json_equal(instance, schema["const"]):
        raise ValidationError(f"{path}: {json.dumps(instance)} is not the const value")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is_type(instance, k) for k in kinds):
            raise ValidationError(f"{path}: {json.dumps(instance)} is not of type {kinds}")
    if isinstance(instance, dict):
        _validate_object(instance, schema, root, path)
    elif isinstance(instance, list):
        items = schema.get("items")
        if schema.get("minItems") is not None and len(instance) < schema["minItems"]:
            raise ValidationError(f"{path}: fewer than {schema['minItems']} items")
        if schema.get("maxItems") is not None and len(instance) > schema["maxItems"]:
            raise ValidationError(f"{path}: more than {schema['maxItems']} items")
        if isinstance(items, (dict, bool)):
            for i, item in enumerate(instance):
                validate(item, items, root, f"{path}[{i}]")


def _validate_object(instance: dict, schema: dict, root, path: str) -> None:
    props = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in instance:
            raise ValidationError(f"{path}: missing required property '{name}'")
    extra = schema.get("additionalProperties", True)
    for name, value in instance.items():
        if name in props:
            validate(value, props[name], root, f"{path}.{name}")
        elif extra is False:
            raise ValidationError(f"{path}: unexpected property '{name}'")
        elif isinstance(extra, dict):
            validate(value, extra, root, f"{path}.{name}")


def _is_valid(instance, schema, root) -> bool:
    try:
        validate(instance, schema, root)
    except ValidationError:
        return False
    return True


def _is_type(value, kind: str) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer()
        )
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(
        value,
        {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}.get(
            kind, ()
        ),
    )


def _json_equal(a, b) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 (Python's == says otherwise)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_json_equal, a, b))
    return type(a) is type(b) and a == b
