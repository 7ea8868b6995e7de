"""Shared test helpers (fixtures' building blocks); import as `from helpers.NAME import ...`."""
