"""How the OpenAPI document describes bodies, parameters and errors, as strict as the API.

- Every msgspec Struct (request and response bodies) is described by msgspec's own JSON
  Schema of it, the schema msgspec decodes with: lengths, patterns, ranges, enums, formats,
  required members, `additionalProperties: false` where unknown members are refused, and the
  schema text declared next to each field (`msgspec.Meta`, whose `extra_json_schema` carries
  what a service checks besides, declared beside its validator). Litestar's own rendering
  drops several of these; `MsgspecSchemaPlugin` takes its place for Structs. A Struct may
  add class variables: `openapi_examples` (whole example bodies), `openapi_extra` (rules
  between its fields) and `openapi_type` (a type describing it instead, such as a union
  tagged by `provider`).
- What app/inputs.py refuses in every body is said everywhere: no NUL in a string or member
  name; a value of any type is a `JsonValue`.
- Path parameters the controllers take as plain strings get the patterns their validators
  use; every /v1 operation lists the errors it can answer as RFC 9457 problems
  (`ProblemDetails`): 401, 403, 422 and 429 on all of them (authentication, scopes and mode,
  input checked on every route, rate limits), 400 and 413 where a body is read, 404 where
  the path names an object. Others (409, 503) are declared on their routes
  (`problem_responses`). `complete_document` adds these once the app has built the document.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    Discriminator,
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Parameter,
    Reference,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from app.problems import MEDIA_TYPE, ProblemDetails

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

PROBLEM_REF = "#/components/schemas/ProblemDetails"
JSON_VALUE_REF = "#/components/schemas/JsonValue"
# No string of a body holds NUL (app/inputs.py refuses it everywhere).
NO_NUL = "^[^\\u0000]*$"
_HAS_NUL = {"pattern": "\\u0000"}
_INT64 = {"minimum": -(2**63), "maximum": 2**64 - 1}  # what the JSON decoder takes
JSON_VALUE: dict[str, Any] = {
    "description": "Any JSON value, without NUL (U+0000) in its strings or member names and "
    "nested at most 32 arrays and objects deep counting the whole body.",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "integer", **_INT64},
        {"type": "number"},
        {"type": "string", "pattern": NO_NUL},
        {"type": "array", "items": {"$ref": JSON_VALUE_REF}},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": JSON_VALUE_REF},
        },
    ],
}
#: A Struct's class variable listing whole example bodies (`ClassVar[list[dict[str, Any]]]`).
OPENAPI_EXAMPLES = "openapi_examples"
#: A Struct's class variable of JSON Schema keywords added to its own: rules between its
#: fields that the service checks (`{"anyOf": [{"required": ["html"]}, …]}`).
OPENAPI_EXTRA = "openapi_extra"
#: A Struct's class variable naming the type whose JSON Schema describes it instead.
OPENAPI_TYPE = "openapi_type"
_REF = re.compile(r"^#/components/schemas/(?P<name>.+)$")
# JSON Schema keywords whose Litestar attribute name is not the snake_case of the keyword.
_RENAMED = {"$ref": "ref", "not": "schema_not", "if": "schema_if", "else": "schema_else"}


def _snake(key: str) -> str:
    return _RENAMED.get(key) or re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def _struct_types(root: Any) -> Iterator[type[msgspec.Struct]]:
    """Every Struct type reachable from `root`, for naming what msgspec's schema refers to."""
    for info in msgspec.inspect.multi_type_info([root]):
        yield from _walk(info, set())


def _walk(info: msgspec.inspect.Type, seen: set[int]) -> Iterator[type[msgspec.Struct]]:
    if id(info) in seen:
        return
    seen.add(id(info))
    if isinstance(info, msgspec.inspect.StructType):
        yield info.cls
        for field in info.fields:
            yield from _walk(field.type, seen)
        return
    for name in ("type", "item_type", "key_type", "value_type"):
        inner = getattr(info, name, None)
        if isinstance(inner, msgspec.inspect.Type):
            yield from _walk(inner, seen)
    for inner in getattr(info, "types", ()) or ():
        yield from _walk(inner, seen)
    for inner in getattr(info, "item_types", ()) or ():
        yield from _walk(inner, seen)


def _every_struct(root: type[msgspec.Struct] = msgspec.Struct) -> Iterator[type[msgspec.Struct]]:
    for cls in root.__subclasses__():
        if cls.__module__.startswith("app."):
            yield cls
        yield from _every_struct(cls)


class MsgspecSchemaPlugin(OpenAPISchemaPlugin):
    """Describes msgspec Structs with `msgspec.json.schema` (see the module docstring)."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return not field_definition.is_union and field_definition.is_subclass_of(msgspec.Struct)

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        struct = field_definition.type_
        # A body may be described by another type than the one it is decoded into: a union
        # tagged by one member, say, whose variants the service tells apart itself.
        described = getattr(struct, OPENAPI_TYPE, struct)
        (root,), definitions = msgspec.json.schema_components(
            [described], ref_template="#/components/schemas/{name}"
        )
        # Reachable types first; a schema declared by hand (`extra_json_schema`) may name
        # any other Struct of the app.
        by_name = {t.__name__: t for t in _every_struct()}
        by_name |= {t.__name__: t for t in _struct_types(described)}
        schema = schema_creator.schema_registry.get_schema_for_field_definition(field_definition)
        own = _REF.match(root.get("$ref", ""))
        # A Struct (itself or the one describing it) is its definition; a union is the root.
        body = definitions[own["name"]] if own else root
        body = {**body, **getattr(struct, OPENAPI_EXTRA, {})}
        converted = _convert(body, by_name, schema_creator)
        assert isinstance(converted, Schema)
        for name in converted.__dataclass_fields__:
            value = getattr(converted, name)
            if value is not None:
                setattr(schema, name, value)
        schema.title = struct.__name__
        if described is not struct:
            schema.type = OpenAPIType.OBJECT  # every variant is: the body becomes a component
            if struct.__doc__:
                schema.description = inspect.cleandoc(struct.__doc__)
        if examples := getattr(struct, OPENAPI_EXAMPLES, None):
            schema.examples = list(examples)
        return schema


def _without_nul(value: dict[str, Any]) -> dict[str, Any]:
    """The schema with what app/inputs.py refuses in every body said: no NUL in strings or
    member names; a value of any type is a `JsonValue` (which says it all the way down)."""
    if not value:
        return {"$ref": JSON_VALUE_REF}
    kind = value.get("type")
    if kind == "string":
        if "pattern" not in value:
            return {**value, "pattern": NO_NUL}
        if "not" not in value:
            return {**value, "not": _HAS_NUL}
    if kind == "object" and "properties" not in value:
        value = {"propertyNames": {"pattern": NO_NUL}, **value}
        if value.get("additionalProperties", True) in (True, {}):
            value["additionalProperties"] = {"$ref": JSON_VALUE_REF}
    return value


def _convert(
    value: dict[str, Any], by_name: dict[str, type[msgspec.Struct]], creator: SchemaCreator
) -> Schema | Reference:
    value = _without_nul(value)
    if value.get("$ref") == JSON_VALUE_REF:
        return Reference(ref=JSON_VALUE_REF)  # added by complete_document
    if "$ref" in value:
        match = _REF.match(value["$ref"])
        assert match is not None
        ref = creator.for_field_definition(FieldDefinition.from_annotation(by_name[match["name"]]))
        rest = {k: v for k, v in value.items() if k != "$ref"}
        if not rest:
            return ref
        # Constraints declared where the Struct is used (`extra_json_schema`) apply with it.
        value = {"allOf": [{"$ref": value["$ref"]}], **rest}
    fields: dict[str, Any] = {}
    for key, member in value.items():
        name = _snake(key)
        if key in ("properties", "$defs", "patternProperties", "dependentSchemas"):
            member = {k: _convert(v, by_name, creator) for k, v in member.items()}
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            member = [_convert(v, by_name, creator) for v in member]
        elif key == "examples":
            member = list(member)
        elif key in ("items", "additionalProperties", "not", "contains", "propertyNames"):
            if isinstance(member, dict):
                member = _convert(member, by_name, creator)
        elif key == "type":
            member = (
                [OpenAPIType(t) for t in member]
                if isinstance(member, list)
                else OpenAPIType(member)
            )
        elif key == "format":
            member = OpenAPIFormat(member) if member in OpenAPIFormat._value2member_map_ else member
        elif key == "discriminator":
            member = Discriminator(
                property_name=member["propertyName"], mapping=member.get("mapping")
            )
        fields[name] = member
    return Schema(**fields)


def problem_responses(described: dict[int, str]) -> dict[int, ResponseSpec]:
    """`responses=` of a route for problems it alone answers: `{409: "why"}`."""
    return {
        status: ResponseSpec(
            data_container=ProblemDetails,
            description=text,
            media_type=MEDIA_TYPE,
            generate_examples=False,
        )
        for status, text in described.items()
    }


# The errors every /v1 operation may answer, and those that depend on what it reads.
_ALWAYS = {
    "401": "No API key, or one that is unknown, revoked or malformed.",
    "403": "The key lacks the scope or mode this endpoint requires (`insufficient_scope`, "
    "`live_mode_required`), or is an inbox token outside the inbox.",
    "422": "Invalid input: `errors` names each offending field (`to[3].email`, `limit`, …).",
    "429": "Over the tenant's or the key's rate limit; `Retry-After` says when to come back.",
}
_WITH_BODY = {
    "400": "The body is not JSON, or nests arrays and objects too deeply.",
    "413": "The body is larger than this endpoint accepts.",
}
_WITH_PATH_OBJECT = {"404": "Nothing of this tenant and mode is at this path."}


def complete_document(openapi: OpenAPI) -> None:
    """Add `JsonValue` and the errors each /v1 operation may answer (in place)."""
    components = openapi.components
    assert isinstance(components, Components) and components.schemas is not None
    # Registered by the routes that declare problems of their own (`problem_responses`).
    assert "ProblemDetails" in components.schemas, "no route declares a problem response"
    json_value = _plain(JSON_VALUE)
    assert isinstance(json_value, Schema)
    components.schemas["JsonValue"] = json_value
    for path, item in (openapi.paths or {}).items():
        if not path.startswith("/v1/"):
            continue
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if isinstance(operation, Operation):
                _declare(operation, path)


def _plain(value: dict[str, Any]) -> Schema | Reference:
    """A hand-written schema (its refs to components already in the document) as a Schema."""
    if "$ref" in value:
        return Reference(ref=value["$ref"])
    fields: dict[str, Any] = {}
    for key, member in value.items():
        if key in ("items", "additionalProperties", "propertyNames") and isinstance(member, dict):
            member = _plain(member)
        elif key == "anyOf":
            member = [_plain(v) for v in member]
        elif key == "type":
            member = OpenAPIType(member)
        fields[_snake(key)] = member
    return Schema(**fields)


def _path_parameters() -> dict[tuple[str, str], dict[str, Any]]:
    """(path prefix, parameter) → what the service accepts in that part of the path, from the
    constants its validators use (the controllers take these parameters as plain strings)."""
    from app.categories.keys import KEY_SCHEMA as CATEGORY_KEY_SCHEMA
    from app.channels import CHANNELS
    from app.recipients.validation import (
        EXTERNAL_ID_SCHEMA,
        MAX_EXTERNAL_ID,
        MAX_TOPIC_KEY,
        TOPIC_KEY_SCHEMA,
    )
    from app.templates.validation import KEY_PATTERN

    external_id = {**EXTERNAL_ID_SCHEMA, "minLength": 1, "maxLength": MAX_EXTERNAL_ID}
    return {
        ("/v1/templates/", "key"): {"pattern": KEY_PATTERN},
        ("/v1/categories/", "key"): CATEGORY_KEY_SCHEMA,
        ("/v1/recipients/", "external_id"): external_id,
        ("/v1/topics/", "key"): {**TOPIC_KEY_SCHEMA, "minLength": 1, "maxLength": MAX_TOPIC_KEY},
        ("/v1/tenant/kill-switches/", "channel"): {"enum": list(CHANNELS)},
    }


def _declare_path_parameters(operation: Operation, path: str) -> None:
    for parameter in operation.parameters or []:
        if not isinstance(parameter, Parameter) or parameter.param_in != "path":
            continue
        for (prefix, name), rules in _path_parameters().items():
            if path.startswith(prefix) and parameter.name == name:
                schema = parameter.schema
                assert isinstance(schema, Schema)
                for key, value in rules.items():
                    setattr(schema, _snake(key), value)


def _declare(operation: Operation, path: str) -> None:
    _declare_path_parameters(operation, path)
    wanted = dict(_ALWAYS)
    if operation.request_body is not None:
        wanted |= _WITH_BODY
    if "{" in path:
        wanted |= _WITH_PATH_OBJECT
    responses = operation.responses if operation.responses is not None else {}
    framework_400 = responses.get("400")
    if framework_400 is not None and _is_framework_default(framework_400):
        # Litestar's invalid-parameter answer, which app/problems.py sends as a 422 problem.
        del responses["400"]
    for status, description in wanted.items():
        if status not in responses or _is_framework_default(responses[status]):
            responses[status] = _problem(description)
    operation.responses = responses


def _is_framework_default(response: OpenAPIResponse | Reference) -> bool:
    """Litestar's own 400, shaped as its exception rather than as our problem."""
    if not isinstance(response, OpenAPIResponse) or not response.content:
        return False
    media = response.content.get("application/json")
    return media is not None and MEDIA_TYPE not in response.content


def _problem(description: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={MEDIA_TYPE: OpenAPIMediaType(schema=Reference(ref=PROBLEM_REF))},
    )
