"""infra/hello-app.yaml deployed against moto's server, then checked through the AWS APIs.

The stack is created by infra/deploy.sh (the script the deploy workflow runs), so the
change-set path is exercised too. See scripts/moto_server.py for what moto lacks.
"""

import ast
import base64
import grp
import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import urllib.parse

import boto3
import psycopg2.extensions
import pytest
import yaml
from cfnlint.decode import cfn_yaml
from support import AMI_APP_LOG_FILE, REPO_ROOT, free_port, require_command, wait_until

from app.config import check_database_url

REGION = "us-east-1"
AMI = "ami-0123456789abcdef0"
NEW_AMI = "ami-0fedcba9876543210"
DEPLOY = REPO_ROOT / "infra" / "deploy.sh"
TEMPLATE = REPO_ROOT / "infra" / "hello-app.yaml"

pytestmark = pytest.mark.aws


@pytest.fixture(scope="module")
def moto_env(tmp_path_factory):
    """moto's server on a free port, and the environment that points AWS clients at it."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "scripts" / "moto_server.py"), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",  # the venv's aws CLI
    }
    env.pop("AWS_PROFILE", None)
    try:
        wait_until(lambda: _answers(port), timeout=30, what="moto server")
        env["CFN_ROLE_ARN"] = cloudformation_service_role(env)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def cloudformation_service_role(env):
    """The role deploy.sh passes to CloudFormation, as infra/github-oidc.yaml makes it."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "cloudformation.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    return client(env, "iam").create_role(
        RoleName="github-oidc-CloudFormationRole",
        Path="/deploy/",
        AssumeRolePolicyDocument=json.dumps(trust),
    )["Role"]["Arn"]


def _answers(port):
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def client(env, service):
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto accepts any key
    )


def deploy_sh(env, *args, check=True):
    result = subprocess.run(
        [str(DEPLOY), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"deploy.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def stack_facts(env, name):
    cfn = client(env, "cloudformation")
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    resources = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    }
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return stack, resources, outputs


@pytest.fixture(scope="module")
def http_stack(moto_env):
    """The stack without a certificate (plain HTTP), created through deploy.sh."""
    deploy_sh(moto_env, "deploy", "hello-http", AMI)
    return stack_facts(moto_env, "hello-http")


@pytest.fixture(scope="module")
def https_stack(moto_env):
    acm = client(moto_env, "acm")
    certificate = acm.request_certificate(DomainName="hello.example.com")["CertificateArn"]
    deploy_sh(
        moto_env,
        "deploy",
        "hello-https",
        AMI,
        f"CertificateArn={certificate}",
        "AlarmEmail=ops@example.com",
    )
    return (*stack_facts(moto_env, "hello-https"), certificate)


def test_stack_is_created_through_a_change_set(http_stack):
    stack, _, _ = http_stack
    assert stack["StackStatus"] == "CREATE_COMPLETE"


def test_public_and_private_subnets_span_two_availability_zones(moto_env, http_stack):
    _, resources, _ = http_stack
    ec2 = client(moto_env, "ec2")
    for tier in ("Public", "Private"):
        ids = [resources[f"{tier}SubnetA"], resources[f"{tier}SubnetB"]]
        subnets = ec2.describe_subnets(SubnetIds=ids)["Subnets"]
        assert len({s["AvailabilityZone"] for s in subnets}) == 2, tier
        assert not any(s["MapPublicIpOnLaunch"] for s in subnets), tier


def test_private_subnets_have_no_route_to_the_internet(moto_env, http_stack):
    _, resources, _ = http_stack
    ec2 = client(moto_env, "ec2")
    private = {resources["PrivateSubnetA"], resources["PrivateSubnetB"]}
    tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [resources["Vpc"]]}])[
        "RouteTables"
    ]
    serving = [t for t in tables if private & {a.get("SubnetId") for a in t["Associations"]}]
    assert {
        a["SubnetId"] for t in serving for a in t["Associations"] if a.get("SubnetId")
    } == private
    for table in serving:
        assert all(r.get("DestinationCidrBlock") != "0.0.0.0/0" for r in table["Routes"])
    public = [
        t
        for t in tables
        if resources["PublicSubnetA"] in {a.get("SubnetId") for a in t["Associations"]}
    ]
    assert any(r.get("GatewayId", "").startswith("igw-") for r in public[0]["Routes"])


def test_instances_reach_the_aws_apis_they_need_through_endpoints(moto_env, http_stack):
    _, resources, _ = http_stack
    endpoints = client(moto_env, "ec2").describe_vpc_endpoints(
        Filters=[{"Name": "vpc-id", "Values": [resources["Vpc"]]}]
    )["VpcEndpoints"]
    services = {e["ServiceName"].rsplit(".", 1)[-1] for e in endpoints}
    assert services == {
        "ssm",
        "ssmmessages",
        "ec2messages",
        "logs",
        "secretsmanager",
        "cloudformation",
        "monitoring",
    }
    for endpoint in endpoints:
        assert sorted(endpoint["SubnetIds"]) == sorted(
            [resources["PrivateSubnetA"], resources["PrivateSubnetB"]]
        )
    # Fn::ForEach writes them; under the logical IDs of the stacks made before it, since a new
    # ID replaces the endpoint, and the new one's private DNS name clashes with the old one's.
    names = ["Ssm", "SsmMessages", "Ec2Messages", "Logs", "SecretsManager", "CloudFormation",
             "Monitoring"]  # fmt: skip
    by_name = {resources[f"{name}Endpoint"] for name in names}
    assert by_name == {endpoint["VpcEndpointId"] for endpoint in endpoints}


def test_http_listener_forwards_to_a_target_group_checking_healthz(moto_env, http_stack):
    _, resources, _ = http_stack
    elb = client(moto_env, "elbv2")
    listeners = elb.describe_listeners(LoadBalancerArn=resources["LoadBalancer"])["Listeners"]
    assert [(listener["Port"], listener["Protocol"]) for listener in listeners] == [(80, "HTTP")]
    (action,) = listeners[0]["DefaultActions"]
    assert action["Type"] == "forward"
    (group,) = elb.describe_target_groups(TargetGroupArns=[action["TargetGroupArn"]])[
        "TargetGroups"
    ]
    assert group["HealthCheckPath"] == "/healthz"
    assert group["Port"] == 8080
    assert (
        group["HealthCheckIntervalSeconds"],
        group["HealthyThresholdCount"],
        group["UnhealthyThresholdCount"],
    ) == (10, 2, 3)
    attributes = {
        a["Key"]: a["Value"]
        for a in elb.describe_target_group_attributes(TargetGroupArn=group["TargetGroupArn"])[
            "Attributes"
        ]
    }
    assert attributes["deregistration_delay.timeout_seconds"] == "30"


def test_load_balancer_is_internet_facing_in_the_public_subnets(moto_env, http_stack):
    _, resources, outputs = http_stack
    (balancer,) = client(moto_env, "elbv2").describe_load_balancers(
        LoadBalancerArns=[resources["LoadBalancer"]]
    )["LoadBalancers"]
    assert balancer["Scheme"] == "internet-facing"
    assert sorted(z["SubnetId"] for z in balancer["AvailabilityZones"]) == sorted(
        [resources["PublicSubnetA"], resources["PublicSubnetB"]]
    )
    assert outputs["LoadBalancerUrl"] == f"http://{balancer['DNSName']}"


def test_auto_scaling_group_keeps_two_instances_over_two_private_subnets(moto_env, http_stack):
    _, resources, _ = http_stack
    autoscaling = client(moto_env, "autoscaling")
    (group,) = autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[resources["AutoScalingGroup"]]
    )["AutoScalingGroups"]
    assert group["MinSize"] >= 2
    assert group["MaxSize"] > group["MinSize"]
    assert sorted(group["VPCZoneIdentifier"].split(",")) == sorted(
        [resources["PrivateSubnetA"], resources["PrivateSubnetB"]]
    )
    assert group["HealthCheckType"] == "ELB"
    assert group["HealthCheckGracePeriod"] >= 180
    assert group["TargetGroupARNs"] == [resources["TargetGroup"]]
    (policy,) = autoscaling.describe_policies(AutoScalingGroupName=group["AutoScalingGroupName"])[
        "ScalingPolicies"
    ]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["TargetTrackingConfiguration"]["PredefinedMetricSpecification"][
        "PredefinedMetricType"
    ] == ("ASGAverageCPUUtilization")


def launch_template_data(env, template_id, version="$Latest"):
    (found,) = client(env, "ec2").describe_launch_template_versions(
        LaunchTemplateId=template_id, Versions=[version]
    )["LaunchTemplateVersions"]
    return found["LaunchTemplateData"]


def test_launch_template_requires_imdsv2_and_has_no_public_ip(moto_env, http_stack):
    _, resources, _ = http_stack
    data = launch_template_data(moto_env, resources["LaunchTemplate"])
    assert data["ImageId"] == AMI
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is False
    assert "KeyName" not in data
    assert all(m["Ebs"]["Encrypted"] for m in data["BlockDeviceMappings"])


def test_database_is_multi_az_encrypted_private_and_protected(moto_env, http_stack):
    _, resources, outputs = http_stack
    (db,) = client(moto_env, "rds").describe_db_instances(DBInstanceIdentifier=resources["DB"])[
        "DBInstances"
    ]
    assert db["Engine"] == "postgres"
    assert db["MultiAZ"] is True
    assert db["StorageEncrypted"] is True
    assert db["PubliclyAccessible"] is False
    assert db["DeletionProtection"] is True
    assert db["BackupRetentionPeriod"] >= 1
    assert db["MasterUserSecret"]["SecretArn"] == outputs["DatabaseSecretArn"]
    assert db["IAMDatabaseAuthenticationEnabled"] is True  # for the app's own role
    assert sorted(s["SubnetIdentifier"] for s in db["DBSubnetGroup"]["Subnets"]) == sorted(
        [resources["PrivateSubnetA"], resources["PrivateSubnetB"]]
    )


def test_database_refuses_connections_without_tls(moto_env, http_stack):
    _, resources, _ = http_stack
    rds = client(moto_env, "rds")
    (db,) = rds.describe_db_instances(DBInstanceIdentifier=resources["DB"])["DBInstances"]
    (group,) = db["DBParameterGroups"]
    assert group["DBParameterGroupName"] == resources["DBParameterGroup"]
    (described,) = rds.describe_db_parameter_groups(
        DBParameterGroupName=group["DBParameterGroupName"]
    )["DBParameterGroups"]
    assert described["DBParameterGroupFamily"] == "postgres16"  # DBEngineVersion's default
    parameters = rds.describe_db_parameters(DBParameterGroupName=group["DBParameterGroupName"])
    values = {p["ParameterName"]: p.get("ParameterValue") for p in parameters["Parameters"]}
    assert values["rds.force_ssl"] == "1"


def inline_policy_statements(env, role, name):
    document = client(env, "iam").get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    if isinstance(document, str):  # moto keeps a policy given by CloudFormation as a Python repr
        document = ast.literal_eval(document)
    return document["Statement"]


def test_instance_role_reads_only_its_own_database_secret(moto_env, http_stack):
    _, resources, outputs = http_stack
    role = resources["InstanceRole"]
    (statement,) = inline_policy_statements(moto_env, role, "read-own-database-secret")
    assert statement["Action"] == "secretsmanager:GetSecretValue"
    assert statement["Resource"] == outputs["DatabaseSecretArn"]
    inline = client(moto_env, "iam").list_role_policies(RoleName=role)["PolicyNames"]
    assert sorted(inline) == [
        "connect-as-the-app-database-role",
        "publish-disk-use",
        "read-own-database-secret",
        "session-manager",
        "ship-app-log",
        "signal-readiness-to-this-stack",
    ]


def test_instance_role_may_sign_database_tokens_for_the_app_role_only(moto_env, http_stack):
    _, resources, _ = http_stack
    (db,) = client(moto_env, "rds").describe_db_instances(DBInstanceIdentifier=resources["DB"])[
        "DBInstances"
    ]
    _, _, settings = user_data(moto_env, resources["LaunchTemplate"])
    assert settings["db_app_user"] != db["MasterUsername"]
    (statement,) = inline_policy_statements(
        moto_env, resources["InstanceRole"], "connect-as-the-app-database-role"
    )
    account = client(moto_env, "sts").get_caller_identity()["Account"]
    assert statement["Action"] == "rds-db:connect"
    assert statement["Resource"] == (
        f"arn:aws:rds-db:{REGION}:{account}:dbuser:{db['DbiResourceId']}/{settings['db_app_user']}"
    )


def test_instance_role_has_only_what_session_manager_needs(moto_env, http_stack):
    _, resources, _ = http_stack
    role = resources["InstanceRole"]
    statements = inline_policy_statements(moto_env, role, "session-manager")
    account = client(moto_env, "sts").get_caller_identity()["Account"]
    assert [(s["Action"], s["Resource"]) for s in statements] == [
        ("ssm:UpdateInstanceInformation", f"arn:aws:ec2:{REGION}:{account}:instance/*"),
        (
            [
                "ssmmessages:CreateControlChannel",
                "ssmmessages:CreateDataChannel",
                "ssmmessages:OpenControlChannel",
                "ssmmessages:OpenDataChannel",
            ],
            "*",
        ),
    ]
    # No AmazonSSMManagedInstanceCore, whose ssm:GetParameter* reads every parameter. moto
    # records no AWS managed policy that CloudFormation attaches, so the template is read.
    template = cfn_yaml.load(str(TEMPLATE))
    assert "ManagedPolicyArns" not in template["Resources"]["InstanceRole"]["Properties"]


def test_instance_role_publishes_metrics_only_in_the_agents_namespace(moto_env, http_stack):
    _, resources, _ = http_stack
    role = resources["InstanceRole"]
    (statement,) = inline_policy_statements(moto_env, role, "publish-disk-use")
    assert statement["Action"] == "cloudwatch:PutMetricData"
    assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "CWAgent"}}


def test_every_alarm_says_what_to_do_and_notifies_the_topic(moto_env, http_stack):
    _, resources, outputs = http_stack
    names = [resources[n] for n in resources if n.endswith("Alarm")]
    alarms = client(moto_env, "cloudwatch").describe_alarms(AlarmNames=names)["MetricAlarms"]
    metrics = {a["MetricName"] for a in alarms}
    assert {
        "HTTPCode_ELB_5XX_Count",
        "HTTPCode_Target_5XX_Count",
        "UnHealthyHostCount",
        "TargetResponseTime",
        "CPUUtilization",
        "FreeStorageSpace",
        "DatabaseConnections",
    } <= metrics
    for alarm in alarms:
        assert alarm["AlarmActions"] == [outputs["AlarmTopicArn"]], alarm["AlarmName"]
        assert len(alarm["AlarmDescription"]) > 80, alarm["AlarmName"]
        assert all(d.get("Value") for d in alarm["Dimensions"]), alarm["AlarmName"]
    (p99,) = [a for a in alarms if a["MetricName"] == "TargetResponseTime"]
    assert p99["ExtendedStatistic"] == "p99"


def test_dashboard_and_log_group_exist_with_retention(moto_env, http_stack):
    _, resources, outputs = http_stack
    body = json.loads(
        client(moto_env, "cloudwatch").get_dashboard(DashboardName=resources["Dashboard"])[
            "DashboardBody"
        ]
    )
    assert len(body["widgets"]) >= 6
    assert outputs["DashboardUrl"].endswith(f"dashboards:name={resources['Dashboard']}")
    (group,) = client(moto_env, "logs").describe_log_groups(
        logGroupNamePrefix=outputs["AppLogGroupName"]
    )["logGroups"]
    assert group["retentionInDays"] == 30


def test_with_a_certificate_http_redirects_to_https(moto_env, https_stack):
    stack, resources, outputs, certificate = https_stack
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    elb = client(moto_env, "elbv2")
    found = elb.describe_listeners(LoadBalancerArn=resources["LoadBalancer"])["Listeners"]
    listeners = {listener["Port"]: listener for listener in found}
    assert sorted(listeners) == [80, 443]
    (redirect,) = listeners[80]["DefaultActions"]
    assert redirect["Type"] == "redirect"
    assert redirect["RedirectConfig"]["Protocol"] == "HTTPS"
    assert redirect["RedirectConfig"]["StatusCode"] == "HTTP_301"
    https = listeners[443]
    assert https["Protocol"] == "HTTPS"
    assert [c["CertificateArn"] for c in https["Certificates"]] == [certificate]
    assert https["DefaultActions"][0]["TargetGroupArn"] == resources["TargetGroup"]
    assert outputs["LoadBalancerUrl"].startswith("https://")
    rules = client(moto_env, "ec2").describe_security_groups(
        GroupIds=[resources["AlbSecurityGroup"]]
    )["SecurityGroups"][0]["IpPermissions"]
    assert {r["FromPort"] for r in rules} == {80, 443}


def test_alarm_email_is_subscribed_when_given(moto_env, https_stack):
    _, _, outputs, _ = https_stack
    subscriptions = client(moto_env, "sns").list_subscriptions_by_topic(
        TopicArn=outputs["AlarmTopicArn"]
    )["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [("email", "ops@example.com")]


def test_deploying_a_new_ami_updates_the_launch_template_and_rollback_restores_it(moto_env):
    deploy_sh(moto_env, "deploy", "hello-roll", AMI)
    _, resources, _ = stack_facts(moto_env, "hello-roll")
    assert deploy_sh(moto_env, "current-ami", "hello-roll").stdout.strip() == AMI

    deploy_sh(moto_env, "deploy", "hello-roll", NEW_AMI)
    assert deploy_sh(moto_env, "current-ami", "hello-roll").stdout.strip() == NEW_AMI
    assert launch_template_data(moto_env, resources["LaunchTemplate"])["ImageId"] == NEW_AMI
    stack, _, _ = stack_facts(moto_env, "hello-roll")
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    # Every other parameter kept its value.
    assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}["MinSize"] == "2"

    deploy_sh(moto_env, "rollback", "hello-roll", AMI)
    assert deploy_sh(moto_env, "current-ami", "hello-roll").stdout.strip() == AMI
    assert launch_template_data(moto_env, resources["LaunchTemplate"])["ImageId"] == AMI


def test_deploying_the_same_ami_again_changes_nothing(moto_env, http_stack):
    result = deploy_sh(moto_env, "deploy", "hello-http", AMI)
    assert "nothing to change" in result.stderr


def test_deploy_refuses_a_malformed_ami_id(moto_env):
    result = deploy_sh(moto_env, "deploy", "hello-http", "not-an-ami", check=False)
    assert result.returncode == 1
    assert "is not an AMI ID" in result.stderr


def test_current_ami_of_a_missing_stack_is_empty(moto_env):
    assert deploy_sh(moto_env, "current-ami", "no-such-stack").stdout.strip() == ""


def test_ami_id_comes_from_the_packer_manifest(moto_env, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "builds": [
                    {"artifact_id": "us-east-1:ami-0aaaaaaaaaaaaaaa1"},
                    {"artifact_id": f"us-east-1:{NEW_AMI}"},
                ]
            }
        )
    )
    assert deploy_sh(moto_env, "ami-from-manifest", str(manifest)).stdout.strip() == NEW_AMI


def test_a_manifest_without_builds_is_refused_in_one_line(moto_env, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    result = deploy_sh(moto_env, "ami-from-manifest", str(manifest), check=False)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"deploy.sh: {manifest} has no builds[-1].artifact_id: is it Packer's manifest?\n"
    )


# ---------------------------------------------------------------- the boot step

CONFIGURE = REPO_ROOT / "ansible/roles/hello_app_aws/files/hello_app_configure.py"
AWS_ROLE_VARS = REPO_ROOT / "ansible/roles/hello_app_aws/vars/main.yml"
RDS_CA_BUNDLE = "/etc/ssl/certs/rds-global-bundle.pem"
BOOTSTRAP_SQL = yaml.safe_load(AWS_ROLE_VARS.read_text())["hello_app_aws_bootstrap_sql"]
MOTO_INSTANCE_ID = "i-fake"  # what moto's instance metadata service answers


@pytest.fixture(scope="module")
def configure():
    """The boot step, imported from the file the role installs as hello-app-configure."""
    spec = importlib.util.spec_from_file_location("hello_app_configure", CONFIGURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def user_data(env, template_id):
    """The UserData script, and the JSON settings it writes with the file it writes them to."""
    script = base64.b64decode(launch_template_data(env, template_id)["UserData"]).decode()
    found = re.search(r"cat > (\S+) <<'JSON'\n(.*?)\nJSON\n", script, re.S)
    return script, found.group(1), json.loads(found.group(2))


def test_user_data_writes_this_stacks_settings_and_runs_the_baked_boot_step(
    moto_env, http_stack, configure
):
    _, resources, outputs = http_stack
    script, settings_file, settings = user_data(moto_env, resources["LaunchTemplate"])
    assert script.startswith("#!/bin/bash\nset -euo pipefail\n")
    assert settings_file == configure.STACK_SETTINGS
    assert set(settings) == configure.STACK_KEYS
    assert settings["secret_arn"] == outputs["DatabaseSecretArn"]
    assert settings["db_host"] == outputs["DatabaseEndpoint"]
    assert settings["db_port"] == "5432"
    assert settings["log_group"] == outputs["AppLogGroupName"]
    assert settings["stack_name"] == "hello-http"
    assert settings["signal_resource"] in resources
    script_path = yaml.safe_load(AWS_ROLE_VARS.read_text())["hello_app_aws_script"]
    assert script.rstrip("\n").splitlines()[-1] == f"exec {script_path} boot"
    assert len(script.splitlines()) < 25, "the boot step belongs in the AMI, not in UserData"


def test_the_role_writes_the_image_settings_where_the_boot_step_reads_them(configure):
    role_vars = yaml.safe_load(AWS_ROLE_VARS.read_text())
    assert role_vars["hello_app_aws_image_settings_file"] == configure.IMAGE_SETTINGS
    assert set(role_vars["hello_app_aws_image_settings"]) == configure.IMAGE_KEYS


class Instance:
    """A root directory laid out like an instance of the AMI after UserData has run, with
    systemctl and the CloudWatch agent replaced by recorders, for the boot step to run in."""

    def __init__(self, root, stack_settings, ready_url):
        self.root = root
        self.url_file = root / "etc/hello-app/database-url"
        self.group = grp.getgrgid(os.getgid()).gr_name
        self.image_settings = {
            "service": "hello-app",
            "group": self.group,
            "database_url_file": "/etc/hello-app/database-url",
            "rds_ca_bundle": RDS_CA_BUNDLE,
            "bootstrap_sql": BOOTSTRAP_SQL,
            "log_file": AMI_APP_LOG_FILE,
            "ready_url": ready_url,
            "ready_timeout_seconds": 5,
            "refresh_timer": "hello-app-db-url.timer",
        }
        self.url_file.parent.mkdir(parents=True)
        self.write_settings(stack_settings)
        (root / RDS_CA_BUNDLE.lstrip("/")).parent.mkdir(parents=True)
        (root / RDS_CA_BUNDLE.lstrip("/")).write_text("-----BEGIN CERTIFICATE-----\n")
        (root / BOOTSTRAP_SQL.lstrip("/")).parent.mkdir(parents=True)
        shutil.copy(CONFIGURE.with_name("bootstrap.sql"), root / BOOTSTRAP_SQL.lstrip("/"))
        agent = root / "opt/aws/amazon-cloudwatch-agent"
        (agent / "etc").mkdir(parents=True)
        self.bin = root / "usr/bin"
        self.bin.mkdir(parents=True)
        self.systemctl_calls = root / "systemctl-calls"
        self.agent_calls = root / "agent-calls"
        self._recorder(self.bin / "systemctl", self.systemctl_calls)
        (agent / "bin").mkdir()
        self._recorder(agent / "bin/amazon-cloudwatch-agent-ctl", self.agent_calls)

    def write_settings(self, stack_settings):
        etc = self.root / "etc/hello-app"
        (etc / "configure.json").write_text(json.dumps(self.image_settings))
        (etc / "aws.json").write_text(json.dumps(stack_settings))

    @staticmethod
    def _recorder(path, calls):
        path.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
        path.chmod(0o755)

    @staticmethod
    def _lines(path):
        return path.read_text().splitlines() if path.exists() else []

    @property
    def systemctl(self):
        return self._lines(self.systemctl_calls)

    @property
    def agent(self):
        return self._lines(self.agent_calls)


@pytest.fixture
def instance(moto_env, http_stack, configure, tmp_path, monkeypatch, capsys):
    """Run `hello-app-configure COMMAND` in-process on an Instance, against moto, with the
    settings the deployed stack's UserData writes; returns (exit code, stderr)."""
    _, resources, _ = http_stack
    _, _, stack_settings = user_data(moto_env, resources["LaunchTemplate"])
    stack_settings["settle_seconds"] = 0
    box = Instance(tmp_path / "root", stack_settings, ready_url="http://127.0.0.1:1/readyz")
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, moto_env[name])
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("PATH", f"{box.bin}:{os.environ['PATH']}")
    environ = {
        "HELLO_APP_CONFIGURE_ROOT": str(box.root),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": moto_env["AWS_ENDPOINT_URL"],
    }

    def run(command):
        code = configure.main(["hello-app-configure", command], environ)
        return code, capsys.readouterr().err

    box.run = run
    return box


@pytest.fixture
def ready_app():
    """An HTTP server that answers 200 on /readyz, standing in for a ready hello-app."""

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/readyz"
    server.shutdown()
    server.server_close()


def database_secret(env, outputs):
    secrets = client(env, "secretsmanager")
    found = secrets.get_secret_value(SecretId=outputs["DatabaseSecretArn"])
    return json.loads(found["SecretString"])


def new_signals(env, stack, before=()):
    events = client(env, "cloudformation").describe_stack_events(StackName=stack)["StackEvents"]
    seen = {e["EventId"] for e in before}
    return [
        (e["LogicalResourceId"], e["ResourceStatusReason"])
        for e in events
        if e["EventId"] not in seen and "signal" in e.get("ResourceStatusReason", "")
    ], events


@pytest.fixture
def bootstraps(configure, monkeypatch):
    """The bootstrap of the app's database role, recorded instead of run: moto's database
    is a name without a server. tests/test_database_bootstrap.py runs it for real."""
    calls = []
    monkeypatch.setattr(
        configure,
        "bootstrap_database",
        lambda settings, root, secret: calls.append((settings["db_app_user"], secret)),
    )
    return calls


def token_query(url: urllib.parse.SplitResult) -> dict:
    """The presigned query string an IAM auth token is: host:port/?Action=connect&…"""
    token = urllib.parse.unquote(url.password)
    signed_host, query = token.split("/?", 1)
    return {"signed_host": signed_host, **dict(urllib.parse.parse_qsl(query))}


def test_refresh_writes_a_tls_verified_url_with_an_iam_token_and_restarts_nothing(
    moto_env, http_stack, instance, configure
):
    _, _, outputs = http_stack
    app_user = json.loads((instance.root / "etc/hello-app/aws.json").read_text())["db_app_user"]

    code, stderr = instance.run("refresh")

    assert code == 0, stderr
    written = instance.url_file.read_text().removesuffix("\n")
    url = urllib.parse.urlsplit(written)
    assert url.scheme == "postgresql"
    assert url.hostname == outputs["DatabaseEndpoint"]
    assert url.port == 5432 and url.path == "/hello"
    assert urllib.parse.unquote(url.username) == app_user
    assert urllib.parse.parse_qs(url.query) == {
        "sslmode": ["verify-full"],
        "sslrootcert": [RDS_CA_BUNDLE],
    }
    signed = token_query(url)
    assert signed["signed_host"] == f"{outputs['DatabaseEndpoint']}:5432"
    assert signed["Action"] == "connect"
    assert signed["DBUser"] == app_user
    assert signed["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert signed["X-Amz-Expires"] == "900"  # what RDS accepts: 15 minutes
    key, _, region, service, _ = signed["X-Amz-Credential"].split("/")
    assert (key, region, service) == ("testing", REGION, "rds-db")
    assert re.fullmatch(r"[0-9a-f]{64}", signed["X-Amz-Signature"])
    # The app accepts the URL, and libpq hands RDS the token exactly as boto3 signed it.
    assert check_database_url(written, allow_sqlite=False) == written
    assert psycopg2.extensions.parse_dsn(written)["password"] == urllib.parse.unquote(url.password)
    mode = instance.url_file.stat()
    assert (stat.S_IMODE(mode.st_mode), mode.st_gid) == (0o640, os.getgid())
    assert sorted(p.name for p in instance.url_file.parent.iterdir()) == [
        "aws.json",
        "configure.json",
        "database-url",
    ]  # no temporary file left behind
    assert urllib.parse.unquote(url.password) not in stderr
    assert instance.systemctl == []


def test_refresh_replaces_the_url_file_with_a_new_token_and_never_reads_the_secret(
    moto_env, http_stack, instance
):
    _, _, outputs = http_stack
    assert instance.run("refresh")[0] == 0
    first = instance.url_file.stat()
    # The master secret is the bootstrap's alone: refresh works without it.
    client(moto_env, "secretsmanager").delete_secret(
        SecretId=outputs["DatabaseSecretArn"], ForceDeleteWithoutRecovery=False
    )
    try:
        assert instance.run("refresh") == (0, "")
    finally:
        client(moto_env, "secretsmanager").restore_secret(SecretId=outputs["DatabaseSecretArn"])
    replaced = instance.url_file.stat()
    assert replaced.st_ino != first.st_ino  # a new file renamed over the old one
    assert instance.systemctl == []  # the app re-reads the file: no restart


def test_boot_bootstraps_the_app_role_writes_its_url_ships_the_log_and_signals_success(
    moto_env, http_stack, instance, ready_app, bootstraps
):
    _, _, outputs = http_stack
    instance.image_settings["ready_url"] = ready_app
    instance.write_settings(json.loads((instance.root / "etc/hello-app/aws.json").read_text()))
    _, before = new_signals(moto_env, "hello-http")

    code, stderr = instance.run("boot")

    assert code == 0, stderr
    (app_user, master_secret), *more = bootstraps
    assert more == []
    assert master_secret == database_secret(moto_env, outputs)  # read from Secrets Manager
    url = urllib.parse.urlsplit(instance.url_file.read_text())
    assert urllib.parse.unquote(url.username) == app_user
    assert token_query(url)["DBUser"] == app_user
    agent_dir = instance.root / "opt/aws/amazon-cloudwatch-agent"
    agent_config = json.loads((agent_dir / "etc/amazon-cloudwatch-agent.json").read_text())
    (shipped,) = agent_config["logs"]["logs_collected"]["files"]["collect_list"]
    assert shipped["file_path"] == AMI_APP_LOG_FILE
    assert shipped["log_group_name"] == outputs["AppLogGroupName"]
    (agent_call,) = instance.agent
    assert agent_call.startswith("-a fetch-config -m ec2 -s -c file:")
    assert instance.systemctl == [
        "enable --now hello-app",
        "enable --now hello-app-db-url.timer",
    ]
    signals, _ = new_signals(moto_env, "hello-http", before)
    assert signals == [
        ("AutoScalingGroup", f"Received SUCCESS signal with UniqueId {MOTO_INSTANCE_ID}")
    ]


def agent_disk_series(agent_config):
    """(namespace, metric name, dimensions) of the root disk's use as the CloudWatch agent
    publishes it under agent_config: the disk plugin prefixes its measurement with "disk_" and
    tags each value with path and fstype, plus device unless drop_device, plus host unless
    omit_hostname, plus the plugin's append_dimensions."""
    metrics = agent_config["metrics"]
    disk = metrics["metrics_collected"]["disk"]
    assert disk["resources"] == ["/"]
    (measurement,) = disk["measurement"]
    dimensions = {"path": "/", "fstype": "ext4", **disk.get("append_dimensions", {})}
    if not disk.get("drop_device"):
        dimensions["device"] = "per instance"
    if not agent_config["agent"].get("omit_hostname"):
        dimensions["host"] = "per instance"
    return metrics.get("namespace", "CWAgent"), f"disk_{measurement}", dimensions


def test_the_disk_alarm_watches_the_series_every_instance_publishes(
    moto_env, http_stack, instance, ready_app, bootstraps
):
    _, resources, outputs = http_stack
    instance.image_settings["ready_url"] = ready_app
    instance.write_settings(json.loads((instance.root / "etc/hello-app/aws.json").read_text()))
    assert instance.run("boot")[0] == 0
    agent_dir = instance.root / "opt/aws/amazon-cloudwatch-agent"
    agent_config = json.loads((agent_dir / "etc/amazon-cloudwatch-agent.json").read_text())

    (alarm,) = client(moto_env, "cloudwatch").describe_alarms(
        AlarmNames=[resources["DiskUsedAlarm"]]
    )["MetricAlarms"]

    published = agent_disk_series(agent_config)
    watched = (
        alarm["Namespace"],
        alarm["MetricName"],
        {d["Name"]: d["Value"] for d in alarm["Dimensions"]},
    )
    assert watched == published
    assert watched[2]["Stack"] == "hello-http"
    assert (alarm["Statistic"], alarm["ComparisonOperator"]) == ("Maximum", "GreaterThanThreshold")
    assert alarm["AlarmActions"] == [outputs["AlarmTopicArn"]]


def test_boot_that_cannot_bootstrap_the_database_writes_nothing_and_signals_failure(
    moto_env, instance
):
    _, before = new_signals(moto_env, "hello-http")

    code, stderr = instance.run("boot")  # moto's database endpoint is a name without a server

    assert code == 1
    assert "hello-app-configure: the database bootstrap as the master failed: could not" in stderr
    assert not instance.url_file.exists()
    assert instance.systemctl == []
    signals, _ = new_signals(moto_env, "hello-http", before)
    assert [reason.split(" signal")[0] for _, reason in signals] == ["Received FAILURE"]


def test_boot_signals_failure_when_the_app_never_gets_ready(moto_env, instance, bootstraps):
    instance.image_settings["ready_timeout_seconds"] = 1  # nothing listens on its ready_url
    instance.write_settings(json.loads((instance.root / "etc/hello-app/aws.json").read_text()))
    _, before = new_signals(moto_env, "hello-http")

    code, stderr = instance.run("boot")

    assert code == 1
    assert "did not answer http://127.0.0.1:1/readyz within 1 s" in stderr
    signals, _ = new_signals(moto_env, "hello-http", before)
    assert signals == [
        ("AutoScalingGroup", f"Received FAILURE signal with UniqueId {MOTO_INSTANCE_ID}")
    ]


def test_boot_without_the_rds_ca_bundle_writes_nothing_and_signals_failure(moto_env, instance):
    (instance.root / RDS_CA_BUNDLE.lstrip("/")).unlink()
    _, before = new_signals(moto_env, "hello-http")

    code, stderr = instance.run("boot")

    assert code == 1
    assert f"{RDS_CA_BUNDLE} is missing" in stderr
    assert not instance.url_file.exists()
    assert instance.systemctl == []
    signals, _ = new_signals(moto_env, "hello-http", before)
    assert [reason.split(" signal")[0] for _, reason in signals] == ["Received FAILURE"]


def test_a_missing_settings_file_is_named(instance):
    (instance.root / "etc/hello-app/aws.json").unlink()
    code, stderr = instance.run("refresh")
    assert code == 1
    assert "cannot read the settings in" in stderr and "etc/hello-app/aws.json" in stderr


def test_the_boot_step_runs_as_a_command_and_explains_its_usage():
    result = subprocess.run(
        [sys.executable, str(CONFIGURE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr == "hello-app-configure: usage: hello-app-configure boot|refresh\n"


# ---------------------------------------------------------------- smoke test against the real app


@pytest.fixture
def running_app(tmp_path):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "DATABASE_URL": f"sqlite:///{tmp_path / 'app.sqlite3'}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _answers(port), timeout=20, what="the app")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_smoke_test_passes_against_the_real_app(running_app):
    result = subprocess.run(
        [str(DEPLOY), "smoke-url", running_app],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "smoke test passed" in result.stderr


def test_smoke_test_fails_when_nothing_answers():
    result = subprocess.run(
        [str(DEPLOY), "smoke-url", f"http://127.0.0.1:{free_port()}"],
        env={**os.environ, "SMOKE_TIMEOUT": "3"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "smoke test failed" in result.stderr


def test_deploy_sh_without_arguments_prints_usage():
    result = subprocess.run([str(DEPLOY)], capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 2
    assert "deploy STACK AMI_ID" in result.stderr


def test_architecture_diagram_renders_from_code(tmp_path):
    require_command("dot", "graphviz")
    out = tmp_path / "architecture"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "docs" / "diagram.py"), str(out)], check=True, timeout=60
    )
    png = out.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 50_000  # icons and labels, not an empty canvas


def aws_cli(env, command):
    """Run an `aws …` command line as the README writes it (shell-quoted)."""
    result = subprocess.run(
        shlex.split(command), env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout.strip()


def test_readme_teardown_first_lifts_the_databases_deletion_protection(moto_env):
    """The README's teardown commands, in order, against a stack of its own. moto 5.2.5 then
    refuses `delete-stack` for this template (it keeps the VPC's subnets alive), so the test
    stops after the step that is specific to this stack: deletion protection."""
    deploy_sh(moto_env, "deploy", "hello-teardown", AMI)
    db_id = aws_cli(
        moto_env,
        "aws cloudformation list-stack-resources --stack-name hello-teardown"
        " --query \"StackResourceSummaries[?LogicalResourceId=='DB'].PhysicalResourceId\""
        " --output text",
    )
    rds = client(moto_env, "rds")
    with pytest.raises(rds.exceptions.ClientError, match=r"[Dd]eletion"):
        rds.delete_db_instance(DBInstanceIdentifier=db_id, SkipFinalSnapshot=True)
    aws_cli(
        moto_env,
        f"aws rds modify-db-instance --db-instance-identifier {db_id}"
        " --no-deletion-protection --apply-immediately"
        # awscli v1 (PyPI) pins rds to its public endpoint and ignores AWS_ENDPOINT_URL.
        f" --endpoint-url {moto_env['AWS_ENDPOINT_URL']}",
    )
    (db,) = rds.describe_db_instances(DBInstanceIdentifier=db_id)["DBInstances"]
    assert db["DeletionProtection"] is False


def test_github_oidc_role_trusts_only_the_production_environment(moto_env):
    """The README's one-time role setup (moto has no AWS::IAM::OIDCProvider, so the test uses
    the CreateOidcProvider=false branch, which points at the account's existing provider)."""
    template = REPO_ROOT / "infra" / "github-oidc.yaml"
    aws_cli(
        moto_env,
        f"aws cloudformation deploy --stack-name github-oidc-hello --template-file {template}"
        " --parameter-overrides GitHubRepository=example-org/hello-ha CreateOidcProvider=false"
        " --capabilities CAPABILITY_IAM",
    )
    role_arn = aws_cli(
        moto_env,
        "aws cloudformation describe-stacks --stack-name github-oidc-hello"
        " --query \"Stacks[0].Outputs[?OutputKey=='DeployRoleArn'].OutputValue\" --output text",
    )
    role = client(moto_env, "iam").get_role(RoleName=role_arn.rsplit("/", 1)[-1])["Role"]
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"]["Federated"].endswith(
        ":oidc-provider/token.actions.githubusercontent.com"
    )
    claims = statement["Condition"]["StringEquals"]
    assert claims["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert claims["token.actions.githubusercontent.com:sub"] == (
        "repo:example-org/hello-ha:environment:production"
    )


# ---------------------------------------------------------------- least privilege and guards

STACK_POLICY = REPO_ROOT / "infra" / "stack-policy.json"


def test_the_stack_is_applied_by_the_cloudformation_service_role(moto_env, http_stack):
    stack, _, _ = http_stack
    assert stack["RoleARN"] == moto_env["CFN_ROLE_ARN"]


def test_the_instance_role_carries_the_stacks_permissions_boundary(moto_env, http_stack):
    _, resources, _ = http_stack
    role = client(moto_env, "iam").get_role(RoleName=resources["InstanceRole"])["Role"]
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == (
        "arn:aws:iam::123456789012:policy/hello-http-instance-boundary"
    )


def test_the_stack_policy_is_set_when_the_stack_is_created(moto_env, http_stack):
    # moto stores the policy without enforcing it: deploy.sh's own check is what refuses.
    body = client(moto_env, "cloudformation").get_stack_policy(StackName="hello-http")
    assert json.loads(body["StackPolicyBody"]) == json.loads(STACK_POLICY.read_text())


def test_deploy_without_the_service_role_is_refused_before_any_call(moto_env):
    env = {k: v for k, v in moto_env.items() if k != "CFN_ROLE_ARN"}
    result = deploy_sh(env, "deploy", "hello-no-role", AMI, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("deploy.sh: CFN_ROLE_ARN is not set: export the")
    assert deploy_sh(moto_env, "current-ami", "hello-no-role").stdout == "\n"


@pytest.fixture(scope="module")
def guarded_stack(moto_env):
    """A stack of its own for the change sets that deploy.sh must refuse."""
    deploy_sh(moto_env, "deploy", "hello-guard", AMI)
    return stack_facts(moto_env, "hello-guard")


def template_with(tmp_path, old, new):
    text = (REPO_ROOT / "infra" / "hello-app.yaml").read_text()
    assert text.count(old) == 1, old
    changed = tmp_path / "hello-app.yaml"
    changed.write_text(text.replace(old, new))
    return changed


@pytest.mark.parametrize(
    ("old", "new", "danger"),
    [
        (
            "      DBName: hello\n",
            "      DBName: hello2\n",
            "replace DB (DBName)",
        ),
        (
            "      DeletionProtection: true\n",
            "      DeletionProtection: false\n",
            "change DB (DeletionProtection)",
        ),
    ],
    ids=["replace-the-database", "lift-deletion-protection"],
)
def test_a_change_set_that_endangers_the_database_is_refused_and_dropped(
    moto_env, guarded_stack, tmp_path, old, new, danger
):
    _, resources, _ = guarded_stack
    cfn = client(moto_env, "cloudformation")
    status_before = cfn.describe_stacks(StackName="hello-guard")["Stacks"][0]["StackStatus"]
    template_before = cfn.get_template(StackName="hello-guard")["TemplateBody"]
    env = {**moto_env, "TEMPLATE": str(template_with(tmp_path, old, new))}

    result = deploy_sh(env, "deploy", "hello-guard", AMI, check=False)

    assert result.returncode == 3, result.stderr
    (refusal,) = [line for line in result.stderr.splitlines() if "refusing" in line]
    refused = re.fullmatch(
        rf"deploy\.sh: refusing change set (deploy-\d{{14}}): it would {re.escape(danger)}", refusal
    )
    assert refused, refusal
    # moto keeps executed change sets listed, where AWS drops them: look for this one only.
    summaries = cfn.list_change_sets(StackName="hello-guard")["Summaries"]
    assert refused.group(1) not in [s["ChangeSetName"] for s in summaries]
    stack, _, _ = stack_facts(moto_env, "hello-guard")
    assert stack["StackStatus"] == status_before
    assert cfn.get_template(StackName="hello-guard")["TemplateBody"] == template_before
    (db,) = client(moto_env, "rds").describe_db_instances(DBInstanceIdentifier=resources["DB"])[
        "DBInstances"
    ]
    assert (db["DBName"], db["MasterUsername"], db["DeletionProtection"]) == (
        "hello",
        "hello_app",
        True,
    )


def test_a_deploy_that_spares_the_database_goes_through_and_restores_the_stack_policy(
    moto_env, guarded_stack, tmp_path
):
    cfn = client(moto_env, "cloudformation")
    allow_all = {
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "Update:*", "Resource": "*"}]
    }
    cfn.set_stack_policy(StackName="hello-guard", StackPolicyBody=json.dumps(allow_all))
    template = template_with(
        tmp_path, "      DisplayName: hello-app alarms\n", "      DisplayName: hello-app alarms!\n"
    )

    result = deploy_sh({**moto_env, "TEMPLATE": str(template)}, "deploy", "hello-guard", AMI)

    assert "refusing" not in result.stderr
    assert stack_facts(moto_env, "hello-guard")[0]["StackStatus"] == "UPDATE_COMPLETE"
    body = cfn.get_stack_policy(StackName="hello-guard")["StackPolicyBody"]
    assert json.loads(body) == json.loads(STACK_POLICY.read_text())


def test_current_ami_fails_with_the_clis_message_when_aws_does_not_answer(moto_env):
    env = {
        **moto_env,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_MAX_ATTEMPTS": "1",
    }
    result = deploy_sh(env, "current-ami", "hello-http", check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("deploy.sh: cannot describe stack hello-http: ")
    assert "Could not connect to the endpoint URL" in result.stderr


def test_github_oidc_setup_creates_the_service_role_and_the_boundary(moto_env):
    """The README's one-time setup outputs what deploy.yml and deploy.sh take as variables."""
    template = REPO_ROOT / "infra" / "github-oidc.yaml"
    aws_cli(
        moto_env,
        f"aws cloudformation deploy --stack-name github-oidc-guards --template-file {template}"
        " --parameter-overrides GitHubRepository=example-org/hello-ha CreateOidcProvider=false"
        " AppStackName=hello-guard --capabilities CAPABILITY_IAM",
    )
    # The README's two commands that read the outputs.
    listed = aws_cli(
        moto_env,
        "aws cloudformation describe-stacks --stack-name github-oidc-guards"
        ' --query "Stacks[0].Outputs[].[OutputKey, OutputValue]" --output text',
    )
    outputs = dict(line.split("\t") for line in listed.splitlines())
    assert (
        aws_cli(
            moto_env,
            "aws cloudformation describe-stacks --stack-name github-oidc-guards"
            " --query \"Stacks[0].Outputs[?OutputKey=='CloudFormationRoleArn'].OutputValue\""
            " --output text",
        )
        == outputs["CloudFormationRoleArn"]
    )
    assert outputs["InstanceBoundaryArn"] == (
        "arn:aws:iam::123456789012:policy/hello-guard-instance-boundary"
    )
    iam = client(moto_env, "iam")
    role = iam.get_role(RoleName=outputs["CloudFormationRoleArn"].rsplit("/", 1)[-1])["Role"]
    assert role["Path"] == "/deploy/"
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "cloudformation.amazonaws.com"}
    assert outputs["DeployRoleArn"].split(":role/")[1].startswith("deploy/")


def test_readme_teardown_deletes_the_database_with_a_final_snapshot_before_the_stack(moto_env):
    """The deploy roles may not delete the database, so the README's teardown does it with
    administrator credentials, after lifting its protection (moto then refuses delete-stack for
    this template, as above, so the test stops before it)."""
    deploy_sh(moto_env, "deploy", "hello-teardown-db", AMI)
    _, resources, _ = stack_facts(moto_env, "hello-teardown-db")
    db_id = resources["DB"]
    # awscli v1 (PyPI) pins rds to its public endpoint and ignores AWS_ENDPOINT_URL.
    endpoint = f" --endpoint-url {moto_env['AWS_ENDPOINT_URL']}"
    for command in (
        f"aws rds modify-db-instance --db-instance-identifier {db_id}"
        " --no-deletion-protection --apply-immediately",
        f"aws rds delete-db-instance --db-instance-identifier {db_id}"
        f" --final-db-snapshot-identifier {db_id}-final",
        f"aws rds wait db-instance-deleted --db-instance-identifier {db_id}",
    ):
        aws_cli(moto_env, command + endpoint)
    snapshots = aws_cli(
        moto_env,
        f"aws rds describe-db-snapshots --db-instance-identifier {db_id} --snapshot-type manual"
        ' --query "DBSnapshots[].DBSnapshotIdentifier" --output text' + endpoint,
    )
    assert snapshots == f"{db_id}-final"
