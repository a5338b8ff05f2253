#!/usr/bin/env bash
# Part 5: the cross-entropy loss against reference_answers.pkl. Works from any directory; extra arguments are passed on
# (e.g. --reference other.pkl, --no_grad).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python}" "$ROOT/loss_functions_checker.py" "$@"
