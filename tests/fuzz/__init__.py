"""Schemathesis against a real master's OpenAPI document."""
