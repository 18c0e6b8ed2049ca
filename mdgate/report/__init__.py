"""The report: Markdown, per-stage sections, champion comparison, plots."""
