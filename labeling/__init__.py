"""Labeling: the preference store (DuckDB), vote -> training-row rules, and the CLI."""
