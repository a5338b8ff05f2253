#!/usr/bin/env bash
# The user simulator demo (Parts 3-4): usage() below says what it does and its knobs.
usage() {
  cat <<'EOF'
Parts 3-4 made real: train a user simulator (--mask_mode reverse), measure it against the
starting model on a held-out split, let it talk to an assistant, and report.

  bash scripts/simulator_demo.sh           # CPU, embedded data/demo_sft.json
  bash scripts/simulator_demo.sh --full    # course scale on a GPU: smol-smoltalk-6k.json, sft.sh defaults
  bash scripts/simulator_demo.sh --help

Stages: split (fixed held-out records, never trained on) -> train (sft.sh --mask_mode reverse
on the rest) -> simulate (scripts/simulate.py: assistant and simulator talk) -> measure
(scripts/simulator_eval.py: user-turn perplexity, back-translation chrF, role confusion
validated on real turns, diversity, and UserLM's six measures for base, prompted_user,
simulator and human) -> report (smolsft/report/reports.py simulator: OUT/simulator.md).
The simulator is trained with each record's intent in its system message and, unless
SIMDEMO_END_MARKER=0, with --simulator_end_marker (it learns to end a conversation).

Knobs (environment), defaults CPU / --full:
  SIMDEMO_OUT        output folder                          [simulator_out / simulator_out_full]
  SIMDEMO_DATA       chat data                              [data/demo_sft.json / smol-smoltalk-6k.json]
  SIMDEMO_HELDOUT    records held out                       [40 / 200]
  SIMDEMO_MODEL      starting checkpoint (and role judge)    [SmolLM2-135M]
  SIMDEMO_ASSISTANT  assistant that talks to the simulator   [demo_out/ckpt/demo if there, else SIMDEMO_MODEL]
  SIMDEMO_STEPS      optimizer steps, 0 = whole epochs      [16 / 0]
  SIMDEMO_EPOCHS     epochs when SIMDEMO_STEPS=0            [1 / 3]
  SIMDEMO_LR         learning rate                          [5e-4 / sft.sh default]
  SIMDEMO_TOTALBSZ, SIMDEMO_BSZPERDEV                       [8, 4 / sft.sh defaults]
  SIMDEMO_MAXLEN     model_max_length                       [512 / sft.sh default]
                     (right truncation cuts a conversation's end and with it the end
                     marker: docs/simulator.md says how many samples keep it)
  CPU_RANKS          training processes on a CPU            [1 / sft.sh default]
  SIMDEMO_DIRECT=1   train in one plain process without DeepSpeed (crowded machines)
  SIMDEMO_TRAIN_ARGS more training flags, e.g. "--optim adafactor" (no Adam states in memory)
  SIMDEMO_LIMIT      dialogues                              [8 / 50]
  SIMDEMO_ROUNDS     assistant turns per dialogue           [3 / 5]
  SIMDEMO_MAXTOK     new tokens per turn                    [64 / 256]
  SIMDEMO_BACKEND    generation engine of the dialogues     [auto: vLLM when installed]
  SIMDEMO_ROLE_ITEMS real user/assistant pairs judged, 0=all [16 / 0]
  SIMDEMO_CHRF_ITEMS single-turn pairs back-translated, 0=all [12 / 0]
  SIMDEMO_PROBE_ITEMS dialogues probed for role/intent adherence, 0=all [12 / 0]
  SIMDEMO_FIRST_ITEMS dialogues whose first turn is written, 0=all [20 / 0]
  SIMDEMO_EOC_ITEMS  end-of-conversation states judged, 0=all [24 / 0]
  SIMDEMO_END_MARKER train the end-of-conversation turn (1) or not (0) [1 / 1]
EOF
}
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}

source scripts/demo_args.sh
parse_demo_args simulator_demo.sh "${SIMDEMO_FULL:-0}" "$@"
if [[ "$FULL" == 1 ]]; then
  OUT=${SIMDEMO_OUT:-simulator_out_full}; DATA=${SIMDEMO_DATA:-smol-smoltalk-6k.json}; HELDOUT=${SIMDEMO_HELDOUT:-200}
  STEPS=${SIMDEMO_STEPS:-0}; EPOCHS=${SIMDEMO_EPOCHS:-3}; LR=${SIMDEMO_LR:-}; TOTALBSZ_=${SIMDEMO_TOTALBSZ:-}
  BSZ_=${SIMDEMO_BSZPERDEV:-}; MAXLEN=${SIMDEMO_MAXLEN:-}; LIMIT=${SIMDEMO_LIMIT:-50}; ROUNDS=${SIMDEMO_ROUNDS:-5}
  MAXTOK=${SIMDEMO_MAXTOK:-256}; ROLE_ITEMS=${SIMDEMO_ROLE_ITEMS:-0}; CHRF_ITEMS=${SIMDEMO_CHRF_ITEMS:-0}
  PROBE_ITEMS=${SIMDEMO_PROBE_ITEMS:-0}; FIRST_ITEMS=${SIMDEMO_FIRST_ITEMS:-0}; EOC_ITEMS=${SIMDEMO_EOC_ITEMS:-0}
  [[ -f "$DATA" ]] || { echo "simulator_demo.sh --full: $DATA not found (bash setup.sh fetches it online)" >&2; exit 1; }
else
  OUT=${SIMDEMO_OUT:-simulator_out}; DATA=${SIMDEMO_DATA:-data/demo_sft.json}; HELDOUT=${SIMDEMO_HELDOUT:-40}
  STEPS=${SIMDEMO_STEPS:-16}; EPOCHS=${SIMDEMO_EPOCHS:-1}; LR=${SIMDEMO_LR:-5e-4}; TOTALBSZ_=${SIMDEMO_TOTALBSZ:-8}
  BSZ_=${SIMDEMO_BSZPERDEV:-4}; MAXLEN=${SIMDEMO_MAXLEN:-512};
  # One training process: two DeepSpeed ranks on 2 cores are no faster and hold two copies in memory.
  export CPU_RANKS=${CPU_RANKS:-1}; LIMIT=${SIMDEMO_LIMIT:-8}; ROUNDS=${SIMDEMO_ROUNDS:-3}
  MAXTOK=${SIMDEMO_MAXTOK:-64}; ROLE_ITEMS=${SIMDEMO_ROLE_ITEMS:-16}; CHRF_ITEMS=${SIMDEMO_CHRF_ITEMS:-12}
  PROBE_ITEMS=${SIMDEMO_PROBE_ITEMS:-12}; FIRST_ITEMS=${SIMDEMO_FIRST_ITEMS:-20}; EOC_ITEMS=${SIMDEMO_EOC_ITEMS:-24}
fi
MODEL=${SIMDEMO_MODEL:-SmolLM2-135M}
if [[ -z "${SIMDEMO_ASSISTANT:-}" && -f demo_out/ckpt/demo/config.json ]]; then ASSISTANT=demo_out/ckpt/demo
else ASSISTANT=${SIMDEMO_ASSISTANT:-$MODEL}; fi
BACKEND=${SIMDEMO_BACKEND:-auto}
mkdir -p "$OUT"
TIMES="$OUT/stage_times.tsv"; : > "$TIMES"
echo "load_start	$(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/load.tsv"

split() { $PY scripts/simulator_eval.py split --data "$DATA" --heldout "$HELDOUT" --out_dir "$OUT/split"; }

train() {
  local extra=(--num_train_epochs "$EPOCHS" --mask_mode reverse --save_steps 100000)
  [[ "${SIMDEMO_END_MARKER:-1}" == 1 ]] && extra+=(--simulator_end_marker True)
  [[ "$STEPS" != 0 ]] && extra+=(--max_steps "$STEPS")
  [[ -n "$LR" ]] && extra+=(--learning_rate "$LR")
  [[ -n "$MAXLEN" ]] && extra+=(--model_max_length "$MAXLEN")
  # shellcheck disable=SC2206
  extra+=(${SIMDEMO_TRAIN_ARGS:-})
  if [[ "${SIMDEMO_DIRECT:-0}" == 1 ]]; then
    # One plain process, no DeepSpeed launcher (less memory on a crowded CPU machine).
    $PY train_hw_parallel.py --model_name_or_path "$MODEL" --data_path "$OUT/split/train.json" \
        --output_dir "$OUT/ckpt/simulator" --per_device_train_batch_size "${BSZ_:-4}" \
        --gradient_accumulation_steps $(( ${TOTALBSZ_:-8} / ${BSZ_:-4} )) --lr_scheduler_type cosine \
        --logging_steps 1 --report_to none --dataloader_pin_memory False --train_sampling_strategy group_by_length \
        --max_rounds 5 "${extra[@]}"
    return
  fi
  env MODELPATH="$MODEL" DATAPATH="$OUT/split/train.json" OUTPUTPATH="$OUT/ckpt" RUNNAME=simulator \
      ${TOTALBSZ_:+TOTALBSZ=$TOTALBSZ_} ${BSZ_:+BSZPERDEV=$BSZ_} \
      bash scripts/sft.sh "${extra[@]}"
}

simulate() {
  $PY scripts/simulate.py --assistant "$ASSISTANT" --simulator "$OUT/ckpt/simulator" --openings "$OUT/split/heldout.json" \
      --output_dir "$OUT/dialogues" --rounds "$ROUNDS" --limit "$LIMIT" --max_tokens "$MAXTOK" --backend "$BACKEND"
}

measure() {
  $PY scripts/simulator_eval.py measure --base "$MODEL" --simulator "$OUT/ckpt/simulator" \
      --heldout "$OUT/split/heldout.json" --dialogues "$OUT/dialogues/dialogues.jsonl" --output "$OUT/measures.json" \
      --max_tokens "$MAXTOK" --role_items "$ROLE_ITEMS" --chrf_items "$CHRF_ITEMS" --probe_items "$PROBE_ITEMS" --first_items "$FIRST_ITEMS" \
      --eoc_items "$EOC_ITEMS" \
      ${MAXLEN:+--max_length $MAXLEN}
}

T_ALL=$SECONDS
run_stage split split
run_stage train train
run_stage simulate simulate
run_stage measure measure
printf '%s\t%s\n' total $((SECONDS - T_ALL)) >> "$TIMES"
echo "load_end	$(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/load.tsv"
FULL_ARGS=(); [[ "$FULL" == 1 ]] && FULL_ARGS=(--full)
$PY -m smolsft.report.reports simulator "$OUT" --assistant "$ASSISTANT" "${FULL_ARGS[@]}"
echo; echo "simulator demo finished in $((SECONDS - T_ALL))s: $OUT/simulator.md"
