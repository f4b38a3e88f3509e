"""The drills on AWS: infra/fis-drills.yaml's FIS experiments and infra/drill.sh.

The template is read as CloudFormation reads it (cfn-lint's parser), then deployed on moto's
server on top of the app's stack, and drill.sh runs an experiment there to its end and prints
the figures that were put into moto's CloudWatch. moto's FIS runs no fault and watches no
alarm: an experiment goes from pending to completed as it is polled.
"""

import datetime
import re
import subprocess

import pytest
from cfnlint.decode import decode
from support import REPO_ROOT
from test_infra_stack import AMI, aws_cli, client, deploy_sh, moto_env  # noqa: F401 - moto_env: fixture

DRILL = REPO_ROOT / "infra" / "drill.sh"
DRILLS_TEMPLATE = REPO_ROOT / "infra" / "fis-drills.yaml"
APP_TEMPLATE = REPO_ROOT / "infra" / "hello-app.yaml"
EXPERIMENTS = {"InstanceLoss": "instance-loss", "DatabaseFailover": "database-failover",
               "AzLoss": "az-loss"}  # fmt: skip
# Read-only actions that IAM cannot scope to a resource, so "*" is their only resource.
UNSCOPABLE_READS = {
    "ec2:DescribeInstances",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
    "ec2:DescribeNetworkAcls",
    "ec2:DescribeManagedPrefixLists",
    "rds:DescribeDBInstances",
    "tag:GetResources",
}

pytestmark = pytest.mark.aws


def cloudformation(path):
    template, errors = decode(str(path))
    assert not errors, errors
    return template


DRILLS = cloudformation(DRILLS_TEMPLATE)
APP = cloudformation(APP_TEMPLATE)


def experiment(logical_id):
    return DRILLS["Resources"][logical_id]["Properties"]


def app_resource_imported(value):
    """The app template's resource behind `{"Fn::ImportValue": {"Fn::Sub":
    "${AppStackName}-NAME"}}`, found through the output that exports NAME."""
    name = value["Fn::ImportValue"]["Fn::Sub"]
    assert name.startswith("${AppStackName}-"), name
    suffix = name.removeprefix("${AppStackName}-")
    (output,) = [
        o
        for o in APP["Outputs"].values()
        if o.get("Export", {}).get("Name") == {"Fn::Sub": f"${{AWS::StackName}}-{suffix}"}
    ]
    return APP["Resources"][output["Value"]["Ref"]]


def drill_sh(*args, env=None):
    return subprocess.run(
        [str(DRILL), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_an_unknown_drill_is_refused_with_the_usage_and_exit_code_2():
    result = drill_sh("pod-loss")
    assert result.returncode == 2
    assert (
        "drill.sh: unknown drill 'pod-loss' (one of: instance-loss database-failover az-loss)"
        in (result.stderr)
    )
    assert "infra/drill.sh figures APP_STACK START END" in result.stderr


def test_figures_with_a_time_that_is_not_iso_8601_exits_2_naming_it():
    result = drill_sh("figures", "hello-app", "yesterday", "2026-11-27T10:00:00Z")
    assert result.returncode == 2
    assert "'yesterday' is not an ISO 8601 time" in result.stderr


@pytest.mark.parametrize("logical_id", EXPERIMENTS)
def test_each_experiment_stops_on_the_app_stacks_5xx_alarms_not_on_the_fault_itself(logical_id):
    conditions = experiment(logical_id)["StopConditions"]
    assert conditions
    alarms = set()
    for condition in conditions:
        assert condition["Source"] == "aws:cloudwatch:alarm"
        arn, names = condition["Value"]["Fn::Sub"]
        assert arn.endswith(":alarm:${Alarm}")
        alarm = app_resource_imported(names["Alarm"])
        assert alarm["Type"] == "AWS::CloudWatch::Alarm"
        alarms.add(alarm["Properties"]["MetricName"])
    assert "HTTPCode_ELB_5XX_Count" in alarms  # no target could answer: the site is down
    assert "UnHealthyHostCount" not in alarms  # what instance-loss and az-loss cause
    if logical_id == "DatabaseFailover":
        assert "HTTPCode_Target_5XX_Count" not in alarms  # the 503s of the failover itself


def test_each_experiment_is_tagged_with_the_drill_name_that_drill_sh_takes():
    assert {experiment(i)["Tags"]["Drill"] for i in EXPERIMENTS} == set(EXPERIMENTS.values())


def test_instance_loss_terminates_one_running_instance_of_the_apps_auto_scaling_group():
    properties = experiment("InstanceLoss")
    (action,) = properties["Actions"].values()
    assert action["ActionId"] == "aws:ec2:terminate-instances"
    target = properties["Targets"][action["Targets"]["Instances"]]
    assert target["SelectionMode"] == "COUNT(1)"
    group = app_resource_imported(target["ResourceTags"]["aws:autoscaling:groupName"])
    assert group["Type"] == "AWS::AutoScaling::AutoScalingGroup"
    assert target["Filters"] == [{"Path": "State.Name", "Values": ["running"]}]


def test_database_failover_reboots_the_apps_database_with_a_forced_failover():
    properties = experiment("DatabaseFailover")
    (action,) = properties["Actions"].values()
    assert action["ActionId"] == "aws:rds:reboot-db-instances"
    assert action["Parameters"] == {"forceFailover": "true"}
    (arn,) = properties["Targets"][action["Targets"]["DBInstances"]]["ResourceArns"]
    database = app_resource_imported(arn["Fn::Sub"][1]["DB"])
    assert database["Type"] == "AWS::RDS::DBInstance"
    assert database["Properties"]["MultiAZ"] is True


def test_az_loss_cuts_all_traffic_of_the_first_zones_two_subnets_for_a_bounded_time():
    properties = experiment("AzLoss")
    (action,) = properties["Actions"].values()
    assert action["ActionId"] == "aws:network:disrupt-connectivity"
    assert action["Parameters"]["scope"] == "all"
    duration = DRILLS["Parameters"][action["Parameters"]["duration"]["Ref"]]
    assert duration["Default"] == "PT5M"
    target = properties["Targets"][action["Targets"]["Subnets"]]
    subnets = [app_resource_imported(a["Fn::Sub"][1]["Subnet"]) for a in target["ResourceArns"]]
    zones = {str(s["Properties"]["AvailabilityZone"]) for s in subnets}
    assert zones == {str({"Fn::Select": [0, {"Fn::GetAZs": ""}]})}
    assert sorted(s["Properties"]["CidrBlock"]["Fn::FindInMap"][2] for s in subnets) == [
        "PrivateA",
        "PublicA",
    ]


def test_the_experiment_role_writes_only_to_named_resources_and_reads_only_what_it_must():
    role = DRILLS["Resources"]["ExperimentRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "fis.amazonaws.com"}
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            assert not any("*" in a for a in actions), statement
            if statement["Resource"] == "*":
                assert set(actions) <= UNSCOPABLE_READS, statement
            else:
                resources = statement["Resource"]
                resources = resources if isinstance(resources, list) else [resources]
                for resource in resources:
                    arn = resource["Fn::Sub"]
                    arn = arn[0] if isinstance(arn, list) else arn
                    assert "${AWS::Region}:${AWS::AccountId}" in arn, statement


# ---------------------------------------------------------------- on moto's server


@pytest.fixture(scope="module")
def drills_stack(moto_env):  # noqa: F811 - the fixture imported above
    """The app's stack, then the drills stack deployed with the README's command."""
    deploy_sh(moto_env, "deploy", "hello-app", AMI)
    result = subprocess.run(
        ["aws", "cloudformation", "deploy", "--stack-name", "hello-app-drills",
         "--template-file", "infra/fis-drills.yaml",
         "--parameter-overrides", "AppStackName=hello-app", "--capabilities", "CAPABILITY_IAM"],
        cwd=REPO_ROOT, env=moto_env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return {**moto_env, "DRILL_POLL": "0.1", "DRILL_SETTLE": "0", "DRILL_TIMEOUT": "120"}


def app_outputs(env):
    stack = client(env, "cloudformation").describe_stacks(StackName="hello-app")["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def test_the_drills_stack_stops_each_experiment_on_the_deployed_apps_alarms(drills_stack):
    fis = client(drills_stack, "fis")
    alarms = client(drills_stack, "cloudwatch").describe_alarms()["MetricAlarms"]
    arn_of = {a["MetricName"]: a["AlarmArn"] for a in alarms}
    templates = {
        t["tags"]["Drill"]: fis.get_experiment_template(id=t["id"])["experimentTemplate"]
        for t in fis.list_experiment_templates()["experimentTemplates"]
    }
    assert set(templates) == set(EXPERIMENTS.values())
    for name, template in templates.items():
        stops = {c["value"] for c in template["stopConditions"]}
        assert arn_of["HTTPCode_ELB_5XX_Count"] in stops, name
        assert arn_of["UnHealthyHostCount"] not in stops, name
    database = app_outputs(drills_stack)["DBInstanceIdentifier"]
    (db_arn,) = templates["database-failover"]["targets"]["Database"]["resourceArns"]
    assert db_arn.endswith(f":db:{database}")


def put_alb_minute(env, outputs, at, requests, elb_5xx, response_times):
    alb = [{"Name": "LoadBalancer", "Value": outputs["LoadBalancerFullName"]}]
    data = [
        {"MetricName": "RequestCount", "Dimensions": alb, "Timestamp": at, "Value": requests},
        {"MetricName": "HTTPCode_ELB_5XX_Count", "Dimensions": alb, "Timestamp": at,
         "Value": elb_5xx},
        *({"MetricName": "TargetResponseTime", "Dimensions": alb, "Timestamp": at,
           "Value": seconds} for seconds in response_times),
    ]  # fmt: skip
    client(env, "cloudwatch").put_metric_data(Namespace="AWS/ApplicationELB", MetricData=data)


def test_a_drill_runs_its_experiment_to_the_end_and_prints_the_albs_figures(drills_stack):
    outputs = app_outputs(drills_stack)
    now = datetime.datetime.now(datetime.UTC)
    put_alb_minute(drills_stack, outputs, now - datetime.timedelta(seconds=90), 600, 0, [0.01])
    put_alb_minute(drills_stack, outputs, now - datetime.timedelta(seconds=30), 580, 7, [0.4])

    result = drill_sh("instance-loss", env=drills_stack)

    assert result.returncode == 0, result.stderr
    (run,) = client(drills_stack, "fis").list_experiments()["experiments"]
    assert run["tags"] == {"Drill": "instance-loss"}
    assert run["state"]["status"] == "completed"
    assert f"Drill instance-loss (experiment {run['id']}, completed)" in result.stdout
    header = next(line for line in result.stdout.splitlines() if line.startswith("minute"))
    assert re.split(r"\s{2,}", header) == [
        "minute (UTC)", "requests", "ELB 5xx", "app 5xx", "unhealthy", "p99 ms", "DB connections"
    ]  # fmt: skip
    whole = next(line for line in result.stdout.splitlines() if line.startswith("whole window"))
    assert whole.split()[2:5] == ["1180", "7", "-"]
    assert "max 400" in whole  # p99 in ms


def test_figures_show_each_minute_and_the_databases_events_in_the_window(drills_stack):
    outputs = app_outputs(drills_stack)
    minute = datetime.datetime(2026, 1, 5, 10, 0, tzinfo=datetime.UTC)
    put_alb_minute(drills_stack, outputs, minute, 100, 0, [0.002] * 98 + [0.9, 1.5])
    put_alb_minute(drills_stack, outputs, minute + datetime.timedelta(minutes=1), 90, 12, [0.1])
    client(drills_stack, "cloudwatch").put_metric_data(
        Namespace="AWS/RDS",
        MetricData=[{"MetricName": "DatabaseConnections", "Timestamp": minute, "Value": 8,
                     "Dimensions": [{"Name": "DBInstanceIdentifier",
                                     "Value": outputs["DBInstanceIdentifier"]}]}],
    )  # fmt: skip

    result = drill_sh(
        "figures", "hello-app", "2026-01-05T09:59:00Z", "2026-01-05T10:03:00Z", env=drills_stack
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ALB and RDS, 2026-01-05 09:59 to 10:03 UTC, per minute:"
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:6]}
    assert rows["10:00"] == ["100", "0", "-", "-", "900", "8"]  # p99 of 100 samples
    assert rows["10:01"] == ["90", "12", "-", "-", "100", "-"]
    assert rows["whole"] == ["window", "190", "12", "-", "-", "max", "900", "max", "8"]
    # The database was created today, not in that window.
    assert "RDS events: none in this window" in result.stdout


def test_az_loss_warns_when_the_database_primary_is_in_the_zone_it_cuts_off(drills_stack):
    outputs = app_outputs(drills_stack)
    (subnet,) = client(drills_stack, "ec2").describe_subnets(
        SubnetIds=[outputs["PrivateSubnetAId"]]
    )["Subnets"]
    (database,) = client(drills_stack, "rds").describe_db_instances(
        DBInstanceIdentifier=outputs["DBInstanceIdentifier"]
    )["DBInstances"]

    result = drill_sh("az-loss", env=drills_stack)

    assert result.returncode == 0, result.stderr
    if database["AvailabilityZone"] == subnet["AvailabilityZone"]:
        expected = f"the database primary is in {subnet['AvailabilityZone']}, the zone az-loss cuts"
    else:
        expected = f"the database primary is in {database['AvailabilityZone']}; az-loss cuts off"
    assert expected in result.stderr


def test_a_drill_without_the_drills_stack_says_to_deploy_it(drills_stack):
    result = drill_sh("az-loss", env={**drills_stack, "DRILLS_STACK": "no-such-stack"})
    assert result.returncode == 1
    assert "no stack no-such-stack: deploy infra/fis-drills.yaml first" in result.stderr


def test_the_drills_stack_is_deleted_with_its_templates_before_the_apps_stack(drills_stack):
    """The README's commands, as it writes them."""
    aws_cli(drills_stack, "aws cloudformation delete-stack --stack-name hello-app-drills")
    aws_cli(
        drills_stack, "aws cloudformation wait stack-delete-complete --stack-name hello-app-drills"
    )
    assert client(drills_stack, "fis").list_experiment_templates()["experimentTemplates"] == []
