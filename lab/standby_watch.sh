# shellcheck shell=sh
# What RDS Multi-AZ does when it loses the standby, for the lab's pair: once the synchronous
# standby has not been heard from for the detection window, the primary stops waiting for it
# (commits go on, on the primary alone); once a standby streams again and has caught up,
# commits wait for it again. Without this, PostgreSQL holds every COMMIT until the standby
# is back: a write outage as long as the standby's.
#
# Runs in a container of the lab's postgres image (sh, psql), on the replication network,
# started by lab/database.py: sh -c "$(cat standby_watch.sh)" sh DETECTION_S HOST...
# PGPASSWORD holds the superuser's password. It logs one line per change, to stdout.
set -eu

detection_s=$1
shift

# One value from HOST, or nothing when it does not answer within 2 s (a paused server).
value() {
  PGCONNECT_TIMEOUT=2 psql -X -q -A -t -h "$1" -U postgres -d postgres \
    -c "SET statement_timeout = '2s'" -c "$2" 2>/dev/null || true
}

# The first of HOST... that answers and is not in recovery. The caller names the last
# primary first: asking a paused standby first would cost its 2 s timeout on every check.
primary() {
  for host in "$@"; do
    if [ "$(value "$host" 'SELECT pg_is_in_recovery()')" = f ]; then
      echo "$host"
      return
    fi
  done
}

require() {
  value "$1" "ALTER SYSTEM SET synchronous_standby_names = '$2'" >/dev/null
  value "$1" 'SELECT pg_reload_conf()' >/dev/null
  echo "$(date -u +%H:%M:%S) $1: synchronous_standby_names = '$2' ($3)"
}

silent_checks=0
host=""
while :; do
  # shellcheck disable=SC2086 # $host is one name or none
  host=$(primary $host "$@")
  if [ -n "$host" ]; then
    required=$(value "$host" 'SHOW synchronous_standby_names')
    heard=$(value "$host" "SELECT application_name FROM pg_stat_replication
      WHERE state = 'streaming' AND reply_time > now() - interval '$detection_s seconds'
      LIMIT 1")
    caught_up=$(value "$host" "SELECT application_name FROM pg_stat_replication
      WHERE state = 'streaming' AND reply_time > now() - interval '2 seconds'
        AND pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn) < 1048576
      LIMIT 1")
    # Two checks in a row, so that a primary just back from a pause, whose walsender has
    # not yet read the standby's replies, does not count as having lost it.
    if [ -n "$required" ] && [ -z "$heard" ]; then
      silent_checks=$((silent_checks + 1))
    else
      silent_checks=0
    fi
    if [ "$silent_checks" -ge 2 ]; then
      require "$host" "" "no word from the standby for ${detection_s} s"
      silent_checks=0
    elif [ -z "$required" ] && [ -n "$caught_up" ]; then
      require "$host" "$caught_up" "the standby has caught up"
    fi
  fi
  sleep 0.5
done
