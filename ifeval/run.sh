#!/usr/bin/env bash
# Answer and score the IFEval prompts with one checkpoint (ifeval/run_ifeval.py --mode all).
set -euo pipefail
usage() {
  cat <<'EOF_USAGE'
Answer and score the IFEval (or IFBench) prompts with one checkpoint (ifeval/run_ifeval.py --mode all).

  bash ifeval/run.sh MODEL_PATH OUTPUT_DIR [extra run_ifeval.py args]
  bash ifeval/run.sh SmolLM2-135M outputs/ifeval_base
  bash ifeval/run.sh ckpt/HW2 outputs/ifeval_hw2 --limit 8 --max_tokens 64
  bash ifeval/run.sh ckpt/HW2 outputs/ifeval_hw2_full --input_data ifeval/data/input_data.jsonl
  bash ifeval/run.sh ckpt/HW2 outputs/ifbench_hw2 --benchmark ifbench    # IFBench's 294 prompts

Defaults (run_ifeval.py's own): the course's 100-prompt set (ifeval/data/sampled_input_data.jsonl)
and --max_tokens 1024. Extra arguments are passed on, so they override the defaults.
Works from the repository root or from ifeval/: MODEL_PATH is looked up relative to the
current directory, then the repository root, else used as a hub id; OUTPUT_DIR is
relative to the current directory.
Environment: PYTHON [python] picks the interpreter.
EOF_USAGE
}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=${PYTHON:-python}

if [[ $# -ge 1 && ( "$1" == "-h" || "$1" == "--help" ) ]]; then
  usage
  echo
  exec "$PY" "$here/run_ifeval.py" --help
fi
if [[ $# -lt 2 ]]; then
  echo "usage: bash ifeval/run.sh MODEL_PATH OUTPUT_DIR [extra run_ifeval.py args]   (--help for more)" >&2
  exit 2
fi
model=$1 out=$2
shift 2
exec "$PY" "$here/run_ifeval.py" --model_path "$model" --output_dir "$out" "$@"
