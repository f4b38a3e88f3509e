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
# deploy and rollback need CFN_ROLE_ARN: CloudFormation applies the change set with that service
# role (the CloudFormationRoleArn output of infra/github-oidc.yaml), never with your credentials.
# They set infra/stack-policy.json as the stack policy, and refuse a change set that would
# replace or delete a resource that policy protects, or touch its DeletionProtection.
# Exit codes: 0 done, 1 failed, 2 bad usage or CFN_ROLE_ARN missing, 3 change set refused.
#
# Needs the AWS CLI (v1 or v2) with credentials and a region (AWS_REGION), and python3 for
# JSON and the smoke test's HTTP, so that nothing else (jq, curl) has to be installed.
# AWS_ENDPOINT_URL, when set, points the CLI elsewhere (the tests use moto's server).
set -euo pipefail
# A failing "$(…)" inside a function called through "$(…)" must stop the script too.
shopt -s inherit_errexit

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly HERE
readonly TEMPLATE="${TEMPLATE:-$HERE/hello-app.yaml}"
readonly STACK_POLICY="$HERE/stack-policy.json"
readonly SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-180}"

die() {
  printf 'deploy.sh: %s\n' "$*" >&2
  exit 1
}
say() { printf 'deploy.sh: %s\n' "$*" >&2; }

usage() {
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

require_ami() {
  [[ "$1" =~ ^ami-[0-9a-f]{8,17}$ ]] || die "'$1' is not an AMI ID (ami-…)"
}

# describe-stacks STACK with a --query; prints nothing when the stack does not exist. Any other
# error (credentials, permissions, throttling) stops the script with the CLI's own message:
# "no stack" must never be a guess, or the workflow would skip its rollback.
stack_query() {
  local stack="$1" query="$2" answer errors
  errors="$(mktemp)"
  if answer="$(aws cloudformation describe-stacks --stack-name "$stack" \
    --query "$query" --output text 2>"$errors")"; then
    rm -f "$errors"
    printf '%s\n' "$answer"
    return 0
  fi
  answer="$(<"$errors")"
  rm -f "$errors"
  [[ "$answer" == *"does not exist"* ]] || die "cannot describe stack $stack: ${answer#$'\n'}"
}

stack_status() {
  local status
  status="$(stack_query "$1" 'Stacks[0].StackStatus')"
  printf '%s\n' "${status:-NONE}"
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
  local ami
  ami="$(stack_query "$1" "Stacks[0].Parameters[?ParameterKey=='AmiId'].ParameterValue")"
  printf '%s\n' "$ami"
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

require_role() {
  if [[ -z "${CFN_ROLE_ARN:-}" ]]; then
    say "CFN_ROLE_ARN is not set: export the CloudFormationRoleArn output of the github-oidc" \
      "stack (README, \"Deploy to AWS\"); CloudFormation applies changes with that role only"
    exit 2
  fi
}

set_stack_policy() {
  aws cloudformation set-stack-policy --stack-name "$1" --stack-policy-body "file://$STACK_POLICY"
}

# Prints the change set's resource changes on stderr, one "Action LogicalResourceId
# Replacement" line each. On stdout: what in it would replace or delete a resource that the
# stack policy protects, or touch its DeletionProtection, as "replace DB (DBName,
# MasterUsername)"; nothing if none. The protected logical IDs are the stack policy's Deny
# statements' LogicalResourceId/… resources. One describe-change-set call for both.
change_set_dangers() {
  # The script comes in on fd 3, as stdin carries the change set.
  aws cloudformation describe-change-set --stack-name "$1" --change-set-name "$2" --output json |
    python3 /dev/fd/3 "$STACK_POLICY" 3<<'PY'
import json
import sys

policy = json.load(open(sys.argv[1]))
protected = {
    resource.removeprefix("LogicalResourceId/")
    for statement in policy["Statement"]
    if statement["Effect"] == "Deny"
    for resource in statement["Resource"]
}
dangers = []
for change in json.load(sys.stdin).get("Changes", []):
    resource = change.get("ResourceChange", {})
    name = resource.get("LogicalResourceId")
    print(resource.get("Action"), name, resource.get("Replacement"), sep="\t", file=sys.stderr)
    if name not in protected:
        continue
    targets = [detail.get("Target", {}) for detail in resource.get("Details", [])]
    recreating = sorted(
        {t["Name"] for t in targets if t.get("Name") and t.get("RequiresRecreation") != "Never"}
    )
    if resource.get("Action") == "Remove":
        dangers.append(f"delete {name}")
    elif resource.get("Replacement") in ("True", "Conditional"):
        dangers.append(f"replace {name} ({', '.join(recreating) or 'properties not named'})")
    elif any(t.get("Name") == "DeletionProtection" for t in targets):
        dangers.append(f"change {name} (DeletionProtection)")
print("; ".join(dangers))
PY
}

deploy() {
  local stack="$1" ami="$2"
  shift 2
  require_ami "$ami"
  require_role
  local status type
  status="$(stack_status "$stack")"
  case "$status" in
    NONE) type=CREATE ;;
    *_COMPLETE) type=UPDATE ;;
    *) die "stack $stack is $status; wait for it or fix it before deploying" ;;
  esac
  [[ "$status" != ROLLBACK_COMPLETE ]] ||
    die "stack $stack is ROLLBACK_COMPLETE (its creation failed): delete it, then deploy again"

  # Before the change set, so that the policy in force is always the repository's.
  if [[ "$type" == UPDATE ]]; then set_stack_policy "$stack"; fi

  local change_set
  change_set="deploy-$(date -u +%Y%m%d%H%M%S)"
  say "creating change set $change_set ($type) for $stack with AmiId=$ami"
  local parameters error
  parameters="$(parameters_json "$stack" "$ami" "$status" "$@")"
  if ! error="$(aws cloudformation create-change-set \
    --stack-name "$stack" --change-set-name "$change_set" --change-set-type "$type" \
    --template-body "file://$TEMPLATE" --parameters "$parameters" --role-arn "$CFN_ROLE_ARN" \
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

  local dangers
  dangers="$(change_set_dangers "$stack" "$change_set")"
  if [[ -n "$dangers" ]]; then
    aws cloudformation delete-change-set --stack-name "$stack" --change-set-name "$change_set"
    say "refusing change set $change_set: it would $dangers"
    exit 3
  fi

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
  if [[ "$type" == CREATE ]]; then set_stack_policy "$stack"; fi
  # The waiter succeeds on this status only.
  say "stack $stack is ${type}_COMPLETE with AmiId=$ami"
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
