"""The chat format (ChatML, roles, record normalization), the tokenizer, the one-pass
spans of the masking, and the golden-file checker of Parts 1-4."""
