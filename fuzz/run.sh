#!/usr/bin/env bash
# Runs the cargo-fuzz targets: `fuzz/run.sh SECONDS [TARGET...]` (`make
# fuzz-smoke`, `make fuzz`). Builds them once (stable toolchain with
# RUSTC_BOOTSTRAP=1, no sanitizer: the engine has no `unsafe`, and debug
# assertions and overflow checks stay on), then for each target replays every
# input of the checked-in corpus fuzz/corpus/<target>/ and fuzzes for SECONDS.
# New inputs go to fuzz/work/<target>/ (not committed; reused by the next run),
# crashes to fuzz/artifacts/<target>/, the full log to fuzz/work/<target>.log.
#
# Keep an input a run found as a regression seed by copying it into
# fuzz/corpus/<target>/ under a name that says what it is. To fold a long run's
# coverage into the checked-in corpus, minimised:
#   fuzz/target/x86_64-unknown-linux-gnu/release/<target> -merge=1 fuzz/corpus/<target> fuzz/work/<target>
# Seeds: fuzz/seeds/make_text_seeds.py (selector, config, path) and
#   (cd fuzz && cargo run --release --example decide_seeds -- corpus/decide).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(selector config decide path)

export RUSTC_BOOTSTRAP=1
flags=(--sanitizer none)
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: make setup (or cargo install cargo-fuzz --locked)" >&2
  exit 2
fi

t0=$(date +%s)
mkdir -p work
if ! cargo fuzz build "${flags[@]}" >work/build.log 2>&1; then
  cat work/build.log >&2
  echo "fuzz: build failed" >&2
  exit 1
fi
grep -E -A5 '^(warning|error)' work/build.log || true
printf 'fuzz: targets built in %ds\n' $(( $(date +%s) - t0 ))

failed=()
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  log="work/$t.log"
  seeds=$(find "corpus/$t" -type f | wc -l)
  start=$(date +%s)
  # The scratch corpus comes first: libFuzzer writes new inputs only there.
  if cargo fuzz run "${flags[@]}" "$t" "work/$t" "corpus/$t" -- \
       -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -1 || true)
    stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' || true)
    printf 'fuzz %-8s %s (replayed %d seeds; %s; wall %ds)\n' "$t" "$done_line" "$seeds" "$stats" $(( $(date +%s) - start ))
  else
    echo "fuzz $t: FAILED after $(( $(date +%s) - start ))s; the end of $log:" >&2
    grep -vE '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' "$log" | tail -40 >&2
    ls -1 "artifacts/$t" >&2 || true
    failed+=("$t")
  fi
done
printf 'fuzz: %d targets, %ds in all\n' "${#targets[@]}" $(( $(date +%s) - t0 ))
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failing targets: ${failed[*]}" >&2
  exit 1
fi
