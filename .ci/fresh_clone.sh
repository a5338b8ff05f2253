#!/usr/bin/env bash
# CI: what a new user gets. Clones the committed HEAD into a temporary folder (no untracked
# or ignored files, no assets of this machine, no ../shared beside it), runs setup.sh there
# with IFEVAL_DATA_DIR, SHARED_DIR, SMOLTALK_6K_PATH, NLTK_DATA and every HF_* variable unset
# (SKIP_PIP=1: the packages are this environment's), checks that the model, the NLTK data
# (punkt_tab; IFBench's stopwords and tagger) and the three IFEval prompt files were built,
# then answers and scores 2 prompts through ifeval/run.sh.
#   bash .ci/fresh_clone.sh          # KEEP=1 keeps the folder
set -euo pipefail
usage() {
  cat <<'EOF_USAGE'
CI: what a new user gets. Clones the committed HEAD into a temporary folder, runs setup.sh
there with the offline-source variables unset (SKIP_PIP=1: this environment's packages),
checks the model, the NLTK data and the three IFEval prompt files, then answers and scores
2 prompts through ifeval/run.sh.
  bash .ci/fresh_clone.sh          # KEEP=1 keeps the folder
EOF_USAGE
}
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then usage; exit 0; fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
t0=$SECONDS
tmp=$(mktemp -d)  # under $TMPDIR or /tmp
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$tmp"' EXIT
fail() { echo "[fresh-clone] FAILED: $*" >&2; exit 1; }

git -c advice.detachedHead=false clone -q . "$tmp/repo"
[[ $(git -C "$tmp/repo" rev-parse HEAD) == $(git rev-parse HEAD) ]] || fail "the clone is not at HEAD $(git rev-parse HEAD)"
echo "[fresh-clone] cloned HEAD $(git rev-parse --short HEAD) into $tmp/repo (uncommitted changes are not in it)"
# SKIP_PIP=1 also skips setup.sh's editable install (it would point this environment at the
# temporary clone); PYTHONPATH makes the clone's own modules the ones imported instead.
clean=(env -u IFEVAL_DATA_DIR -u SHARED_DIR -u SMOLTALK_6K_PATH -u NLTK_DATA PYTHONPATH="$tmp/repo")
for v in $(compgen -e | grep '^HF_' || true); do clean+=(-u "$v"); done
cd "$tmp/repo"
[[ ! -e ../shared ]] || fail "$tmp/shared exists"

"${clean[@]}" SKIP_PIP=1 PYTHON="$PY" bash setup.sh 2>&1 | sed 's/^/  | /' || fail "setup.sh failed (output above)"

[[ -f SmolLM2-135M/config.json && -f SmolLM2-135M/tokenizer.json ]] && compgen -G 'SmolLM2-135M/*.safetensors' >/dev/null \
  || fail "setup.sh did not build SmolLM2-135M/ (config.json, tokenizer.json, *.safetensors)"
for f in abbrev_types.txt collocations.tab ortho_context.tab sent_starters.txt; do
  [[ -s nltk_data/tokenizers/punkt_tab/english/$f ]] || fail "setup.sh did not write nltk_data/tokenizers/punkt_tab/english/$f"
done
for f in corpora/stopwords/english taggers/averaged_perceptron_tagger_eng/averaged_perceptron_tagger_eng.weights.json; do
  [[ -s nltk_data/$f ]] || fail "setup.sh did not write nltk_data/$f (IFBench's checkers need it)"
done
for pair in input_data.jsonl:541 sampled_input_data.jsonl:100 sampled_200_input_data.jsonl:200; do
  f=ifeval/data/${pair%%:*} n=${pair##*:}
  [[ -f $f ]] || fail "setup.sh did not write $f"
  [[ $(wc -l < "$f") == "$n" ]] || fail "$f has $(wc -l < "$f") lines, expected $n"
done
echo "[fresh-clone] setup built the model, the NLTK data and the 3 IFEval prompt files ($((SECONDS - t0))s so far)"

# One OpenMP thread, as in tests/ifeval/test_run_sh.py: on a busy machine more threads only wait for
# each other on these few tokens (docs/performance.md).
"${clean[@]}" PYTHON="$PY" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" bash ifeval/run.sh SmolLM2-135M "$tmp/out" --limit 2 --max_tokens 8 2>&1 | sed 's/^/  | /' \
  || fail "ifeval/run.sh failed (output above)"
"$PY" - "$tmp/out" <<'EOF' || fail "ifeval/run.sh did not answer and score 2 prompts"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
s = json.loads((out / "summary.json").read_text())
strict = [json.loads(l) for l in (out / "eval_results_strict.jsonl").read_text().splitlines() if l.strip()]
assert s["num_prompts"] == 2 and len(strict) == 2, (s["num_prompts"], len(strict))
assert all(0.0 <= s[m] <= 1.0 for m in ("prompt_level_strict_acc", "inst_level_loose_acc"))
EOF
echo "[fresh-clone] OK: fresh clone set up and scored 2 IFEval prompts in $((SECONDS - t0))s"
