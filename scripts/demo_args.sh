# Sourced by scripts/demo.sh and scripts/simulator_demo.sh: their shared command line and stage timer.
# parse_demo_args NAME DEFAULT_FULL ARGS...: sets FULL (1 for --full, else DEFAULT_FULL),
# prints the caller's usage for -h/--help and exits 0, refuses anything else (exit 2).
parse_demo_args() {
  local name=$1
  FULL=$2
  shift 2
  for arg in "$@"; do
    case "$arg" in
      --full) FULL=1 ;;
      -h|--help) usage; exit 0 ;;
      *) echo "$name: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
  done
}

# run_stage NAME CMD... : runs a stage, prints its wall time (seconds) and appends it to $TIMES.
run_stage() {
  local name=$1; shift
  echo; echo "================ [$name] $*"
  local t0=$SECONDS
  "$@"
  local dt=$((SECONDS - t0))
  printf '%s\t%s\n' "$name" "$dt" >> "$TIMES"
  echo "---------------- [$name] done in ${dt}s"
}
