"""Token cross-entropy without the full fp32 logits: the chunked kernel (shared with
Part 5's reference solution) and the fused output-layer loss the trainer uses by default."""
