"""The IAM policies and the stack policy in infra/, read from the templates themselves.

cfn-lint's decoder reads the CloudFormation tags (!Sub, !Ref, !GetAtt) into their JSON form,
and scripts/cfn_expand.py expands Fn::ForEach, so a statement here is exactly what
CloudFormation receives.
"""

import json
import re

import pytest
import yaml
from cfnlint.decode import decode
from support import REPO_ROOT

from scripts.cfn_expand import expand

INFRA = REPO_ROOT / "infra"
TEMPLATES = sorted(INFRA.glob("*.yaml"))
SETUP = INFRA / "github-oidc.yaml"
APP = INFRA / "hello-app.yaml"
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "deploy.yml"
PACKER = REPO_ROOT / "packer" / "hello-app.pkr.hcl"

DATA_DROPPING_ACTIONS = {
    "rds:DeleteDBInstance",
    "rds:DeleteDBCluster",
    "rds:DeleteDBSnapshot",
    "rds:DeleteDBClusterSnapshot",
    "rds:ModifyDBSnapshotAttribute",
    "rds:ModifyDBClusterSnapshotAttribute",
}
ROLE_POLICY_ACTIONS = {
    "iam:CreateRole",
    "iam:PutRolePermissionsBoundary",
    "iam:AttachRolePolicy",
    "iam:PutRolePolicy",
}
# checkov's IAM checks: none of them may be skipped.
IAM_CHECKS = {f"CKV_AWS_{n}" for n in (40, 60, 61, 62, 63, 107, 108, 109, 110, 111)}


def load(path):
    template, errors = decode(str(path))
    assert not errors, errors
    return expand(template)


def as_list(value):
    return value if isinstance(value, list) else [value]


def documents(resource):
    """Every policy document a resource holds: inline policies, or its own document."""
    properties = resource.get("Properties", {})
    if resource["Type"] == "AWS::IAM::Role":
        return [policy["PolicyDocument"] for policy in properties.get("Policies", [])]
    if resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
        return [properties["PolicyDocument"]]
    return []


def statements_of_role(template, name):
    """A role's statements: its inline policies and the template's managed policies it has."""
    role = template["Resources"][name]
    found = [s for d in documents(role) for s in as_list(d["Statement"])]
    for arn in role["Properties"].get("ManagedPolicyArns", []):
        if isinstance(arn, dict) and "Ref" in arn:
            managed = template["Resources"][arn["Ref"]]
            found += as_list(managed["Properties"]["PolicyDocument"]["Statement"])
    return found


def all_statements():
    for path in TEMPLATES:
        template = load(path)
        for name, resource in template.get("Resources", {}).items():
            for document in documents(resource):
                for statement in as_list(document["Statement"]):
                    yield f"{path.name}:{name}:{statement.get('Sid', '')}", statement


def actions_of(statements, effect):
    return {a for s in statements if s["Effect"] == effect for a in as_list(s["Action"])}


def allowing(statements, action):
    return [s for s in statements if s["Effect"] == "Allow" and action in as_list(s["Action"])]


@pytest.fixture(scope="module")
def setup():
    return load(SETUP)


def test_no_statement_allows_every_action_or_a_whole_service_on_every_resource():
    for where, statement in all_statements():
        if statement["Effect"] != "Allow" or "*" not in as_list(statement.get("Resource")):
            continue
        for action in as_list(statement["Action"]):
            assert action != "*" and not action.endswith(":*"), f"{where} allows {action} on *"


def test_both_deploy_roles_are_denied_dropping_the_data(setup):
    for role in ("DeployRole", "CloudFormationRole"):
        denied = set()
        for statement in statements_of_role(setup, role):
            if statement["Effect"] == "Deny" and statement["Resource"] == "*":
                assert "Condition" not in statement, role
                denied |= set(as_list(statement["Action"]))
        assert denied >= DATA_DROPPING_ACTIONS, (role, DATA_DROPPING_ACTIONS - denied)


def test_the_deploy_role_may_not_modify_the_database_itself(setup):
    denied = actions_of(statements_of_role(setup, "DeployRole"), "Deny")
    assert {"rds:ModifyDBInstance", "rds:ModifyDBCluster"} <= denied


def test_both_deploy_roles_may_use_each_transform_the_app_template_declares(setup):
    declared, errors = decode(str(APP))
    assert not errors, errors
    transforms = as_list(declared.get("Transform", []))
    for role in ("DeployRole", "CloudFormationRole"):
        statements = allowing(statements_of_role(setup, role), "cloudformation:CreateChangeSet")
        resources = [resource for s in statements for resource in as_list(s["Resource"])]
        for name in transforms:
            arn = "arn:${AWS::Partition}:cloudformation:${AWS::Region}:aws:transform/"
            assert {"Fn::Sub": arn + name.removeprefix("AWS::")} in resources, (role, name)


def test_pass_role_is_scoped_to_a_role_and_a_service_everywhere():
    for where, statement in all_statements():
        if statement["Effect"] != "Allow" or "iam:PassRole" not in as_list(statement["Action"]):
            continue
        assert "*" not in as_list(statement["Resource"]), where
        assert statement["Condition"]["StringEquals"]["iam:PassedToService"], where


def test_the_deploy_role_passes_only_the_service_role_and_only_to_cloudformation(setup):
    (statement,) = allowing(statements_of_role(setup, "DeployRole"), "iam:PassRole")
    assert statement["Resource"] == {"Fn::GetAtt": ["CloudFormationRole", "Arn"]}
    assert statement["Condition"] == {
        "StringEquals": {"iam:PassedToService": "cloudformation.amazonaws.com"}
    }
    # A change set of a stack, only with the service role; the other resource of
    # CreateChangeSet is the app template's transform.
    statements = allowing(statements_of_role(setup, "DeployRole"), "cloudformation:CreateChangeSet")
    (change_sets,) = [s for s in statements if ":stack/" in s["Resource"]["Fn::Sub"]]
    assert change_sets["Condition"] == {
        "StringEquals": {"cloudformation:RoleArn": {"Fn::GetAtt": ["CloudFormationRole", "Arn"]}}
    }
    for statement in statements:
        assert statement is change_sets or ":aws:transform/" in statement["Resource"]["Fn::Sub"]


def test_the_deploy_role_has_no_iam_power_but_passing_the_service_role(setup):
    actions = actions_of(statements_of_role(setup, "DeployRole"), "Allow")
    assert {a for a in actions if a.startswith("iam:")} == {"iam:PassRole"}
    assert not {a for a in actions if a.startswith(("rds:", "cloudformation:Update"))}


def test_roles_get_policies_only_with_the_boundary_on(setup):
    statements = statements_of_role(setup, "CloudFormationRole")
    for action in ROLE_POLICY_ACTIONS:
        found = allowing(statements, action)
        assert found, action
        for statement in found:
            assert statement["Condition"] == {
                "StringEquals": {"iam:PermissionsBoundary": {"Ref": "InstanceBoundary"}}
            }, action
    assert "iam:DeleteRolePermissionsBoundary" in actions_of(statements, "Deny")


def test_every_role_the_app_stack_creates_carries_the_boundary_the_setup_creates(setup):
    boundary_name = setup["Resources"]["InstanceBoundary"]["Properties"]["ManagedPolicyName"]
    expected = boundary_name["Fn::Sub"].replace("${AppStackName}", "${AWS::StackName}")
    roles = {n: r for n, r in load(APP)["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    assert roles
    for name, role in roles.items():
        boundary = role["Properties"]["PermissionsBoundary"]["Fn::Sub"]
        assert boundary == f"arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:policy/{expected}", (
            name
        )


def test_the_boundary_grants_no_iam_and_no_whole_service(setup):
    document = setup["Resources"]["InstanceBoundary"]["Properties"]["PolicyDocument"]
    for statement in as_list(document["Statement"]):
        for action in as_list(statement["Action"]):
            assert not action.startswith(("iam:", "sts:")), action
            assert not action.endswith(":*"), action


def test_the_github_role_trusts_only_the_production_environment(setup):
    (trust,) = setup["Resources"]["DeployRole"]["Properties"]["AssumeRolePolicyDocument"][
        "Statement"
    ]
    claims = trust["Condition"]["StringEquals"]
    assert claims["token.actions.githubusercontent.com:sub"] == {
        "Fn::Sub": "repo:${GitHubRepository}:environment:production"
    }
    (service,) = setup["Resources"]["CloudFormationRole"]["Properties"]["AssumeRolePolicyDocument"][
        "Statement"
    ]
    assert service["Principal"] == {"Service": "cloudformation.amazonaws.com"}


def test_packer_tags_its_build_instance_as_the_deploy_role_requires(setup):
    statements = statements_of_role(setup, "DeployRole")
    required = {
        key.split("/", 1)[1]: value
        for statement in allowing(statements, "ec2:RunInstances")
        for key, value in statement.get("Condition", {}).get("StringEquals", {}).items()
        if key.startswith("aws:RequestTag/")
    }
    assert required == {"PackerBake": "hello-app"}
    hcl = PACKER.read_text()
    for block in ("run_tags", "run_volume_tags"):
        tags = re.search(rf"^\s*{block}\s*=\s*\{{(.*)\}}$", hcl, re.M).group(1)
        assert 'PackerBake = "hello-app"' in tags, block


def test_no_checkov_skip_is_left_for_an_iam_check():
    for path in TEMPLATES:
        for name, resource in load(path).get("Resources", {}).items():
            skips = resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
            skipped = {skip["id"] for skip in skips}
            assert not skipped & IAM_CHECKS, f"{path.name}:{name} skips {skipped & IAM_CHECKS}"


def test_the_deploy_session_outlasts_the_job(setup):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["deploy"]
    (assume,) = [s for s in job["steps"] if "configure-aws-credentials" in s.get("uses", "")]
    duration = assume["with"]["role-duration-seconds"]
    assert duration >= job["timeout-minutes"] * 60
    assert duration <= setup["Resources"]["DeployRole"]["Properties"]["MaxSessionDuration"]
    assert workflow["env"]["CFN_ROLE_ARN"] == "${{ vars.AWS_CLOUDFORMATION_ROLE_ARN }}"


def test_the_stack_policy_denies_replacing_or_deleting_the_database_and_allows_the_rest():
    statements = json.loads((INFRA / "stack-policy.json").read_text())["Statement"]
    (deny,) = [s for s in statements if s["Effect"] == "Deny"]
    assert sorted(deny["Action"]) == ["Update:Delete", "Update:Replace"]
    assert "LogicalResourceId/DB" in deny["Resource"]
    app_resources = load(APP)["Resources"]
    for resource in deny["Resource"]:
        assert resource.removeprefix("LogicalResourceId/") in app_resources, resource
    (allow,) = [s for s in statements if s["Effect"] == "Allow"]
    assert (allow["Action"], allow["Resource"]) == ("Update:*", "*")


def test_the_architecture_document_names_every_statement_of_the_setup_stack(setup):
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    section = text.split("### Deploy permissions and stateful guards", 1)[1].split("\n## ", 1)[0]
    sids = {
        statement["Sid"]
        for resource in setup["Resources"].values()
        for document in documents(resource)
        for statement in as_list(document["Statement"])
    }
    assert len(sids) > 30
    assert {sid for sid in sids if f"`{sid}`" not in section} == set()
