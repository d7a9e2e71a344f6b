#!/usr/bin/env bash
# Builds the real kube-apiserver, etcd and a matching kubectl for the tests, from Go
# modules only (the module in scripts/kube/ pins the versions), with the machine's Go.
#
#   bin=$(scripts/build-kube.sh)     # prints the directory holding the three binaries
#
# The binaries go to a cache outside the repo that survives between runs:
# ${KRITES_KUBE_CACHE:-/var/cache/krites/kube-<k8s version>}/bin (falling back to
# ~/.cache/krites when /var/cache is not writable). The Go module and build caches sit
# beside it (../gomod, ../gocache), so a rebuild after a version bump downloads and
# compiles only what changed. Nothing is built when the binaries are there and report
# the pinned versions. Progress goes to stderr; stdout is only the bin directory.
# Cold (empty caches): about 13 minutes on 2 cores shared with other builds, 0.6 GB downloaded;
# binaries gone but Go caches kept: about 20 s; cached: 0.2 s. Cache size: about 4 GB.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/kube"
say() { printf '[build-kube] %s\n' "$*" >&2; }

# The pinned versions, read from go.mod (the one place they are written).
modver() { awk -v p="$1" '$1 == p && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod/go.mod"; }
KUBE_VERSION=$(modver k8s.io/kubernetes)
ETCD_VERSION=$(modver go.etcd.io/etcd/server/v3)
[ -n "$KUBE_VERSION" ] && [ -n "$ETCD_VERSION" ] || { say "cannot read the pinned versions from $mod/go.mod"; exit 1; }

cache=${KRITES_KUBE_CACHE:-}
if [ -z "$cache" ]; then
  cache=/var/cache/krites/kube-$KUBE_VERSION
  mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ] || cache="${XDG_CACHE_HOME:-$HOME/.cache}/krites/kube-$KUBE_VERSION"
fi
mkdir -p "$cache/bin"
cache=$(cd "$cache" && pwd)
bin="$cache/bin"
parent=$(dirname "$cache")

# The binaries are current when each one reports the pinned version.
current() {
  [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] && [ -x "$bin/kubectl" ] || return 1
  # (Output captured first: grep -q closing the pipe early would fail the pipeline.)
  local out
  out=$("$bin/kube-apiserver" --version 2>/dev/null) && [ "$out" = "Kubernetes $KUBE_VERSION" ] || return 1
  out=$("$bin/etcd" --version 2>/dev/null) && grep -qx "etcd Version: ${ETCD_VERSION#v}" <<<"$out" || return 1
  out=$("$bin/kubectl" version --client 2>/dev/null) && grep -qx "Client Version: $KUBE_VERSION" <<<"$out" || return 1
}

if current; then
  say "kube-apiserver $KUBE_VERSION, etcd $ETCD_VERSION and kubectl are cached in $bin"
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { say "go is not installed (the build needs Go >= $(awk '$1 == "go" { print $2 }' "$mod/go.mod"))"; exit 1; }

# One build at a time per cache (make setup and a test run may both ask).
exec 9>"$cache/.lock"
flock 9
if current; then echo "$bin"; exit 0; fi

export GOMODCACHE="$parent/gomod" GOCACHE="$parent/gocache"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
# The version the binaries report (Kubernetes's release builds stamp it the same way);
# the build date is the release's date on the module proxy, so the build is reproducible.
release_date=$(cd "$mod" && go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes 2>/dev/null || true)
minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
major=${KUBE_VERSION#v}; major=${major%%.*}
x=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  x+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  x+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit= -X $pkg.buildDate=${release_date:-1970-01-01T00:00:00Z}"
done
x+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"

say "building kube-apiserver $KUBE_VERSION, etcd $ETCD_VERSION and kubectl into $bin (Go $(go env GOVERSION); caches in $parent)"
start=$(date +%s)
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(
  cd "$mod"
  # -p 2 and nice: the machine has 2 cores shared with other builds.
  nice -n 10 go build -p 2 -trimpath -ldflags="-s -w$x" -o "$tmp/" \
    go.etcd.io/etcd/server/v3 k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
) >&2
# go names the etcd main package after its path without the /v3 suffix.
mv "$tmp/server" "$bin/etcd"
mv "$tmp/kube-apiserver" "$tmp/kubectl" "$bin/"
current || { say "the built binaries do not report $KUBE_VERSION / $ETCD_VERSION"; exit 1; }
say "built in $(( $(date +%s) - start ))s: $(du -sh "$bin" | cut -f1) of binaries, $(du -sh "$parent" | cut -f1) in $parent with the Go caches"
echo "$bin"
