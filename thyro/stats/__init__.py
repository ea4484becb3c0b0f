"""Statistics: metrics and intervals, summaries, the report, validation."""
