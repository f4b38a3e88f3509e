#!/usr/bin/env bash
# Run one of hello-app's drills on AWS with AWS FIS, and print what the ALB and RDS measured.
#
#   infra/drill.sh NAME                         run drill NAME (instance-loss, database-failover
#                                               or az-loss), wait for it to end, print figures
#   infra/drill.sh figures APP_STACK START END  the ALB's and RDS's figures of stack APP_STACK,
#                                               minute by minute, from START to END (ISO 8601)
#
# The experiments are those of the stack made from infra/fis-drills.yaml, DRILLS_STACK
# (default hello-app-drills), each found by its Drill tag; that stack names the app's stack.
# infra/fis/README.md gives each drill's hypothesis and how to read the figures.
# DRILL_TIMEOUT (default 1800 s) bounds the wait for the experiment, polled every DRILL_POLL
# (15 s); the figures go on DRILL_SETTLE (300 s) after its end, so that the recovery shows.
# Needs the AWS CLI (v1 or v2) with credentials and a region, and python3, as deploy.sh does.
# AWS_ENDPOINT_URL, when set, points the CLI elsewhere (the tests use moto's server).
set -euo pipefail

readonly DRILLS_STACK="${DRILLS_STACK:-hello-app-drills}"
readonly DRILL_TIMEOUT="${DRILL_TIMEOUT:-1800}"
readonly DRILL_POLL="${DRILL_POLL:-15}"
readonly DRILL_SETTLE="${DRILL_SETTLE:-300}"
readonly DRILLS="instance-loss database-failover az-loss"
# The figures start this long before the fault, so that the table shows the normal load first.
readonly BEFORE_SECONDS=120

die() {
  printf 'drill.sh: %s\n' "$*" >&2
  exit 1
}
say() { printf 'drill.sh: %s\n' "$*" >&2; }

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# awscli v1 (PyPI) pins rds to its public endpoint and ignores AWS_ENDPOINT_URL.
aws_rds() {
  aws rds "$@" ${AWS_ENDPOINT_URL:+--endpoint-url "$AWS_ENDPOINT_URL"}
}

output_value() {
  aws cloudformation describe-stacks --stack-name "$1" \
    --query "Stacks[0].Outputs[?OutputKey=='$2'].OutputValue" --output text
}

# The experiment template of the drills stack whose Drill tag is NAME.
template_id() {
  local name="$1" ids id
  ids="$(aws cloudformation list-stack-resources --stack-name "$DRILLS_STACK" \
    --query "StackResourceSummaries[?ResourceType=='AWS::FIS::ExperimentTemplate'].PhysicalResourceId" \
    --output text 2>/dev/null)" ||
    die "no stack $DRILLS_STACK: deploy infra/fis-drills.yaml first (README, 'Run a drill on AWS')"
  for id in $ids; do
    if [[ "$(aws fis get-experiment-template --id "$id" \
      --query 'experimentTemplate.tags.Drill' --output text)" == "$name" ]]; then
      printf '%s\n' "$id"
      return
    fi
  done
  die "stack $DRILLS_STACK has no experiment template tagged Drill=$name: update it from infra/fis-drills.yaml"
}

# Seconds since the epoch of an ISO 8601 time; exits 2 when it is not one.
epoch() {
  python3 - "$1" <<'PY' || exit 2
import datetime
import sys

try:
    moment = datetime.datetime.fromisoformat(sys.argv[1])
except ValueError:
    sys.exit(f"drill.sh: '{sys.argv[1]}' is not an ISO 8601 time such as 2026-11-27T14:00:00Z")
if moment.tzinfo is None:
    moment = moment.replace(tzinfo=datetime.UTC)
print(int(moment.timestamp()))
PY
}

iso() { python3 -c 'import datetime, sys
print(datetime.datetime.fromtimestamp(int(sys.argv[1]), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))' "$1"; }

# A cut zone's primary is cut off, not failed: RDS may keep it there (infra/fis/README.md).
warn_if_the_primary_is_cut_off() {
  local app="$1" db subnet db_zone cut_zone
  db="$(output_value "$app" DBInstanceIdentifier)"
  subnet="$(output_value "$app" PrivateSubnetAId)"
  db_zone="$(aws_rds describe-db-instances --db-instance-identifier "$db" \
    --query 'DBInstances[0].AvailabilityZone' --output text)"
  cut_zone="$(aws ec2 describe-subnets --subnet-ids "$subnet" \
    --query 'Subnets[0].AvailabilityZone' --output text)"
  if [[ "$db_zone" == "$cut_zone" ]]; then
    say "the database primary is in $cut_zone, the zone az-loss cuts off: /visits fails until RDS fails it over, if it does (run database-failover first to move it)"
  else
    say "the database primary is in $db_zone; az-loss cuts off $cut_zone"
  fi
}

run_drill() {
  local name="$1" template app experiment status
  template="$(template_id "$name")"
  app="$(output_value "$DRILLS_STACK" AppStackName)"
  [[ "$name" != az-loss ]] || warn_if_the_primary_is_cut_off "$app"
  experiment="$(aws fis start-experiment --experiment-template-id "$template" \
    --tags "Drill=$name" --query 'experiment.id' --output text)"
  say "started $name as experiment $experiment on stack $app; waiting for it to end (at most ${DRILL_TIMEOUT}s)"

  local deadline=$((SECONDS + DRILL_TIMEOUT))
  while :; do
    status="$(aws fis get-experiment --id "$experiment" --query 'experiment.state.status' --output text)"
    case "$status" in
      completed | stopped | failed) break ;;
    esac
    if ((SECONDS >= deadline)); then
      aws fis stop-experiment --id "$experiment" >/dev/null || true
      die "experiment $experiment was still $status after ${DRILL_TIMEOUT}s: asked FIS to stop it"
    fi
    sleep "$DRILL_POLL"
  done

  local found start end reason
  found="$(aws fis get-experiment --id "$experiment" --output json)"
  { read -r start end && IFS= read -r reason; } < <(python3 - "$found" <<'PY'
import datetime
import json
import sys

experiment = json.loads(sys.argv[1])["experiment"]


def epoch(value):  # the CLI prints times as ISO 8601 or as seconds since the epoch
    if isinstance(value, (int, float)):
        return int(value)
    return int(datetime.datetime.fromisoformat(value).timestamp())


print(epoch(experiment["startTime"]), epoch(experiment.get("endTime", experiment["startTime"])))
print(experiment["state"].get("reason", ""))
PY
  )
  say "experiment $experiment $status at $(iso "$end") after $((end - start))s: $reason"
  if ((DRILL_SETTLE > 0)); then
    say "waiting ${DRILL_SETTLE}s so that the figures show the recovery"
    sleep "$DRILL_SETTLE"
  fi
  printf 'Drill %s (experiment %s, %s): ran from %s to %s UTC\n' \
    "$name" "$experiment" "$status" "$(iso "$start")" "$(iso "$end")"
  figures "$app" "$(iso $((start - BEFORE_SECONDS)))" "$(iso $((end + DRILL_SETTLE)))"
  # A stop condition (or an error) ended it early: the hypothesis did not hold, or is unknown.
  [[ "$status" == completed ]] || exit 1
}

figures() {
  local app="$1" start end
  start="$(epoch "$2")"
  end="$(epoch "$3")"
  ((start < end)) || { say "START must be before END" && exit 2; }
  local outputs
  outputs="$(aws cloudformation describe-stacks --stack-name "$app" \
    --query 'Stacks[0].Outputs' --output json 2>/dev/null)" ||
    die "no stack $app: give the name of the stack made from infra/hello-app.yaml"

  local queries metrics events db
  queries="$(python3 - "$outputs" <<'PY'
import json
import sys

outputs = {o["OutputKey"]: o["OutputValue"] for o in json.loads(sys.argv[1]) or []}
missing = {"LoadBalancerFullName", "TargetGroupFullName", "DBInstanceIdentifier"} - set(outputs)
if missing:
    sys.exit(f"drill.sh: the app's stack has no {', '.join(sorted(missing))} output: update it")
alb = [{"Name": "LoadBalancer", "Value": outputs["LoadBalancerFullName"]}]
group = [*alb, {"Name": "TargetGroup", "Value": outputs["TargetGroupFullName"]}]
db = [{"Name": "DBInstanceIdentifier", "Value": outputs["DBInstanceIdentifier"]}]
wanted = [
    ("requests", "AWS/ApplicationELB", "RequestCount", alb, "Sum"),
    ("elb5xx", "AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", alb, "Sum"),
    ("target5xx", "AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", alb, "Sum"),
    ("unhealthy", "AWS/ApplicationELB", "UnHealthyHostCount", group, "Maximum"),
    ("p99", "AWS/ApplicationELB", "TargetResponseTime", alb, "p99"),
    ("connections", "AWS/RDS", "DatabaseConnections", db, "Maximum"),
]
print(json.dumps([
    {"Id": query_id, "MetricStat": {
        "Metric": {"Namespace": namespace, "MetricName": name, "Dimensions": dimensions},
        "Period": 60, "Stat": stat}}
    for query_id, namespace, name, dimensions, stat in wanted
]))
PY
)" || exit 1
  metrics="$(aws cloudwatch get-metric-data --metric-data-queries "$queries" \
    --start-time "$(iso "$start")" --end-time "$(iso "$end")" --output json)"
  db="$(output_value "$app" DBInstanceIdentifier)"
  events="$(aws_rds describe-events --source-type db-instance --source-identifier "$db" \
    --start-time "$(iso "$start")" --end-time "$(iso "$end")" --output json)"
  python3 - "$metrics" "$events" "$start" "$end" <<'PY'
import datetime
import json
import sys

metrics, events = json.loads(sys.argv[1]), json.loads(sys.argv[2])
start, end = (datetime.datetime.fromtimestamp(int(t), datetime.UTC) for t in sys.argv[3:5])
COLUMNS = ("minute (UTC)", "requests", "ELB 5xx", "app 5xx", "unhealthy", "p99 ms",
           "DB connections")  # fmt: skip
IDS = ("requests", "elb5xx", "target5xx", "unhealthy", "p99", "connections")


def moment(value):
    """A time as the CLI prints it: ISO 8601, or seconds since the epoch."""
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    return datetime.datetime.fromisoformat(value).astimezone(datetime.UTC)


by_minute = {}
for result in metrics["MetricDataResults"]:
    for at, value in zip(result["Timestamps"], result["Values"], strict=True):
        if value is not None:
            by_minute.setdefault(moment(at).replace(second=0), {})[result["Id"]] = value


def cell(query_id, value):
    if value is None:
        return "-"
    return f"{value * 1000:.0f}" if query_id == "p99" else f"{value:.0f}"


rows = [COLUMNS]
for minute in sorted(by_minute):
    values = by_minute[minute]
    rows.append((f"{minute:%H:%M}", *(cell(i, values.get(i)) for i in IDS)))


def total(query_id, combine, prefix=""):
    found = [values[query_id] for values in by_minute.values() if query_id in values]
    return prefix + cell(query_id, combine(found)) if found else "-"


rows.append(("whole window", total("requests", sum), total("elb5xx", sum),
             total("target5xx", sum), total("unhealthy", max, "max "),
             total("p99", max, "max "), total("connections", max, "max ")))  # fmt: skip
widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]


def line(cells):
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


print(f"ALB and RDS, {start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC, per minute:")
print(line(rows[0]))
print("  ".join("-" * w for w in widths))
for row in rows[1:]:
    print(line(row))
if len(rows) == 2:
    print("(no datapoints yet: CloudWatch publishes a minute's figures 1-3 minutes later)")
found = sorted(
    (moment(e["Date"]), e["Message"])
    for e in events.get("Events", [])
    if start <= moment(e["Date"]) <= end
)
print("RDS events:" if found else "RDS events: none in this window")
for at, message in found:
    print(f"  {at:%H:%M:%S}  {message}")
PY
}

main() {
  (($# >= 1)) || usage
  local command="$1"
  shift
  case "$command" in
    figures) (($# == 3)) || usage && figures "$@" ;;
    -h | --help | help) usage ;;
    *)
      if [[ " $DRILLS " == *" $command "* ]] && (($# == 0)); then
        run_drill "$command"
      else
        say "unknown drill '$command' (one of: $DRILLS)" && usage
      fi
      ;;
  esac
}

main "$@"
