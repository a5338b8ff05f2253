"""IFEval generation, scoring and comparison (see ifeval/scoring.py, ifeval/run_ifeval.py)."""
