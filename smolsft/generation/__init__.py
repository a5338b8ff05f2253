"""Generation for the evaluator and the simulator alike: vLLM (CPU and GPU) and
transformers' ``generate()``, and the resumable response files."""
