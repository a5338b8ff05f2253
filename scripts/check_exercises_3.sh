#!/usr/bin/env bash
# Part 3: reverse masking, single-turn. Works from any directory; extra arguments (paths relative to the current directory) are passed on
# (e.g. --samples ../shared/reference/course/exercise_samples.json --golden ..., --show 2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python}" "$ROOT/reverse_conversation_func.py"  "$@"
