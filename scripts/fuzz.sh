#!/bin/bash
# make fuzz: runs every cargo-fuzz target (initrd-helper/fuzz) for
# IH_FUZZ_SECS seconds each (default 60), IH_FUZZ_JOBS at a time (default:
# the number of cores), starting from and adding to the committed corpus,
# and prints executions and crashes per target. Exits non-zero on a crash;
# the crashing input is in initrd-helper/fuzz/artifacts/TARGET/.
# Needs the nightly toolchain (on these machines) and installs cargo-fuzz.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
secs=${IH_FUZZ_SECS:-60}
jobs=${IH_FUZZ_JOBS:-$(nproc)}
targets=${IH_FUZZ_TARGETS:-"cmdline config gpt grow token verity b64 mountinfo planner"}

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo +nightly install cargo-fuzz --locked >&2
fi
cd "$here/initrd-helper/fuzz"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
echo "fuzz: building the targets" >&2
"$here/scripts/cargo-static" +nightly fuzz build >&2

run() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  # -max_len: GPT images need a few sectors; the text parsers less.
  local len=4096
  case $t in gpt | grow | planner) len=65536 ;; esac
  "$here/scripts/cargo-static" +nightly fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len="$len" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$logs/$t.log" 2>&1 || true
}

running=0
for t in $targets; do
  run "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

status=0
printf '%-10s %14s %8s %8s\n' target executions exec/s crashes
for t in $targets; do
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -1)
  crashes=$(find "artifacts/$t" -type f | wc -l)
  if [ -z "$execs" ]; then
    echo "fuzz: $t did not finish; its log:" >&2
    tail -30 "$logs/$t.log" >&2
    status=1
  fi
  [ "$crashes" -eq 0 ] || status=1
  printf '%-10s %14s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$crashes"
done
exit "$status"
