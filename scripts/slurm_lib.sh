# Shared by scripts/sft.slurm and ifeval/run.slurm (sourced, not run): the job's checks,
# the wait that survives the warning signal, and the requeue. Functions only; the callers
# run without set -e (a step's failing status is handled, not fatal).

# slurm_need_job NAME: stop with one line unless this shell runs inside a SLURM job.
slurm_need_job() {
    if [[ -z "${SLURM_JOB_ID:-}" ]]; then
        echo "$1: error: not inside a SLURM job (no SLURM_JOB_ID): submit it with sbatch $1 (--help for more)" >&2
        exit 2
    fi
}

# slurm_head_node: the first host of the allocation (rendezvous and MASTER_ADDR).
slurm_head_node() {
    local nodelist="${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}"
    if [[ -z "$nodelist" ]]; then hostname; return; fi
    scontrol show hostnames "$nodelist" | head -n1
}

# slurm_gpus_per_node: the count in SLURM_GPUS_PER_NODE ("4" or "a100:4"), empty when not set.
slurm_gpus_per_node() {
    local g="${SLURM_GPUS_PER_NODE:-}"
    g="${g##*:}"
    [[ "$g" =~ ^[0-9]+$ ]] && echo "$g"
    return 0
}

# slurm_run_step STOP_FILE CMD...: run CMD (an srun) in the background and wait for it; SIGUSR1
# (the sbatch --signal=B:USR1 warning) and SIGTERM create STOP_FILE, which the training polls
# after every optimizer step, instead of ending this shell. With STOP_FILE "-" the warning
# sends SIGTERM to the step instead (for a job with no stop file: evaluation). Sets
# SLURM_STEP_RC (the step's exit status) and SLURM_WARNED (1 after the warning).
slurm_run_step() {
    _SLURM_STOP="$1"; shift
    SLURM_WARNED=0; _SLURM_INTERRUPTED=0
    trap '_slurm_on_signal USR1' USR1
    trap '_slurm_on_signal TERM' TERM
    "$@" &
    _SLURM_STEP_PID=$!
    while :; do
        _SLURM_INTERRUPTED=0
        wait "$_SLURM_STEP_PID"
        SLURM_STEP_RC=$?
        (( _SLURM_INTERRUPTED )) || break  # a trap cut the wait short: the step still runs
    done
    trap - USR1 TERM
}

_slurm_on_signal() {
    _SLURM_INTERRUPTED=1
    [[ "$1" == USR1 ]] && SLURM_WARNED=1
    if [[ "$_SLURM_STOP" == - ]]; then
        echo "[slurm] $(date '+%F %T') SIG$1: stopping the step (a rerun resumes)" >&2
        kill -TERM "$_SLURM_STEP_PID" 2>/dev/null || true
    else
        echo "[slurm] $(date '+%F %T') SIG$1: asking the run to save and stop (stop file $_SLURM_STOP)" >&2
        : > "$_SLURM_STOP" || echo "[slurm] could not create the stop file $_SLURM_STOP" >&2
    fi
}

# slurm_finish NAME: requeue after the warning when REQUEUE=1 and the step did not finish
# (status not 0), then exit with the step's status.
slurm_finish() {
    local name="$1" rc="$SLURM_STEP_RC"
    if (( rc == 0 )); then
        echo "[slurm] $name: the step finished (status 0)"
    elif (( SLURM_WARNED )) && [[ "${REQUEUE:-0}" == 1 ]]; then
        echo "[slurm] $name: stopped on the time-limit warning (status $rc): requeueing job $SLURM_JOB_ID; it resumes"
        scontrol requeue "$SLURM_JOB_ID"
    elif (( SLURM_WARNED )); then
        echo "[slurm] $name: stopped on the time-limit warning (status $rc); resubmit the same command to resume" \
             "(or submit with REQUEUE=1 to requeue by itself)"
    else
        echo "[slurm] $name: the step ended with status $rc"
    fi
    exit "$rc"
}
