"""Training data: read JSON/JSONL chat records, mask them with the course's functions,
cache the features, count every drop, batch them."""
