"""Which JSON Schema keywords the llama engine enforces while it generates, which it only
checks afterwards, and which make it refuse the schema.

One list, read by the schema converter (``engines.schema_grammar``: which keywords constrain,
which type a schema without ``type`` is about) and quoted by the operator guide (a test
compares the two, and another that each keyword really is treated as listed). Keywords not
listed are annotations or unknown, and JSON Schema itself ignores them. Pure data.
"""

from __future__ import annotations

from typing import Final

# Enforced by the grammar, grouped by the JSON type they are about.
OBJECT_KEYWORDS: Final = frozenset({"properties", "required", "additionalProperties"})
ARRAY_KEYWORDS: Final = frozenset(
    {"items", "prefixItems", "additionalItems", "minItems", "maxItems"}
)
STRING_KEYWORDS: Final = frozenset({"pattern", "format", "minLength", "maxLength"})
NUMBER_KEYWORDS: Final = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
ANY_TYPE_KEYWORDS: Final = frozenset({"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"})

ENFORCED: Final = (
    OBJECT_KEYWORDS | ARRAY_KEYWORDS | STRING_KEYWORDS | NUMBER_KEYWORDS | ANY_TYPE_KEYWORDS
)

# Left to the validator after generation: an answer that breaks one is generated again once,
# then fails the job. Grouped the same way, so a schema with only these still gets its type.
CHECKED_OBJECT: Final = frozenset(
    {
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "unevaluatedProperties",
    }
)
CHECKED_ARRAY: Final = frozenset(
    {"uniqueItems", "contains", "minContains", "maxContains", "unevaluatedItems"}
)
CHECKED_NUMBER: Final = frozenset({"multipleOf"})
CHECKED: Final = (
    CHECKED_OBJECT | CHECKED_ARRAY | CHECKED_NUMBER | frozenset({"not", "if", "then", "else"})
)

# The job fails at once, retryable: false (other refusals depend on the value: a remote $ref,
# a lookahead in a pattern; the operator guide lists them).
REFUSED: Final = frozenset({"$dynamicRef", "$recursiveRef"})

# Constrain nothing by themselves (``$defs`` only holds what a ``$ref`` points at).
ANNOTATIONS: Final = frozenset(
    {
        "$schema",
        "$id",
        "$anchor",
        "$comment",
        "$vocabulary",
        "$defs",
        "definitions",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
    }
)

# ``format`` values the grammar writes out; others are checked when the validator's format
# checker knows them.
GRAMMAR_FORMATS: Final = ("date", "time", "date-time", "uuid")
