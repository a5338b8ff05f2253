"""Run summaries, loss curves, comparison tables and charts, the demo's summary."""
