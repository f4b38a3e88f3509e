#!/usr/bin/env bash
# Run hello-app on this machine, in the background, with its output in logs/app.log.
#
#   ./start.sh            start (creates .venv on first run), wait until /healthz answers
#   ./start.sh stop       SIGTERM, then wait for the app to exit
#   ./start.sh status     is it running? exit 0 if so, 3 if not
#   ./start.sh restart    stop, then start
#   ./start.sh install    only create or update the venv
#
# Settings: PORT (default 8080), DATABASE_URL (default: SQLite in data/) and the app's other
# variables (see README), plus PYTHON, VENV_DIR, START_TIMEOUT and STOP_TIMEOUT for this script.
set -euo pipefail

# Physical path (-P): what /proc/PID/cwd and lsof report for the app started from here.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
PORT="${PORT:-8080}"
HOST="${HOST:-0.0.0.0}"
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-$ROOT/.venv}"
START_TIMEOUT="${START_TIMEOUT:-15}"
STOP_TIMEOUT="${STOP_TIMEOUT:-15}"
# The app has no default database: the one of a checkout is an SQLite file in its data/.
if [[ -z "${DATABASE_URL:-}" && -z "${DATABASE_URL_FILE:-}" ]]; then
  export DATABASE_URL="sqlite:///$ROOT/data/app.sqlite3"
fi

LOG_FILE="$ROOT/logs/app.log"
RUN_DIR="$ROOT/.run"
PID_FILE="$RUN_DIR/app.pid"
URL_FILE="$RUN_DIR/app.url"
REQUIREMENTS="$ROOT/requirements.txt"
REQUIREMENTS_STAMP="$VENV_DIR/.requirements.cksum"

say() { printf '%s\n' "$*"; }
warn() { printf 'start.sh: %s\n' "$*" >&2; }
die() {
  warn "$*"
  exit 1
}

require_python() {
  command -v "$PYTHON" >/dev/null 2>&1 ||
    die "$PYTHON not found. Install Python 3.11 or newer, or set PYTHON=/path/to/python3."
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "Python 3.11 or newer is required; $PYTHON is $("$PYTHON" -V 2>&1). Set PYTHON=/path/to/python3.11."
}

# Quick no-op when the venv exists and requirements.txt has not changed since it was installed.
ensure_venv() {
  local wanted
  wanted="$(cksum <"$REQUIREMENTS")"
  if [[ -x "$VENV_DIR/bin/pip" && "$(cat "$REQUIREMENTS_STAMP" 2>/dev/null)" == "$wanted" ]]; then
    return 0
  fi
  require_python
  if [[ ! -x "$VENV_DIR/bin/pip" ]]; then
    say "Creating the virtual environment in $VENV_DIR"
    # Debian and Ubuntu ship Python's venv module (with ensurepip) as a package of its own.
    # A failed attempt leaves a venv without pip, so the next run tries again.
    "$PYTHON" -m venv "$VENV_DIR" ||
      die "$PYTHON could not create a virtual environment. On Debian or Ubuntu: sudo apt-get install python3-venv"
  fi
  say "Installing requirements.txt into $VENV_DIR"
  "$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS" ||
    die "pip could not install requirements.txt (see above). Check your network, then run ./start.sh again."
  printf '%s\n' "$wanted" >"$REQUIREMENTS_STAMP"
}

# The command line of a process. Linux always has /proc, even where procps (ps) is not
# installed, as in minimal Debian and Ubuntu images; macOS has ps and no /proc.
process_args() {
  if [[ -r "/proc/$1/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$1/cmdline"
  else
    ps -p "$1" -o args= 2>/dev/null
  fi
}

# The working directory of a process: /proc on Linux, lsof on macOS.
process_cwd() {
  if [[ -e "/proc/$1/cwd" ]]; then
    readlink "/proc/$1/cwd"
  else
    lsof -a -p "$1" -d cwd -Fn 2>/dev/null | sed -n 's/^n//p'
  fi
}

# Our app is a `python -m app` whose working directory is this checkout: the one started
# from another checkout, even with the same venv, has another. Only the end of the command
# line is compared, because macOS's framework Python re-executes itself under another name.
is_our_app() {
  local args
  args="$(process_args "$1")"
  [[ "${args% }" == *" -m app" && "$(process_cwd "$1")" == "$ROOT" ]]
}

# True while the process has not exited. A zombie has: it is only waiting for its parent to
# reap it, which never happens when the parent is a container's PID 1 that does not wait
# (docker exec into `sleep infinity`, or a CI job container).
is_running() {
  kill -0 "$1" 2>/dev/null || return 1
  local stat state
  if [[ -r "/proc/$1/stat" ]]; then
    read -r stat <"/proc/$1/stat" || return 1
    state="${stat##*) }" # the field after "(comm)", which may itself hold spaces
  else
    state="$(ps -o stat= -p "$1" 2>/dev/null | tr -d ' ')" || return 1
  fi
  [[ "$state" != Z* ]]
}

# The PID of our app if it runs. A PID file whose process is gone, or whose PID now
# belongs to another program, does not count.
running_pid() {
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  is_running "$pid" || return 1
  is_our_app "$pid" || return 1
  printf '%s\n' "$pid"
}

forget_pid() { rm -f "$PID_FILE" "$URL_FILE"; }

port_is_valid() { [[ "$PORT" =~ ^[0-9]+$ ]] && ((PORT >= 1 && PORT <= 65535)); }

# Bind-test with the same options waitress uses (SO_REUSEADDR), so TIME_WAIT is not "busy".
port_is_free() {
  "$VENV_DIR/bin/python" - "$HOST" "$PORT" <<'PY'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family) as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sys.exit(1)
PY
}

# "python3 (pid 1234)" for the listener on PORT, when it can be told. On Linux from /proc:
# the listening socket's inode in /proc/net/tcp*, then the process holding that inode.
# Elsewhere (macOS) from lsof.
port_holder() {
  if [[ -r /proc/net/tcp ]]; then
    "$VENV_DIR/bin/python" - "$PORT" <<'PY'
import glob, os, sys
port = int(sys.argv[1])
inodes = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        rows = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for row in rows:
        fields = row.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            inodes.add(f"socket:[{fields[9]}]")
for fd in glob.glob("/proc/[0-9]*/fd/*"):
    try:
        if os.readlink(fd) in inodes:
            pid = fd.split("/")[2]
            comm = open(f"/proc/{pid}/comm").read().strip()
            print(f"{comm} (pid {pid})")
            break
    except OSError:  # the process or the fd went away, or is not ours to see
        continue
PY
  elif command -v lsof >/dev/null 2>&1; then
    lsof -nP -iTCP:"$PORT" -sTCP:LISTEN -Fpc 2>/dev/null |
      awk '/^p/ {pid = substr($0, 2)} /^c/ {print substr($0, 2) " (pid " pid ")"; exit}'
  fi
}

probe_host() {
  case "$HOST" in
    0.0.0.0 | "") say 127.0.0.1 ;;
    :: | "[::]") say ::1 ;;
    *) say "$HOST" ;;
  esac
}

# True when GET /healthz answers 200. Plain bash, so it needs no curl.
healthz_ok() (
  exec 3<>"/dev/tcp/$(probe_host)/$PORT"
  printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  read -r -t 2 status_line <&3
  [[ "$status_line" == "HTTP/1."?" 200"* ]]
) 2>/dev/null

show_log_tail() {
  warn "last lines of ${LOG_FILE#"$ROOT"/}:"
  tail -n 20 "$LOG_FILE" >&2 || true
}

cmd_start() {
  local pid url holder exit_code
  ensure_venv
  if pid="$(running_pid)"; then
    say "hello-app is already running: $(cat "$URL_FILE" 2>/dev/null) (pid $pid)"
    return 0
  fi
  forget_pid

  # An invalid PORT is the app's to report, with the rest of its configuration.
  if port_is_valid && ! port_is_free; then
    holder="$(port_holder)"
    die "port $PORT is already in use${holder:+ by $holder}. Stop it, or pick another port: PORT=8081 ./start.sh"
  fi

  mkdir -p "$(dirname "$LOG_FILE")" "$RUN_DIR"
  # From the checkout's root, so that `-m app` finds the package; exec keeps the PID.
  (
    cd "$ROOT"
    PORT="$PORT" HOST="$HOST" exec nohup "$VENV_DIR/bin/python" -m app
  ) >>"$LOG_FILE" 2>&1 </dev/null &
  pid=$!
  url="http://localhost:$PORT"
  printf '%s\n' "$pid" >"$PID_FILE"
  printf '%s\n' "$url" >"$URL_FILE"

  local tries=$((START_TIMEOUT * 20))
  until healthz_ok; do
    if ! is_running "$pid"; then
      exit_code=0
      wait "$pid" || exit_code=$?
      forget_pid
      warn "hello-app failed to start (exit code $exit_code)."
      show_log_tail
      exit 1
    fi
    if ((--tries <= 0)); then
      kill -TERM "$pid" 2>/dev/null || true
      forget_pid
      warn "hello-app did not answer $url/healthz within ${START_TIMEOUT}s; stopped it."
      show_log_tail
      exit 1
    fi
    sleep 0.05
  done
  say "hello-app is running: $url (pid $pid)"
  say "logs: ${LOG_FILE#"$ROOT"/} (follow with: tail -f ${LOG_FILE#"$ROOT"/})"
}

cmd_stop() {
  local pid tries
  if ! pid="$(running_pid)"; then
    forget_pid
    say "hello-app is not running."
    return 0
  fi
  kill -TERM "$pid"
  tries=$((STOP_TIMEOUT * 10))
  while is_running "$pid"; do
    if ((--tries <= 0)); then
      kill -KILL "$pid" 2>/dev/null || true
      forget_pid
      die "hello-app (pid $pid) did not stop within ${STOP_TIMEOUT}s of SIGTERM; sent SIGKILL."
    fi
    sleep 0.1
  done
  forget_pid
  say "hello-app stopped (pid $pid)."
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    say "hello-app is running: $(cat "$URL_FILE" 2>/dev/null) (pid $pid)"
    return 0
  fi
  if [[ -e "$PID_FILE" ]]; then
    forget_pid
    say "hello-app is not running (removed a stale PID file)."
  else
    say "hello-app is not running."
  fi
  return 3
}

main() {
  case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop && cmd_start ;;
    install) ensure_venv ;;
    -h | --help | help) sed -n '2,12s/^# \{0,1\}//p' "$0" ;;
    *)
      warn "unknown command '$1'. Use: ./start.sh [start|stop|status|restart|install]"
      exit 2
      ;;
  esac
}

main "$@"
