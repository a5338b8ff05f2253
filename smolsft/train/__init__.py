"""A training run's bookkeeping: its plan and manifest, checkpoint completeness and
resume, the checks of its settings, and what it adds to the HF Trainer."""
