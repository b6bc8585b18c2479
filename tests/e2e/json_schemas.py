"""Varied JSON schemas for constrained-output tests: nesting, arrays, enums, bounded numbers,
patterns, optional and nullable fields, unions, constants. Strings and arrays are bounded so that
a small model's answer always completes within the tests' max_tokens (and soon: the slowest answer
sets how many steps a batch of them takes)."""

from __future__ import annotations

NAME = {"type": "string", "pattern": "^[A-Za-z][A-Za-z ]{0,15}$"}  # no escapes: a sampled \u007f is 6 tokens

SCHEMAS = {
    "nested": {"type": "object", "required": ["person"], "additionalProperties": False, "properties": {
        "person": {"type": "object", "required": ["name", "address"], "additionalProperties": False, "properties": {
            "name": NAME,
            "address": {"type": "object", "required": ["city", "zip"], "additionalProperties": False,
                        "properties": {"city": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}}}},
    "string_array": {"type": "object", "required": ["tags"], "additionalProperties": False, "properties": {
        "tags": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 3}}},
    "enum": {"type": "object", "required": ["color", "size"], "additionalProperties": False, "properties": {
        "color": {"enum": ["red", "green", "blue"]}, "size": {"type": "string", "enum": ["S", "M", "L"]}}},
    "bounded_numbers": {"type": "object", "required": ["age", "score"], "additionalProperties": False, "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": 0, "maximum": 1}}},
    "pattern": {"type": "object", "required": ["code"], "additionalProperties": False, "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}},
    "optional_field": {"type": "object", "required": ["title"], "additionalProperties": False, "properties": {
        "title": NAME, "year": {"type": "integer", "minimum": 1900, "maximum": 2100}}},
    "object_array": {"type": "object", "required": ["items"], "additionalProperties": False, "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object", "required": ["sku", "qty"], "additionalProperties": False,
            "properties": {"sku": {"type": "string", "pattern": "^[a-z]{2}[0-9]{2}$"},
                           "qty": {"type": "integer", "minimum": 1, "maximum": 99}}}}}},
    "nullable": {"type": "object", "required": ["done", "note"], "additionalProperties": False, "properties": {
        "done": {"type": "boolean"}, "note": {"anyOf": [NAME, {"type": "null"}]}}},
    "union": {"type": "object", "required": ["value"], "additionalProperties": False, "properties": {
        "value": {"anyOf": [{"type": "integer", "minimum": -50, "maximum": 50}, NAME]}}},
    "const_and_matrix": {"type": "object", "required": ["version", "matrix"], "additionalProperties": False,
                         "properties": {"version": {"const": 1}, "matrix": {
                             "type": "array", "minItems": 1, "maxItems": 2, "items": {
                                 "type": "array", "minItems": 1, "maxItems": 2,
                                 "items": {"type": "integer", "minimum": 0, "maximum": 9}}}}},
    "top_level_array": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"enum": ["yes", "no", "maybe"]}},
}
