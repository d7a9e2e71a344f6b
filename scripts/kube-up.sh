#!/usr/bin/env bash
# A real etcd + kube-apiserver for tests, on 127.0.0.1 only, in a temporary directory.
#
#   scripts/kube-up.sh                   start one; prints KEY=value lines (below) on stdout
#   scripts/kube-down.sh DIR             stop both and remove DIR (same as: kube-up.sh down DIR)
#   scripts/kube-up.sh stop etcd|apiserver DIR     stop one component (outage tests)
#   scripts/kube-up.sh start etcd|apiserver DIR    start it again, same ports, args and data
#
# Printed (and written to DIR/env), shell-quoted, so `set -a; eval "$(scripts/kube-up.sh)"; set +a`
# works:  KUBECONFIG (admin, client certificate in group system:masters), KRITES_KUBE_DIR,
# KRITES_KUBE_SERVER (https://127.0.0.1:PORT), KRITES_KUBE_CA, KRITES_KUBE_ADMIN_TOKEN (a
# static token that is also system:masters), KRITES_KUBE_ETCD (http://127.0.0.1:PORT),
# KRITES_KUBE_ETCD_PID, KRITES_KUBE_APISERVER_PID, KRITES_KUBECTL (the kubectl of the same
# release).
#
# The cluster: etcd (single member, plain HTTP on loopback, no fsync) and kube-apiserver with
# RBAC (--authorization-mode=Node,RBAC), TokenRequest (a service-account key pair made here),
# the default admission plugins, and no scheduler, controller-manager or kubelet. So: pods
# stay Pending until a test writes their status (the status subresource); namespaces get no
# `default` ServiceAccount (the ServiceAccount admission plugin refuses a pod whose account
# does not exist: create it); deleted namespaces stay Terminating; nothing is garbage-collected.
#
# Environment: KRITES_KUBE_BIN (a directory with kube-apiserver, etcd, kubectl; default: what
# scripts/build-kube.sh prints, which builds them the first time), KRITES_KUBE_TMP (parent of
# the temporary directory; default $TMPDIR or /tmp), KRITES_KUBE_APISERVER_ARGS and
# KRITES_KUBE_ETCD_ARGS (extra flags, split on spaces), KRITES_KUBE_READY_TIMEOUT (seconds,
# default 90), KRITES_KUBE_WATCH_PID (when this process exits, the cluster is taken down:
# pass the test runner's pid so that a killed run leaves nothing behind).
set -euo pipefail

self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
say() { printf '[kube-up] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
MARK=.krites-kube

# ---- stopping ------------------------------------------------------------------------------

# The pid in DIR/NAME.pid, if that process is alive and is ours (its command line names DIR).
ours() {
  local dir=$1 name=$2 pid
  pid=$(cat "$dir/$name.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir" || return 1
  echo "$pid"
}

# stop_component DIR NAME [TENTHS]: SIGTERM, then SIGKILL after TENTHS tenths of a second
# (default 100: 10 s). The apiserver drains its watches on SIGTERM for longer than a test
# wants to wait; `kube-up.sh stop` gives it 3 s (an outage is the point, not a clean exit).
stop_component() {
  local dir=$1 name=$2 wait=${3:-100} pid i
  pid=$(ours "$dir" "$name") || { rm -f "$dir/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true   # a paused (SIGSTOP) process must wake up to exit
  for ((i = 0; i < wait; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    # A zombie has exited; its parent (this script or init) reaps it.
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
    [ "$wait" -lt 100 ] || say "$name ($pid) did not stop in $((wait / 10)) s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/$name.pid"
}

down() {
  local dir=${1:?usage: kube-down.sh DIR}
  dir=$(cd "$dir" 2>/dev/null && pwd) || { say "$1: no such directory (already down?)"; return 0; }
  [ -f "$dir/$MARK" ] || die "$dir was not made by kube-up.sh: not touching it"
  local name pid
  # Wake anything a test paused (SIGSTOP) first: the apiserver cannot shut down cleanly
  # while etcd is stopped.
  for name in watch apiserver etcd; do
    if pid=$(ours "$dir" "$name") && [ "$pid" != $$ ]; then kill -CONT "$pid" 2>/dev/null || true; fi
  done
  # (The watcher runs this very function when its pid exits: it must not stop itself.)
  [ "$(cat "$dir/watch.pid" 2>/dev/null)" = "$$" ] || stop_component "$dir" watch
  stop_component "$dir" apiserver
  stop_component "$dir" etcd
  rm -rf "$dir"
  say "stopped and removed $dir"
}

# ---- starting ------------------------------------------------------------------------------

# A port in 10000-32767 (below Linux's ephemeral range) that nothing listens on now.
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((10000 + RANDOM % 22768))
    case " ${taken:-} " in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then taken="${taken:-} $p"; echo "$p"; return; fi
  done
  die "no free port found"
}

# Start DIR/NAME.args (one argument a line) detached, appending to DIR/NAME.log.
launch() {
  local dir=$1 name=$2 exe pid
  local -a args
  mapfile -t args <"$dir/$name.args"
  exe=${args[0]}
  # setsid: its own session, so a Ctrl-C or hangup aimed at the caller does not reach it.
  # (This script runs without job control, so setsid execs in place and $! is the server.)
  setsid "${args[@]}" >>"$dir/$name.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/$name.pid"
  sleep 0.05
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$exe")" ] || [ ! -e "/proc/$pid" ] ||
    die "$name: pid $pid is not $exe"
}

alive() { local pid; pid=$(ours "$1" "$2") && [ "$(awk '{print $3}' "/proc/$pid/stat")" != Z ]; }

# Wait until CHECK succeeds while NAME runs; 0 ready, 1 exited, 2 timed out.
wait_for() {
  local dir=$1 name=$2 timeout=$3; shift 3
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    alive "$dir" "$name" || return 1
    "$@" >/dev/null 2>&1 && { alive "$dir" "$name" && return 0 || return 1; }
    sleep 0.2
  done
  return 2
}

etcd_ready() { curl -fsS --max-time 2 "$(val KRITES_KUBE_ETCD)/health" | grep -q '"health":"true"'; }
apiserver_ready() {
  curl -fsS --max-time 3 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
    "$(val KRITES_KUBE_SERVER)/readyz" | grep -qx ok
}
val() { sed -n "s/^$1=//p" "$dir/env" | head -1; }

# Start one component from its saved arguments and wait until it serves.
start_component() {
  local name=$1 rc=0
  if alive "$dir" "$name"; then say "$name already runs"; return 0; fi
  launch "$dir" "$name"
  wait_for "$dir" "$name" "${KRITES_KUBE_READY_TIMEOUT:-90}" "${name}_ready" || rc=$?
  case $rc in
    0) return 0 ;;
    1) say "$name exited; the end of $dir/$name.log:"; tail -n 15 "$dir/$name.log" >&2; return 1 ;;
    *) say "$name is not ready after ${KRITES_KUBE_READY_TIMEOUT:-90} s (still running; log: $dir/$name.log)"; return 2 ;;
  esac
}

# Certificates: a CA, the apiserver's serving certificate, the admin's client certificate.
make_pki() {
  local pki=$1
  mkdir -p "$pki"
  cat >"$pki/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:10.96.0.1
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF
  local ossl=(openssl)
  key() { "${ossl[@]}" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$1.key" 2>/dev/null; }
  key ca
  "${ossl[@]}" req -config "$pki/openssl.cnf" -x509 -new -key "$pki/ca.key" -sha256 -days 30 \
    -subj "/CN=krites-test-ca" -extensions ca -out "$pki/ca.crt"
  sign() { # NAME SUBJECT EXTENSIONS
    key "$1"
    "${ossl[@]}" req -config "$pki/openssl.cnf" -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr"
    "${ossl[@]}" x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -sha256 -days 30 \
      -set_serial "0x$(openssl rand -hex 12)" -extfile "$pki/openssl.cnf" -extensions "$3" -out "$pki/$1.crt" 2>/dev/null
    rm -f "$pki/$1.csr"
  }
  sign apiserver "/CN=kube-apiserver" server
  sign admin "/O=system:masters/CN=krites-admin" client
  # The service-account token signing pair (TokenRequest, RS256).
  "${ossl[@]}" genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
  "${ossl[@]}" pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
  # A static bearer token for the admin too (user krites-admin-token, group system:masters).
  openssl rand -hex 24 >"$pki/admin.token"
  printf '%s,krites-admin-token,krites-admin-token,"system:masters"\n' "$(cat "$pki/admin.token")" >"$pki/tokens.csv"
  chmod 600 "$pki"/*.key "$pki/admin.token" "$pki/tokens.csv"
}

write_kubeconfig() {
  local pki=$dir/pki server=$1 b64="base64 -w0"
  cat >"$dir/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: krites
  cluster:
    server: $server
    certificate-authority-data: $($b64 <"$pki/ca.crt")
users:
- name: krites-admin
  user:
    client-certificate-data: $($b64 <"$pki/admin.crt")
    client-key-data: $($b64 <"$pki/admin.key")
contexts:
- name: krites
  context:
    cluster: krites
    user: krites-admin
    namespace: default
current-context: krites
EOF
  chmod 600 "$dir/admin.kubeconfig"
}

up() {
  command -v openssl >/dev/null || die "openssl is needed"
  command -v curl >/dev/null || die "curl is needed"
  local bin=${KRITES_KUBE_BIN:-}
  [ -n "$bin" ] || bin=$("$(dirname "$self")/build-kube.sh")
  bin=$(cd "$bin" && pwd)
  local b
  for b in etcd kube-apiserver kubectl; do [ -x "$bin/$b" ] || die "$bin/$b is missing (run scripts/build-kube.sh)"; done

  local parent=${KRITES_KUBE_TMP:-${TMPDIR:-/tmp}}
  mkdir -p "$parent"
  dir=$(mktemp -d "$(cd "$parent" && pwd)/krites-kube.XXXXXX")
  touch "$dir/$MARK"
  # Any failure from here on takes down what was started.
  trap 'rc=$?; if [ $rc -ne 0 ]; then say "failed; cleaning up $dir"; down "$dir" >/dev/null 2>&1 || true; fi' EXIT
  make_pki "$dir/pki"
  local pki=$dir/pki

  local attempt ep pp ap rc
  for attempt in 1 2 3; do
    taken=""
    ep=$(free_port); pp=$(free_port); ap=$(free_port)
    cat >"$dir/env" <<EOF
KUBECONFIG=$dir/admin.kubeconfig
KRITES_KUBE_DIR=$dir
KRITES_KUBE_SERVER=https://127.0.0.1:$ap
KRITES_KUBE_CA=$pki/ca.crt
KRITES_KUBE_ADMIN_TOKEN=$(cat "$pki/admin.token")
KRITES_KUBE_ETCD=http://127.0.0.1:$ep
KRITES_KUBECTL=$bin/kubectl
EOF
    # shellcheck disable=SC2086 # extra flags are split on spaces on purpose
    printf '%s\n' "$bin/etcd" \
      --name=krites --data-dir="$dir/etcd" \
      --listen-client-urls="http://127.0.0.1:$ep" --advertise-client-urls="http://127.0.0.1:$ep" \
      --listen-peer-urls="http://127.0.0.1:$pp" --initial-advertise-peer-urls="http://127.0.0.1:$pp" \
      --initial-cluster="krites=http://127.0.0.1:$pp" \
      --log-level=warn --unsafe-no-fsync ${KRITES_KUBE_ETCD_ARGS:-} >"$dir/etcd.args"
    # shellcheck disable=SC2086
    printf '%s\n' "$bin/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:$ep" \
      --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$ap" \
      --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
      --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
      --authorization-mode=Node,RBAC \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
      --service-cluster-ip-range=10.96.0.0/16 \
      --endpoint-reconciler-type=none \
      --cert-dir="$pki" --profiling=false \
      ${KRITES_KUBE_APISERVER_ARGS:-} >"$dir/apiserver.args"

    rc=0; start_component etcd || rc=$?
    if [ $rc = 0 ]; then start_component apiserver || rc=$?; fi
    [ $rc = 0 ] && break
    # A port taken between choosing it and binding it: try other ports.
    if [ $rc = 1 ] && [ $attempt -lt 3 ] && grep -q 'address already in use' "$dir"/*.log 2>/dev/null; then
      say "a port was taken; retrying with others"
      stop_component "$dir" apiserver; stop_component "$dir" etcd
      rm -rf "$dir/etcd" "$dir"/*.log
      continue
    fi
    exit 1
  done

  write_kubeconfig "$(val KRITES_KUBE_SERVER)"
  {
    echo "KRITES_KUBE_ETCD_PID=$(cat "$dir/etcd.pid")"
    echo "KRITES_KUBE_APISERVER_PID=$(cat "$dir/apiserver.pid")"
  } >>"$dir/env"

  if [ -n "${KRITES_KUBE_WATCH_PID:-}" ]; then
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'while kill -0 "$0" 2>/dev/null; do sleep 1; done; exec "$1" down "$2"' \
      "$KRITES_KUBE_WATCH_PID" "$self" "$dir" >/dev/null 2>&1 </dev/null &
    echo $! >"$dir/watch.pid"
  fi
  trap - EXIT
  say "kube-apiserver $(val KRITES_KUBE_SERVER) (pid $(val KRITES_KUBE_APISERVER_PID)), etcd $(val KRITES_KUBE_ETCD) (pid $(val KRITES_KUBE_ETCD_PID)) ready in ${SECONDS}s"
  say "kubeconfig: $dir/admin.kubeconfig    stop: $(dirname "$self")/kube-down.sh $dir"
  local k v
  while IFS='=' read -r k v; do printf '%s=%q\n' "$k" "$v"; done <"$dir/env"
}

case "${1:-up}" in
  up) up ;;
  down) down "${2:-}" ;;
  start | stop)
    case "${2:-}" in etcd | apiserver) ;; *) die "usage: kube-up.sh $1 etcd|apiserver DIR" ;; esac
    dir=$(cd "${3:?usage: kube-up.sh $1 $2 DIR}" && pwd)
    [ -f "$dir/$MARK" ] || die "$dir was not made by kube-up.sh"
    if [ "$1" = stop ]; then stop_component "$dir" "$2" "${KRITES_KUBE_STOP_WAIT:-30}"; else
      start_component "$2"
      sed -i "/^KRITES_KUBE_${2^^}_PID=/d" "$dir/env"
      echo "KRITES_KUBE_${2^^}_PID=$(cat "$dir/$2.pid")" | tee -a "$dir/env"
    fi
    ;;
  -h | --help | help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown command $1 (up, down DIR, stop|start etcd|apiserver DIR)" ;;
esac
