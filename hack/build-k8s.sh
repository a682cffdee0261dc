#!/usr/bin/env bash
# Builds the Kubernetes components Modelship's local cluster runs, from Go modules, once per version.
#
# No release binaries can be downloaded here, so each component is compiled from the Go module
# proxy. k8s.io/kubernetes replaces its staging modules with local paths in its own go.mod, which Go
# ignores for dependencies; a throwaway module pins every staging module to the matching v0.Y.Z tag.
#
# Usage: hack/build-k8s.sh [component ...]   (default: etcd kube-apiserver kube-controller-manager)
# Components: etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
#             helm coredns metrics-server argocd traefik prometheus promtool
#             prometheus-operator-crds (a folder of CRDs, not a binary)
# Output: $MODELSHIP_CACHE/bin/<component>-<version> (default cache: ~/.cache/modelship);
# prints component=path for each on stdout, progress on stderr.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.5.35}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.9.0}"
ARGOCD_VERSION="${ARGOCD_VERSION:-v3.6.1}"
TRAEFIK_VERSION="${TRAEFIK_VERSION:-v3.6.12}"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.4.0}"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"  # Prometheus 3.16
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
# Argo CD's go.mod asks for Go 1.27; the go command fetches that toolchain through the proxy.
ARGOCD_GOTOOLCHAIN="${ARGOCD_GOTOOLCHAIN:-go1.27.3}"
CACHE="${MODELSHIP_CACHE:-$HOME/.cache/modelship}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kube-apiserver kube-controller-manager)

log() { printf '[build-k8s] %s\n' "$*" >&2; }

# go build -v prints each package as it is compiled: count them so a long build shows it is alive.
progress() {
  local name=$1 n=0 line
  while IFS= read -r line; do
    case "$line" in
      *": "*|*error*|*cannot*|"#"*) printf '%s\n' "$line" >&2 ;;
      *) n=$((n + 1)); if [ $((n % 100)) -eq 0 ]; then log "$name: $n packages compiled"; fi ;;
    esac
  done
  log "$name: $n packages compiled"
}

build_module() {  # build_module <name> <workdir> <package> <output>
  local name=$1 dir=$2 pkg=$3 out=$4 start=$SECONDS
  log "building $name from $pkg (first build takes several minutes; cached afterwards)"
  # -mod=mod lets go add go.sum entries for packages only the command itself imports.
  if ! (cd "$dir" && CGO_ENABLED=0 go build -mod=mod -v -trimpath -ldflags "-s -w $5" -o "$out.tmp" "$pkg" 2>&1) | progress "$name"; then
    log "$name: build failed (see the errors above)"
    exit 1
  fi
  mv "$out.tmp" "$out"
  log "$name built in $((SECONDS - start))s -> $out"
}

k8s_workdir() {
  local dir="$CACHE/src/k8s-$K8S_VERSION"
  if [ ! -f "$dir/go.sum.v2" ]; then
    log "resolving k8s.io/kubernetes@$K8S_VERSION and its staging modules"
    rm -rf "$dir" && mkdir -p "$dir"
    local gomod
    gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    local staging_version="v0${K8S_VERSION#v1}"
    {
      echo "module modelship.local/k8sbuild"
      echo
      echo "go 1.24"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\t\1 => \1 '"$staging_version"'#p' "$gomod"
      echo ")"
    } > "$dir/go.mod"
    # Import every component we build so that `go mod tidy` records all of their dependencies.
    {
      printf 'package tools\n\nimport (\n'
      for app in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
        printf '\t_ "k8s.io/kubernetes/cmd/%s/app"\n' "$app"
      done
      printf '\t_ "k8s.io/kubectl/pkg/cmd"\n)\n'
    } > "$dir/tools.go"
    (cd "$dir" && go mod tidy >&2)
    touch "$dir/go.sum.v2"
  fi
  echo "$dir"
}

# A throwaway module that requires <module>@<version>; <package> is imported so tidy keeps it.
module_workdir() {  # module_workdir <name> <module> <version> <importable package>
  local dir="$CACHE/src/$1-$3"
  if [ ! -f "$dir/go.sum.done" ]; then
    log "resolving $2@$3"
    rm -rf "$dir" && mkdir -p "$dir"
    printf 'module modelship.local/%sbuild\n\ngo 1.24\n' "$1" > "$dir/go.mod"
    printf 'package tools\n\nimport _ "%s"\n' "$4" > "$dir/tools.go"
    (cd "$dir" && go get "$2@$3" >&2 && go mod tidy >&2)
    touch "$dir/go.sum.done"
  fi
  echo "$dir"
}

# A module's own source as the main module (its go.mod, go.sum and replace directives apply as
# its developers build it), copied out of the read-only module cache.
main_module_workdir() {  # main_module_workdir <name> <module> <version>
  local dir="$CACHE/src/$1-$3"
  if [ ! -f "$dir/.copied" ]; then
    log "fetching $2@$3 (its own module is the build's main module)"
    rm -rf "$dir" && mkdir -p "$(dirname "$dir")"
    local src
    src=$(cd "$CACHE" && go mod download -json "$2@$3" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    cp -r "$src" "$dir" && chmod -R u+w "$dir"
    touch "$dir/.copied"
  fi
  echo "$dir"
}

# Argo CD's go.mod replaces its gitops-engine with a local ./gitops-engine path (Go ignores that
# for a dependency); the nested module is served on its own, so the throwaway module restates the
# rest of the replace block (pinned k8s.io modules and friends) and lets the engine resolve.
argocd_workdir() {
  local dir="$CACHE/src/argocd-$ARGOCD_VERSION"
  if [ ! -f "$dir/go.sum.done" ]; then
    log "resolving github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION (Go $ARGOCD_GOTOOLCHAIN)"
    rm -rf "$dir" && mkdir -p "$dir"
    local gomod
    gomod=$(cd "$dir" && go mod download -json "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    {
      printf 'module modelship.local/argocdbuild\n\ngo 1.27.0\n\nrequire github.com/argoproj/argo-cd/v3 %s\n\n' "$ARGOCD_VERSION"
      sed -n '/^replace (/,/^)/p' "$gomod"
    } > "$dir/go.mod"
    printf 'package tools\n\nimport _ "github.com/argoproj/argo-cd/v3/cmd/util"\n' > "$dir/tools.go"
    (cd "$dir" && go mod tidy >&2)
    touch "$dir/go.sum.done"
  fi
  echo "$dir"
}

for c in "${components[@]}"; do
  # One build of a component at a time: CI builds the add-ons in the background while the
  # tests that need them may ask for them too; a second caller waits, then finds it cached.
  exec 7>"$BIN/.$c.lock"
  flock -n 7 || { log "$c: another build of it is running; waiting for it"; flock 7; }
  case "$c" in
    etcd)
      out="$BIN/etcd-$ETCD_VERSION"
      [ -x "$out" ] || build_module etcd \
        "$(module_workdir etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3/etcdmain)" \
        go.etcd.io/etcd/server/v3 "$out" ""
      ;;
    helm)
      out="$BIN/helm-$HELM_VERSION"
      [ -x "$out" ] || build_module helm \
        "$(module_workdir helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/pkg/action)" \
        helm.sh/helm/v3/cmd/helm "$out" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
      ;;
    coredns)
      out="$BIN/coredns-$COREDNS_VERSION"
      [ -x "$out" ] || build_module coredns \
        "$(module_workdir coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns/core/plugin)" \
        github.com/coredns/coredns "$out" ""
      ;;
    metrics-server)
      out="$BIN/metrics-server-$METRICS_SERVER_VERSION"
      [ -x "$out" ] || build_module metrics-server \
        "$(module_workdir metrics-server sigs.k8s.io/metrics-server "$METRICS_SERVER_VERSION" sigs.k8s.io/metrics-server/cmd/metrics-server/app)" \
        sigs.k8s.io/metrics-server/cmd/metrics-server "$out" ""
      ;;
    argocd)
      # One binary; it acts as the repo server, the application controller, the API server or
      # the CLI by the name in ARGOCD_BINARY_NAME (or the name it is called by).
      out="$BIN/argocd-$ARGOCD_VERSION"
      if [ ! -x "$out" ] || [ ! -f "$out-share/.done" ]; then
        # (The component's lock, above, already makes a second caller wait for this build; a
        # second lock on the same file here deadlocked the first caller against itself.)
        export GOTOOLCHAIN="$ARGOCD_GOTOOLCHAIN"
        if [ ! -x "$out" ]; then
          p="github.com/argoproj/argo-cd/v3/common"
          ld="-X $p.version=${ARGOCD_VERSION#v} -X $p.gitTag=$ARGOCD_VERSION -X $p.gitCommit=$ARGOCD_VERSION -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
          dir=$(argocd_workdir)
          build_module argocd "$dir" github.com/argoproj/argo-cd/v3/cmd "$out" "$ld"
        fi
        # From the same module version, beside the binary: its CRDs (the node installs them)
        # and the helper scripts its image puts on PATH (the repo server runs
        # git-verify-wrapper.sh).
        if [ ! -f "$out-share/.done" ]; then
          src=$(cd "$(argocd_workdir)" && go list -m -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)
          rm -rf "$out-share" && mkdir -p "$out-share/crds" "$out-share/bin"
          cp "$src"/manifests/crds/*-crd.yaml "$out-share/crds/" && chmod 644 "$out-share"/crds/*
          cp "$src"/hack/git-verify-wrapper.sh "$src"/hack/gpg-wrapper.sh "$out-share/bin/"
          chmod 755 "$out-share"/bin/*
          touch "$out-share/.done"
        fi
        unset GOTOOLCHAIN
      fi
      ;;
    traefik)
      # Gateway API implementation of the node (HTTPRoute/GRPCRoute with weighted backends).
      out="$BIN/traefik-$TRAEFIK_VERSION"
      [ -x "$out" ] || build_module traefik \
        "$(main_module_workdir traefik github.com/traefik/traefik/v3 "$TRAEFIK_VERSION")" \
        ./cmd/traefik "$out" "-X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION"
      # The standard Gateway API CRDs it implements, beside the binary (the node installs them).
      if [ ! -f "$out-share/.done" ]; then
        src=$(cd "$CACHE" && go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
        rm -rf "$out-share" && mkdir -p "$out-share/crds"
        cp "$src"/config/crd/standard/*.yaml "$out-share/crds/" && chmod 644 "$out-share"/crds/*
        touch "$out-share/.done"
      fi
      ;;
    prometheus|promtool)
      # Only Kubernetes service discovery (the tests discover pods with it); no web UI assets.
      out="$BIN/$c-$PROMETHEUS_VERSION"
      if [ ! -x "$out" ]; then
        v="github.com/prometheus/common/version"
        dir=$(main_module_workdir prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION")
        (cd "$dir" && GOWORK=off GOFLAGS="-tags=remove_all_sd,enable_kubernetes_sd" \
          build_module "$c" "$dir" "./cmd/$c" "$out" "-X $v.Version=3.16.0 -X $v.Revision=$PROMETHEUS_VERSION -X $v.Branch=release")
      fi
      ;;
    prometheus-operator-crds)
      # The monitoring.coreos.com CRDs of the chart's PodMonitor, ServiceMonitor and
      # PrometheusRule, so that a real API server validates those objects (nothing is built).
      out="$BIN/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
      if [ ! -f "$out/.done" ]; then
        log "prometheus-operator-crds: fetching github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION"
        src=$(cd "$CACHE" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
        rm -rf "$out" && mkdir -p "$out"
        for kind in podmonitors servicemonitors prometheusrules; do
          cp "$src/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$out/"
        done
        chmod 644 "$out"/*.yaml
        touch "$out/.done"
      fi
      ;;
    kube-*|kubectl|kubelet)
      out="$BIN/$c-$K8S_VERSION"
      if [ ! -x "$out" ]; then
        v="k8s.io/component-base/version"
        ld="-X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
        build_module "$c" "$(k8s_workdir)" "k8s.io/kubernetes/cmd/$c" "$out" "$ld"
      fi
      ;;
    *) log "unknown component: $c"; exit 2 ;;
  esac
  exec 7>&-
  echo "$c=$out"
done
