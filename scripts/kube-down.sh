#!/usr/bin/env bash
# Stops the etcd and kube-apiserver that scripts/kube-up.sh started in DIR and removes DIR.
#   scripts/kube-down.sh "$KRITES_KUBE_DIR"
exec "$(dirname "${BASH_SOURCE[0]}")/kube-up.sh" down "$@"
