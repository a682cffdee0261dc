# Sourced by the image scripts: make sure Docker and debootstrap are installed and dockerd runs.
# Idempotent; starts dockerd in the background only when no daemon answers.

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    echo "==> installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
}

# start_detached LOG CMD...: CMD in the background, outliving the caller, with none of the
# caller's open files but LOG. The image scripts hold flock locks on descriptors (6, 7, 9): a
# daemon that inherited one would hold that lock for its whole life, and the next build waiting
# for it would wait forever.
start_detached() {
  local log="$1"
  shift
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd="${fd##*/}"
      ((fd > 2)) && eval "exec $fd>&-"
    done
    exec nohup "$@" >"$log" 2>&1 </dev/null
  ) &
}

ensure_dockerd() {
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  echo "==> starting dockerd (log: /var/log/modelship-dockerd.log)"
  start_detached /var/log/modelship-dockerd.log dockerd
  local i
  for i in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  echo "dockerd did not answer 'docker info' within 60 s; see /var/log/modelship-dockerd.log" >&2
  return 1
}
