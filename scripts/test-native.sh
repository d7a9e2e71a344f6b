#!/usr/bin/env bash
# `make test-native`: every Rust test of the workspace (`cargo test --workspace`),
# in three lanes that run side by side.
#
# The end-to-end suites mostly wait: for a kube-apiserver and etcd, for Envoys,
# for timeouts and settle windows. Each lane is its own `cargo test` process on
# the one, already built target directory (cargo only locks it while building).
# Lanes never share ports or addresses: the API-server suites take random
# ports on 127.0.0.1; every Envoy suite (loopback rig and network namespaces)
# is in the testbed lane, which runs its test files one after another as
# `cargo test` always does. So no test changes, only the wall time.
#
#   api:     control's suites against a real kube-apiserver (control/tests/real_apiserver*.rs)
#   testbed: every end-to-end Envoy suite (krites-testbed)
#   rest:    control's image build and other tests, then the rest of the workspace
#
# Each lane's output is printed whole when it ends; the script fails if any lane does.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

$CARGO test --workspace --no-run

# control's test files, split into the API-server suites and the others.
api_tests=() other_tests=()
for f in control/tests/*.rs; do
  name=$(basename "$f" .rs)
  case "$name" in
    real_apiserver*) api_tests+=(--test "$name") ;;
    *) other_tests+=(--test "$name") ;;
  esac
done

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

lane() { # name, then commands separated by `;;`
  local name=$1; shift
  local started=$SECONDS status=0
  {
    local cmd=()
    for a in "$@" ";;"; do
      if [ "$a" = ";;" ]; then
        echo "+ ${cmd[*]}"
        "${cmd[@]}" || { status=$?; break; }
        cmd=()
      else
        cmd+=("$a")
      fi
    done
  } >"$logs/$name.log" 2>&1 || status=$?
  echo "$status" >"$logs/$name.status"
  echo "lane $name: exit $status after $((SECONDS - started)) s" | tee -a "$logs/$name.log"
}

lane api $CARGO test -p krites-control "${api_tests[@]}" -- --nocapture &
lane testbed $CARGO test -p krites-testbed &
lane rest $CARGO test -p krites-control --lib --bins "${other_tests[@]}" ";;" \
  $CARGO test --workspace --exclude krites-control --exclude krites-testbed &

wait
failed=0
for name in rest testbed api; do
  echo "=============================== lane $name ==============================="
  cat "$logs/$name.log"
  [ "$(cat "$logs/$name.status" 2>/dev/null || echo 1)" = 0 ] || failed=1
done
if [ "$failed" != 0 ]; then
  echo "test-native: a lane failed (see its output above)" >&2
  exit 1
fi
echo "test-native: all lanes passed"
