#!/usr/bin/env bash
# The whole pipeline on one command (usage() below: --help prints it).
set -euo pipefail
usage() {
  cat <<'EOF_USAGE'
The whole pipeline on one command: checks -> IFEval + IFBench (base) -> SFT -> IFEval + IFBench
(fine-tuned) -> reports.

  bash scripts/demo.sh            # CPU demo on the embedded data/demo_sft.json (time: docs/performance.md)
  bash scripts/demo.sh --full     # course configuration on a GPU machine (also DEMO_FULL=1): smol-smoltalk-6k.json,
                                  # 3 epochs, sft.sh defaults, all 100 IFEval and all 294 IFBench prompts, 1024 tokens
  bash scripts/demo.sh --help

IFBench (out-of-distribution constraints) shows whether the IFEval gain carries over. The CPU
demo scores its first 50 prompts (IFBench_test.jsonl's order: 12 of its 57 constraint types)
at the same 256 tokens, to keep the CPU demo short. summary.md calls a change "not measurable"
unless its paired test's 95% interval excludes zero (docs/evaluation.md).

Knobs (environment), defaults in brackets (CPU demo / --full):
  DEMO_OUT          output folder                         [demo_out / demo_out_full]
  DEMO_PROMPT_SET   IFEval prompts                        [ifeval/data/sampled_input_data.jsonl]
  DEMO_PROMPTS      first N prompts of that set (0 = all) [0 / 0]
  DEMO_MAX_TOKENS   generation budget per answer          [256 / 1024]
  DEMO_IFBENCH_PROMPTS first N IFBench prompts, 0 = no IFBench [50 / 294 (all)]
  DEMO_DATA         training data                         [data/demo_sft.json / smol-smoltalk-6k.json]
  DEMO_STEPS        optimizer steps (0 = whole epochs)    [0 / 0]
  DEMO_EPOCHS       epochs when DEMO_STEPS=0              [1 / 3]
  DEMO_LR           learning rate                         [5e-5 / sft.sh default 2e-5]
  DEMO_TOTALBSZ     total batch size                      [8 / sft.sh default 128]
  DEMO_BSZPERDEV    per-device batch size                 [4 / sft.sh default]
  DEMO_MAXLEN       model_max_length                      [512 / sft.sh default 2048]
  DEMO_MODEL        starting checkpoint                   [SmolLM2-135M]
  DEMO_SKIP_CHECKS  1 = skip stage 1 (exercise checks)    [0]
  SEEDS             trainings of the same settings (seeds 42, 43, ...), each scored on IFEval; the
                    summary shows their spread beside the evaluation interval [1]
  PRECISION         auto, bf16 or fp32: generation (run_ifeval.py --precision) and, on a CPU, training [auto:
                    on a CPU training in bf16 where it has bf16 arithmetic, generation in fp32]
                    (on a GPU sft.sh takes the precision from the card)
Everything lands in $DEMO_OUT: ifeval_base/, ifbench_base/, ckpt/demo/, ifeval_sft/, ifbench_sft/, report/,
summary.md, summary.json; with SEEDS > 1 also ckpt/demo_seedS/ and ifeval_sft_seedS/ (S = 43, ...).
EOF_USAGE
}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}

source scripts/demo_args.sh
parse_demo_args demo.sh "${DEMO_FULL:-0}" "$@"

if [[ "$FULL" == 1 ]]; then
  OUT=${DEMO_OUT:-demo_out_full}; PROMPTS=${DEMO_PROMPTS:-0}; MAXTOK=${DEMO_MAX_TOKENS:-1024}
  IFB_PROMPTS=${DEMO_IFBENCH_PROMPTS:-294}
  DATA=${DEMO_DATA:-smol-smoltalk-6k.json}; STEPS=${DEMO_STEPS:-0}; EPOCHS=${DEMO_EPOCHS:-3}
  LR=${DEMO_LR:-}; TOTALBSZ_=${DEMO_TOTALBSZ:-}; BSZ_=${DEMO_BSZPERDEV:-}; MAXLEN=${DEMO_MAXLEN:-}
  [[ -f "$DATA" ]] || { echo "demo.sh --full: $DATA not found (bash setup.sh fetches it online; offline set SMOLTALK_6K_PATH)" >&2; exit 1; }
else
  OUT=${DEMO_OUT:-demo_out}; PROMPTS=${DEMO_PROMPTS:-0}; MAXTOK=${DEMO_MAX_TOKENS:-256}
  IFB_PROMPTS=${DEMO_IFBENCH_PROMPTS:-50}
  DATA=${DEMO_DATA:-data/demo_sft.json}; STEPS=${DEMO_STEPS:-0}; EPOCHS=${DEMO_EPOCHS:-1}
  LR=${DEMO_LR:-5e-5}; TOTALBSZ_=${DEMO_TOTALBSZ:-8}; BSZ_=${DEMO_BSZPERDEV:-4}; MAXLEN=${DEMO_MAXLEN:-512}
fi
MODEL=${DEMO_MODEL:-SmolLM2-135M}
SEEDS=${SEEDS:-1}
[[ "$SEEDS" =~ ^[1-9][0-9]*$ ]] || { echo "demo.sh: SEEDS '$SEEDS': expected an integer >= 1" >&2; exit 2; }
PROMPT_SET=${DEMO_PROMPT_SET:-ifeval/data/sampled_input_data.jsonl}
mkdir -p "$OUT"
TIMES="$OUT/stage_times.tsv"; : > "$TIMES"

checks() {
  for i in 1 2 3 4 5; do
    [[ -f scripts/check_exercises_$i.sh ]] || { echo "missing scripts/check_exercises_$i.sh" >&2; return 1; }
    bash "scripts/check_exercises_$i.sh"   # 1-4: masking golden files, 5: the loss checker
  done
}

LIMIT_ARGS=(); [[ "$PROMPTS" != 0 ]] && LIMIT_ARGS=(--limit "$PROMPTS")
# PRECISION reaches sft.sh through the environment; generation gets it as a flag.
PREC_ARGS=(); [[ -n "${PRECISION:-}" ]] && PREC_ARGS=(--precision "$PRECISION")
ifeval() {  # ifeval MODEL OUTDIR
  bash ifeval/run.sh "$1" "$2" --input_data "$PROMPT_SET" --max_tokens "$MAXTOK" "${LIMIT_ARGS[@]}" "${PREC_ARGS[@]}"
}

ifbench() {  # ifbench MODEL OUTDIR: the first $IFB_PROMPTS prompts of IFBench's own set
  bash ifeval/run.sh "$1" "$2" --benchmark ifbench --max_tokens "$MAXTOK" --limit "$IFB_PROMPTS" "${PREC_ARGS[@]}"
}

RUN=demo
train() {  # train RUNNAME [SEED]: no SEED, the training script's default (42)
  local extra=(--num_train_epochs "$EPOCHS")
  [[ -n "${2:-}" ]] && extra+=(--seed "$2")
  [[ "$STEPS" != 0 ]] && extra+=(--max_steps "$STEPS")
  [[ -n "$LR" ]] && extra+=(--learning_rate "$LR")
  [[ -n "$MAXLEN" ]] && extra+=(--model_max_length "$MAXLEN")
  env MODELPATH="$MODEL" DATAPATH="$DATA" OUTPUTPATH="$OUT/ckpt" RUNNAME="$1" \
      ${TOTALBSZ_:+TOTALBSZ=$TOTALBSZ_} ${BSZ_:+BSZPERDEV=$BSZ_} \
      bash scripts/sft.sh "${extra[@]}"
}

report() {  # compare.py makes the folder and puts the chart beside the report (.png)
  local b
  for b in ifeval ifbench; do
    [[ "$b" == ifbench && "$IFB_PROMPTS" == 0 ]] && continue
    $PY ifeval/compare.py "$OUT/${b}_base" "$OUT/${b}_sft" --names base fine-tuned --benchmark "$b" \
        --output "$OUT/report/${b}_compare.md"
  done
}

T_ALL=$SECONDS
if [[ "${DEMO_SKIP_CHECKS:-0}" != 1 ]]; then run_stage checks checks; fi
run_stage ifeval_base ifeval "$MODEL" "$OUT/ifeval_base"
if [[ "$IFB_PROMPTS" != 0 ]]; then run_stage ifbench_base ifbench "$MODEL" "$OUT/ifbench_base"; fi
run_stage train train "$RUN"
run_stage ifeval_sft ifeval "$OUT/ckpt/$RUN" "$OUT/ifeval_sft"
if [[ "$IFB_PROMPTS" != 0 ]]; then run_stage ifbench_sft ifbench "$OUT/ckpt/$RUN" "$OUT/ifbench_sft"; fi
for ((seed = 43; seed < 42 + SEEDS; seed++)); do  # training noise: the same settings, other seeds
  run_stage "train_seed$seed" train "${RUN}_seed$seed" "$seed"
  run_stage "ifeval_sft_seed$seed" ifeval "$OUT/ckpt/${RUN}_seed$seed" "$OUT/ifeval_sft_seed$seed"
done
run_stage report report
printf '%s\t%s\n' total $((SECONDS - T_ALL)) >> "$TIMES"

# Summary: the four metrics before/after and per-type changes on each benchmark, whether the
# IFEval gain carried over to IFBench, stage times, paths.
FULL_ARGS=(); [[ "$FULL" == 1 ]] && FULL_ARGS=(--full)
$PY -m smolsft.report.reports demo-summary "$OUT" --run "$RUN" "${FULL_ARGS[@]}" --prompt_set "$PROMPT_SET" \
    --prompts "$PROMPTS" --max_tokens "$MAXTOK" --data "$DATA" --ifbench_prompts "$IFB_PROMPTS" --seeds "$SEEDS"
echo; echo "demo finished: summary in $OUT/summary.md and $OUT/summary.json"
