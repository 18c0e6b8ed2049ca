"""Checks: the table (one row per check), the evaluation built from it and the verdict."""
