#!/usr/bin/env bash
# Deploy hello-app's CloudFormation stack: the same commands for the deploy workflow and a human.
#
#   infra/deploy.sh ami-from-manifest [MANIFEST]      AMI ID of the last Packer build
#   infra/deploy.sh current-ami STACK                 AMI the stack runs now ("" if no stack)
#   infra/deploy.sh deploy STACK AMI_ID [Key=Value…]  create or update the stack through a change set
#   infra/deploy.sh smoke STACK                       check the site through the ALB URL output
#   infra/deploy.sh smoke-url URL                     the same checks against any URL
#   infra/deploy.sh rollback STACK PREVIOUS_AMI_ID    deploy the previous AMI again
#   infra/deploy.sh outputs STACK                     print the stack's outputs
#
# Needs the AWS CLI (v1 or v2) with credentials and a region (AWS_REGION), and python3 for
# JSON and the smoke test's HTTP, so that nothing else (jq, curl) has to be installed.
# AWS_ENDPOINT_URL, when set, points the CLI elsewhere (the tests use moto's server).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly HERE
readonly TEMPLATE="${TEMPLATE:-$HERE/hello-app.yaml}"
readonly SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-180}"

die() {
  printf 'deploy.sh: %s\n' "$*" >&2
  exit 1
}
say() { printf 'deploy.sh: %s\n' "$*" >&2; }

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

require_ami() {
  [[ "$1" =~ ^ami-[0-9a-f]{8,17}$ ]] || die "'$1' is not an AMI ID (ami-…)"
}

stack_status() {
  aws cloudformation describe-stacks --stack-name "$1" \
    --query 'Stacks[0].StackStatus' --output text 2>/dev/null || echo NONE
}

ami_from_manifest() {
  local manifest="${1:-packer/manifest.json}"
  [[ -f "$manifest" ]] || die "$manifest not found: run 'packer build packer' first"
  local ami
  # The last build is the newest; its artifact_id is "REGION:AMI_ID".
  ami="$(python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["builds"][-1]["artifact_id"].split(":")[-1])' "$manifest" \
    2>/dev/null)" || die "$manifest has no builds[-1].artifact_id: is it Packer's manifest?"
  require_ami "$ami"
  printf '%s\n' "$ami"
}

current_ami() {
  local stack="$1"
  if [[ "$(stack_status "$stack")" == NONE ]]; then
    printf '\n'
    return
  fi
  aws cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Parameters[?ParameterKey=='AmiId'].ParameterValue" --output text
}

# Every parameter keeps its previous value on update, except those given on the command line.
parameters_json() {
  local stack="$1" ami="$2" status="$3"
  shift 3
  local pair previous=""
  for pair in "$@"; do
    [[ "$pair" == *=* ]] || die "parameter '$pair' is not Key=Value"
  done
  if [[ "$status" != NONE ]]; then
    previous="$(aws cloudformation describe-stacks --stack-name "$stack" \
      --query 'Stacks[0].Parameters[].ParameterKey' --output text)"
  fi
  python3 - "$previous" "$@" "AmiId=$ami" <<'PY'
import json
import sys

previous, *pairs = sys.argv[1:]
given = dict(pair.split("=", 1) for pair in pairs)
parameters = [{"ParameterKey": key, "UsePreviousValue": True}
              for key in previous.split() if key not in given]
parameters += [{"ParameterKey": key, "ParameterValue": value} for key, value in given.items()]
print(json.dumps(parameters))
PY
}

deploy() {
  local stack="$1" ami="$2"
  shift 2
  require_ami "$ami"
  local status type
  status="$(stack_status "$stack")"
  case "$status" in
    NONE) type=CREATE ;;
    *_COMPLETE) type=UPDATE ;;
    *) die "stack $stack is $status; wait for it or fix it before deploying" ;;
  esac
  [[ "$status" != ROLLBACK_COMPLETE ]] ||
    die "stack $stack is ROLLBACK_COMPLETE (its creation failed): delete it, then deploy again"

  local change_set
  change_set="deploy-$(date -u +%Y%m%d%H%M%S)"
  say "creating change set $change_set ($type) for $stack with AmiId=$ami"
  local parameters error
  parameters="$(parameters_json "$stack" "$ami" "$status" "$@")"
  if ! error="$(aws cloudformation create-change-set \
    --stack-name "$stack" --change-set-name "$change_set" --change-set-type "$type" \
    --template-body "file://$TEMPLATE" --parameters "$parameters" \
    --capabilities CAPABILITY_IAM --tags Key=app,Value=hello-app 2>&1 >/dev/null)"; then
    if [[ "$error" == *"No updates are to be performed"* ]]; then
      say "nothing to change: $stack already runs $ami with these parameters"
      return 0
    fi
    die "could not create change set: $error"
  fi

  if ! aws cloudformation wait change-set-create-complete \
    --stack-name "$stack" --change-set-name "$change_set"; then
    local reason
    reason="$(aws cloudformation describe-change-set --stack-name "$stack" \
      --change-set-name "$change_set" --query StatusReason --output text)"
    if [[ "$reason" == *"didn't contain changes"* || "$reason" == *"No updates"* ]]; then
      say "nothing to change: $stack already runs $ami with these parameters"
      aws cloudformation delete-change-set --stack-name "$stack" --change-set-name "$change_set"
      return 0
    fi
    die "change set $change_set failed: $reason"
  fi

  aws cloudformation describe-change-set --stack-name "$stack" --change-set-name "$change_set" \
    --query 'Changes[].ResourceChange.[Action, LogicalResourceId, Replacement]' --output text >&2

  say "executing $change_set; an AMI change rolls the instances one at a time (~4 min each)"
  aws cloudformation execute-change-set --stack-name "$stack" --change-set-name "$change_set"
  local waiter="stack-update-complete"
  if [[ "$type" == CREATE ]]; then waiter="stack-create-complete"; fi
  if ! aws cloudformation wait "$waiter" --stack-name "$stack"; then
    # A failed rolling update (an instance never signalled ready) makes CloudFormation roll
    # the whole stack back to the previous launch template, so the old AMI is serving again.
    say "stack $stack is $(stack_status "$stack"); recent failures:"
    # shellcheck disable=SC2016 # the backticks are a JMESPath literal, not a shell expansion
    aws cloudformation describe-stack-events --stack-name "$stack" --max-items 40 \
      --query 'StackEvents[?contains(ResourceStatus, `FAILED`)].[LogicalResourceId, ResourceStatusReason]' \
      --output text >&2 || true
    die "deploy of $ami failed"
  fi
  say "stack $stack is $(stack_status "$stack") with AmiId=$ami"
}

outputs() {
  aws cloudformation describe-stacks --stack-name "$1" \
    --query 'Stacks[0].Outputs[].[OutputKey, OutputValue]' --output text
}

output_value() {
  aws cloudformation describe-stacks --stack-name "$1" \
    --query "Stacks[0].Outputs[?OutputKey=='$2'].OutputValue" --output text
}

# "STATUS BODY" of a GET (the body's first 80 characters), or "no answer" within 5 s.
http_get() {
  python3 - "$1" <<'PY'
import http.client
import sys
import urllib.error
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
        print(response.status, response.read(80).decode(errors="replace"))
except urllib.error.HTTPError as error:
    print(error.code)
except (OSError, http.client.HTTPException, ValueError):
    print("no answer")
PY
}

# Passes when / says Hello World and /readyz (the database) answers 200, retrying until
# SMOKE_TIMEOUT so a fresh ALB's DNS name has time to resolve.
smoke_url() {
  local url="${1%/}" deadline root="" ready=""
  deadline=$((SECONDS + SMOKE_TIMEOUT))
  while ((SECONDS < deadline)); do
    root="$(http_get "$url/")"
    ready="$(http_get "$url/readyz")"
    if [[ "$root" == "200 Hello World" && "$ready" == "200 "* ]]; then
      say "smoke test passed: $url/ says Hello World and /readyz answers 200"
      return 0
    fi
    sleep 5
  done
  die "smoke test failed after ${SMOKE_TIMEOUT}s: $url/ answered '$root', /readyz answered '${ready%% \{*}'"
}

smoke() {
  local url
  url="$(output_value "$1" LoadBalancerUrl)"
  [[ -n "$url" && "$url" != None ]] || die "stack $1 has no LoadBalancerUrl output"
  smoke_url "$url"
}

main() {
  (($# >= 1)) || usage
  local command="$1"
  shift
  case "$command" in
    ami-from-manifest) ami_from_manifest "$@" ;;
    current-ami) (($# == 1)) || usage && current_ami "$1" ;;
    deploy) (($# >= 2)) || usage && deploy "$@" ;;
    rollback) (($# == 2)) || usage && deploy "$1" "$2" ;;
    smoke) (($# == 1)) || usage && smoke "$1" ;;
    smoke-url) (($# == 1)) || usage && smoke_url "$1" ;;
    outputs) (($# == 1)) || usage && outputs "$1" ;;
    -h | --help | help) usage ;;
    *) say "unknown command '$command'" && usage ;;
  esac
}

main "$@"
