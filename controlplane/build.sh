#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kubectl, etcd and kwok from the Go modules pinned in this
# folder, and cache the binaries by version outside the repository.
#
# Usage: controlplane/build.sh            builds what is missing and prints the bin folder
#
# Environment:
#   ISOLATOR_BIN_DIR    a folder that already holds all five binaries; nothing is built
#   ISOLATOR_CACHE_DIR  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/isolator)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
binaries=(kube-apiserver kube-controller-manager etcd kwok kubectl)

if [[ -n "${ISOLATOR_BIN_DIR:-}" ]]; then
  for name in "${binaries[@]}"; do
    [[ -x "$ISOLATOR_BIN_DIR/$name" ]] || {
      echo "ISOLATOR_BIN_DIR=$ISOLATOR_BIN_DIR has no executable $name" >&2
      exit 1
    }
  done
  echo "$ISOLATOR_BIN_DIR"
  exit 0
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

# The module version of a dependency, read from the wrapper's own go.mod.
module_version() {
  (cd "$here/$1" && go list -m -f '{{.Version}}' "$2")
}

k8s_version=$(module_version kubernetes k8s.io/kubernetes)
etcd_version=$(module_version etcd go.etcd.io/etcd/server/v3)
kwok_version=$(module_version kwok sigs.k8s.io/kwok)
go_version=$(go env GOVERSION)

cache_root=${ISOLATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/isolator}
bin_dir="$cache_root/controlplane/k8s-$k8s_version-etcd-$etcd_version-kwok-$kwok_version-$go_version"
mkdir -p "$bin_dir"
# One build at a time per cache folder: parallel test workers and a running `make demo` would
# otherwise compile the same binary into the same temporary file.
exec 9>"$bin_dir/.lock"
if ! flock -n 9; then
  echo "[controlplane] waiting for another build in $bin_dir to finish" >&2
  flock 9
fi

log() { printf '[controlplane %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Build one binary in a temporary name and move it into place, so that an interrupted build
# never leaves a half-written file that looks cached.
build() {
  local module=$1 package=$2 output=$3 ldflags=${4:-}
  if [[ -x "$bin_dir/$output" ]]; then
    log "$output: cached in $bin_dir"
    return
  fi
  log "$output: downloading modules for $package"
  (cd "$here/$module" && go mod download -x 2>&1 | awk '/^# get/ && /200/ { n++; if (n % 50 == 0) printf "[controlplane] %d modules downloaded\n", n > "/dev/stderr" }')
  log "$output: compiling (a cold build of kube-apiserver takes 8-15 minutes on 2 cores)"
  local started=$SECONDS
  (cd "$here/$module" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin_dir/.$output.tmp" "$package") &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null && log "$output: still compiling, $((SECONDS - started)) s so far"
  done
  wait "$pid"
  mv "$bin_dir/.$output.tmp" "$bin_dir/$output"
  log "$output: built in $((SECONDS - started)) s"
}

# Without these the binaries report v0.0.0-master, and clients that check the server version
# would treat the test control plane as an unknown release.
minor=${k8s_version#v1.}
minor=${minor%%.*}
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done

build etcd go.etcd.io/etcd/server/v3 etcd
build kwok sigs.k8s.io/kwok/cmd/kwok kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version"
build kubernetes k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$k8s_ldflags"
build kubernetes k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager \
  "$k8s_ldflags"
# kubectl checks the deployment manifests against the test control plane (--dry-run=server).
build kubernetes k8s.io/kubernetes/cmd/kubectl kubectl "$k8s_ldflags"

echo "$bin_dir"
