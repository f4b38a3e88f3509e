"""moto's server, with the CloudFormation support our template needs and moto 5.2.5 lacks.

Run as `python scripts/moto_server.py PORT`. Everything else is stock moto: the additions
below only translate template properties into calls on moto's own backends, the same calls
that CloudWatch's, Auto Scaling's and RDS's APIs make, so the tests still see the resources
through the real AWS APIs (describe_alarms, describe_policies, describe_db_instances).

The gaps, checked against moto 5.2.5:
- its YAML loader splits `!GetAtt DB.MasterUserSecret.SecretArn` at every dot, where
  CloudFormation splits at the first one only;
- AWS::CloudWatch::Alarm and AWS::AutoScaling::ScalingPolicy have no CloudFormation model, so
  moto skips them with a warning and the stack still reaches CREATE_COMPLETE without them;
- AWS::RDS::DBInstance ignores ManageMasterUserPassword, DeletionProtection and
  EnableIAMDatabaseAuthentication, and has no MasterUserSecret.SecretArn or DbiResourceId
  attribute;
- AWS::RDS::DBParameterGroup has no physical ID, so `!Ref` of it gives the DB instance an
  object instead of the group's name;
- a change set that keeps parameters (UsePreviousValue) counts every parameter the stack took
  from its Default as changed, and then "modifies" resources whose Condition is false (the
  HTTPS listener without a certificate), which crashes the update;
- executing a change set does not recompute the stack's Outputs (a stack created through a
  change set has none), nor registers its Exports or resolves its Fn::ImportValue;
- AWS::FIS::ExperimentTemplate has no CloudFormation model (FIS's own API is there);
- GetMetricData has no percentile statistics: a `p99` over datapoints crashes its serializer;
  here it is the nearest-rank percentile of the datapoints' values;
- AWS::EC2::SubnetRouteTableAssociation is recorded apart from the route table, so
  DescribeRouteTables shows no association;
- AWS::ElasticLoadBalancingV2::TargetGroup ignores TargetGroupAttributes and has no
  TargetGroupFullName attribute, and the
  LoadBalancer's LoadBalancerFullName is declared but not implemented;
- a change set's "Modify" changes carry no Replacement and no Details, so nothing tells a
  deploy that it would replace the database: here each changed property is named, and
  requires recreation when the resource type's CloudFormation schema (the copy cfn-lint
  ships) lists it as a create-only property. Only literal template changes are seen, not
  parameter-driven ones, which real CloudFormation evaluates "Dynamic";
- AWS::LanguageExtensions is unknown, so a Fn::ForEach creates nothing: here every template
  is read expanded, by cfn-lint's implementation of the transform (scripts/cfn_expand.py);
- there is no SignalResource: here it checks the stack and the logical ID, as CloudFormation
  does, and records the signal as a stack event with CloudFormation's wording ("Received
  SUCCESS signal with UniqueId i-…"), which DescribeStackEvents then shows.
"""

import math
import re
import sys
from typing import Any

import moto.cloudformation.models
import moto.cloudformation.responses
from cfn_expand import expand
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER
from moto.autoscaling.models import autoscaling_backends
from moto.cloudformation.exceptions import ValidationError
from moto.cloudformation.models import Event
from moto.cloudformation.parsing import ResourceMap
from moto.cloudwatch.models import Statistics, cloudwatch_backends
from moto.core.common_models import CloudFormationModel
from moto.core.responses import EmptyResult
from moto.ec2.models import ec2_backends
from moto.ec2.models.subnets import SubnetRouteTableAssociation
from moto.elbv2.models import FakeLoadBalancer, FakeTargetGroup, elbv2_backends
from moto.fis.models import fis_backends
from moto.rds.models import DBInstance, DBParameterGroup, MasterUserSecret


class CloudWatchAlarm(CloudFormationModel):
    __module__ = "moto.cloudwatch.models"  # moto's model registry keys models by service module

    def __init__(self, name: str):
        self.name = name

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::CloudWatch::Alarm"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "AlarmName"

    @property
    def physical_resource_id(self) -> str:
        return self.name

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> "CloudWatchAlarm":
        props = cloudformation_json["Properties"]
        name = props.get("AlarmName", resource_name)
        cloudwatch_backends[account_id][region_name].put_metric_alarm(
            name=name,
            namespace=props.get("Namespace"),
            metric_name=props.get("MetricName"),
            comparison_operator=props["ComparisonOperator"],
            evaluation_periods=int(props["EvaluationPeriods"]),
            period=int(props["Period"]),
            threshold=float(props["Threshold"]),
            statistic=props.get("Statistic"),
            extended_statistic=props.get("ExtendedStatistic"),
            description=props.get("AlarmDescription"),
            dimensions=props.get("Dimensions", []),
            alarm_actions=props.get("AlarmActions", []),
            ok_actions=props.get("OKActions", []),
            datapoints_to_alarm=int(props["DatapointsToAlarm"])
            if "DatapointsToAlarm" in props
            else None,
            treat_missing_data=props.get("TreatMissingData"),
        )
        return cls(name)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[misc]
        cls,
        original_resource: Any,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> "CloudWatchAlarm":
        # moto's change-set update sometimes resolves `!Ref` of an unchanged resource to nothing
        # (seen for DBConnectionsAlarm's `!Ref DB`); keep the alarm as it was rather than break.
        if any("Value" not in d for d in cloudformation_json["Properties"].get("Dimensions", [])):
            return original_resource
        return cls.create_from_cloudformation_json(
            original_resource.name, cloudformation_json, account_id, region_name
        )

    @classmethod
    def delete_from_cloudformation_json(  # type: ignore[misc]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> None:
        cloudwatch_backends[account_id][region_name].delete_alarms([resource_name])


class ScalingPolicy(CloudFormationModel):
    __module__ = "moto.autoscaling.models"

    def __init__(self, arn: str):
        self.arn = arn

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::AutoScaling::ScalingPolicy"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "PolicyName"

    @property
    def physical_resource_id(self) -> str:
        return self.arn

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> "ScalingPolicy":
        props = cloudformation_json["Properties"]
        policy = autoscaling_backends[account_id][region_name].put_scaling_policy(
            name=resource_name,
            policy_type=props.get("PolicyType", "SimpleScaling"),
            metric_aggregation_type=props.get("MetricAggregationType"),
            adjustment_type=props.get("AdjustmentType"),
            as_name=props["AutoScalingGroupName"],
            min_adjustment_magnitude=props.get("MinAdjustmentMagnitude"),
            scaling_adjustment=props.get("ScalingAdjustment"),
            cooldown=props.get("Cooldown"),
            target_tracking_config=props.get("TargetTrackingConfiguration", {}),
            step_adjustments=props.get("StepAdjustments", []),
            estimated_instance_warmup=props.get("EstimatedInstanceWarmup"),
            predictive_scaling_configuration=props.get("PredictiveScalingConfiguration", {}),
        )
        return cls(policy.arn)


class FisExperimentTemplate(CloudFormationModel):
    __module__ = "moto.fis.models"

    def __init__(self, template_id: str):
        self.id = template_id

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::FIS::ExperimentTemplate"

    @property
    def physical_resource_id(self) -> str:
        return self.id

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> "FisExperimentTemplate":
        # CloudFormation's property names are FIS's API names with a capital first letter;
        # the keys of the maps (target, action, parameter and tag names) are the user's own.
        props = cloudformation_json["Properties"]
        targets = {
            name: {
                key: value
                for key, value in {
                    "resourceType": target.get("ResourceType"),
                    "resourceArns": target.get("ResourceArns"),
                    "resourceTags": target.get("ResourceTags"),
                    "filters": [
                        {"path": f["Path"], "values": f["Values"]}
                        for f in target.get("Filters", [])
                    ]
                    or None,
                    "selectionMode": target.get("SelectionMode"),
                    "parameters": target.get("Parameters"),
                }.items()
                if value is not None
            }
            for name, target in props.get("Targets", {}).items()
        }
        actions = {
            name: {
                "actionId": action["ActionId"],
                "description": action.get("Description", ""),
                "parameters": action.get("Parameters", {}),
                "targets": action.get("Targets", {}),
                "startAfter": action.get("StartAfter", []),
            }
            for name, action in props.get("Actions", {}).items()
        }
        options = props.get("ExperimentOptions", {})
        template = fis_backends[account_id][region_name].create_experiment_template(
            client_token=None,
            description=props["Description"],
            stop_conditions=[
                {"source": c["Source"], **({"value": c["Value"]} if "Value" in c else {})}
                for c in props["StopConditions"]
            ],
            targets=targets,
            actions=actions,
            role_arn=props["RoleArn"],
            tags=props.get("Tags", {}),
            experiment_options={
                "accountTargeting": options.get("AccountTargeting", "single-account"),
                "emptyTargetResolutionMode": options.get("EmptyTargetResolutionMode", "fail"),
            },
        )
        return cls(template["id"])

    @classmethod
    def delete_from_cloudformation_json(  # type: ignore[misc]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> None:
        fis_backends[account_id][region_name].delete_experiment_template(resource_name)


_statistic = Statistics.get_statistics_for_type


def _statistic_with_percentiles(self, stat):
    values = sorted(self.metric_single_values_list)
    if values and re.fullmatch(r"p\d{1,2}(\.\d+)?", stat):
        rank = math.ceil(float(stat[1:]) / 100 * len(values))
        return values[max(rank, 1) - 1]
    return _statistic(self, stat)


Statistics.get_statistics_for_type = _statistic_with_percentiles


_create_db_instance = DBInstance.create_from_cloudformation_json.__func__
_db_instance_attribute = DBInstance.get_cfn_attribute


def _create_db_instance_with_managed_password(
    cls, resource_name, cloudformation_json, account_id, region_name, **kw
):
    database = _create_db_instance(
        cls, resource_name, cloudformation_json, account_id, region_name, **kw
    )
    props = cloudformation_json["Properties"]
    database.deletion_protection = bool(props.get("DeletionProtection", False))
    database.enable_iam_database_authentication = bool(
        props.get("EnableIAMDatabaseAuthentication", False)
    )
    if props.get("ManageMasterUserPassword"):
        database.manage_master_user_password = True
        database.master_user_secret = MasterUserSecret(
            database, props.get("MasterUserSecret", {}).get("KmsKeyId")
        )
    return database


def _db_instance_attribute_with_secret(self, attribute_name):
    if attribute_name == "MasterUserSecret.SecretArn":
        return self.master_user_secret.secret_arn
    if attribute_name == "DbiResourceId":
        return self.dbi_resource_id
    return _db_instance_attribute(self, attribute_name)


def _target_group_attribute(self, attribute_name):
    from moto.cloudformation.exceptions import UnformattedGetAttTemplateException

    if attribute_name == "TargetGroupFullName":
        return self.arn.split(":")[-1]  # "targetgroup/<name>/<id>", as CloudWatch wants it
    if attribute_name == "TargetGroupName":
        return self.name
    raise UnformattedGetAttTemplateException()


def _yaml_tag_constructor(loader, tag, node):
    if tag == "!GetAtt" and not isinstance(node.value, list):
        return {"Fn::GetAtt": node.value.split(".", 1)}
    return _stock_yaml_tag_constructor(loader, tag, node)


_stock_yaml_tag_constructor = moto.cloudformation.models.yaml_tag_constructor
moto.cloudformation.models.yaml_tag_constructor = _yaml_tag_constructor
moto.cloudformation.responses.yaml_tag_constructor = _yaml_tag_constructor
_build_resource_diff = ResourceMap.build_resource_diff


def _build_resource_diff_against_resolved_parameters(self, other_template, parameters=None):
    saved = self.input_parameters
    resolved = {k: v for k, v in self.resolved_parameters.items() if not k.startswith("AWS::")}
    self.input_parameters = {**resolved, **(saved or {})}
    try:
        diff = _build_resource_diff(self, other_template, parameters)
    finally:
        self.input_parameters = saved
    new = other_template["Resources"]
    diff["Modify"] = [
        name
        for name in diff["Modify"]
        if "Condition" not in new[name] or self.lazy_condition_map[new[name]["Condition"]]
    ]
    return diff


ResourceMap.build_resource_diff = _build_resource_diff_against_resolved_parameters
_execute_change_set = moto.cloudformation.models.CloudFormationBackend.execute_change_set


def _execute_change_set_and_refresh_outputs(self, change_set_name, stack_name=None):
    for stack in self.stacks.values():
        if stack.name == stack_name or stack.stack_id == stack_name:
            stack.resource_map.cross_stack_resources = self.exports  # Fn::ImportValue
    _execute_change_set(self, change_set_name, stack_name)
    for stack in self.stacks.values():
        if stack.name == stack_name or stack.stack_id == stack_name:
            stack._parse_template()
            stack.output_map = stack._create_output_map()
            self.exports.update({export.name: export for export in stack.exports})


moto.cloudformation.models.CloudFormationBackend.execute_change_set = (
    _execute_change_set_and_refresh_outputs
)
_load_balancer_attribute = FakeLoadBalancer.get_cfn_attribute


def _load_balancer_attribute_with_full_name(self, attribute_name):
    if attribute_name == "LoadBalancerFullName":
        return self.arn.split(":loadbalancer/")[-1]  # "app/<name>/<id>", as CloudWatch wants it
    return _load_balancer_attribute(self, attribute_name)


FakeLoadBalancer.get_cfn_attribute = _load_balancer_attribute_with_full_name
_create_target_group = FakeTargetGroup.create_from_cloudformation_json.__func__


def _create_target_group_with_attributes(
    cls, resource_name, cloudformation_json, account_id, region_name, **kw
):
    group = _create_target_group(
        cls, resource_name, cloudformation_json, account_id, region_name, **kw
    )
    attributes = {
        a["Key"]: a["Value"]
        for a in cloudformation_json["Properties"].get("TargetGroupAttributes", [])
    }
    if attributes:
        elbv2_backends[account_id][region_name].modify_target_group_attributes(
            group.arn, attributes
        )
    return group


FakeTargetGroup.create_from_cloudformation_json = classmethod(_create_target_group_with_attributes)
_create_association = SubnetRouteTableAssociation.create_from_cloudformation_json.__func__


def _create_association_on_the_route_table(
    cls, resource_name, cloudformation_json, account_id, region_name, **kw
):
    association = _create_association(
        cls, resource_name, cloudformation_json, account_id, region_name, **kw
    )
    props = cloudformation_json["Properties"]
    ec2_backends[account_id][region_name].associate_route_table(
        props["RouteTableId"], subnet_id=props["SubnetId"]
    )
    return association


SubnetRouteTableAssociation.create_from_cloudformation_json = classmethod(
    _create_association_on_the_route_table
)
DBInstance.create_from_cloudformation_json = classmethod(_create_db_instance_with_managed_password)
DBInstance.get_cfn_attribute = _db_instance_attribute_with_secret
DBInstance.has_cfn_attr = classmethod(
    lambda cls, attr: (
        attr in ("Endpoint.Address", "Endpoint.Port", "MasterUserSecret.SecretArn", "DbiResourceId")
    )
)
FakeTargetGroup.get_cfn_attribute = _target_group_attribute
DBParameterGroup.physical_resource_id = property(lambda self: self.name)


def _signal_resource(self):
    stack = self.cloudformation_backend.get_stack(self._get_param("StackName"))
    logical_id = self._get_param("LogicalResourceId")
    if logical_id not in stack.template_dict.get("Resources", {}):
        raise ValidationError(logical_id, f"Resource {logical_id} does not exist for stack")
    status, unique_id = self._get_param("Status"), self._get_param("UniqueId")
    stack.events.append(
        Event(
            stack_id=stack.stack_id,
            stack_name=stack.name,
            logical_resource_id=logical_id,
            physical_resource_id=stack.resource_map[logical_id].physical_resource_id,
            resource_type=stack.template_dict["Resources"][logical_id]["Type"],
            resource_status="CREATE_IN_PROGRESS",
            resource_status_reason=f"Received {status} signal with UniqueId {unique_id}",
            resource_properties=None,
        )
    )
    return EmptyResult()


moto.cloudformation.responses.CloudFormationResponse.signal_resource = _signal_resource
_change_set_diff = moto.cloudformation.models.ChangeSet.diff


def _create_only_properties(stack, resource_type):
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(stack.region_name, resource_type)
    return {path.removeprefix("/properties/") for path in schema.schema["createOnlyProperties"]}


def _diff_with_replacement(self):
    changes = _change_set_diff(self)
    old_resources = self.stack.template_dict.get("Resources", {})
    new_resources = self.template_dict.get("Resources", {})
    for change in changes:
        change.replacement, change.details = None, []
        if change.action != "Modify":
            continue
        old = old_resources[change.logical_resource_id].get("Properties", {})
        new = new_resources[change.logical_resource_id].get("Properties", {})
        create_only = _create_only_properties(self.stack, change.resource_type)
        changed = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
        change.details = [
            {
                "Target": {
                    "Attribute": "Properties",
                    "Name": name,
                    "RequiresRecreation": "Always" if name in create_only else "Never",
                },
                "Evaluation": "Static",
                "ChangeSource": "DirectModification",
            }
            for name in changed
        ]
        change.replacement = "True" if create_only & set(changed) else "False"
    return changes


moto.cloudformation.models.ChangeSet.diff = _diff_with_replacement
_parse_stack_template = moto.cloudformation.models.Stack.parse_template
_parse_change_set_template = moto.cloudformation.models.ChangeSet._parse_template


def _parse_stack_template_expanded(template):
    return expand(_parse_stack_template(template))


def _parse_change_set_template_expanded(self):
    _parse_change_set_template(self)
    self.template_dict = expand(self.template_dict)


moto.cloudformation.models.Stack.parse_template = staticmethod(_parse_stack_template_expanded)
moto.cloudformation.models.ChangeSet._parse_template = _parse_change_set_template_expanded


if __name__ == "__main__":
    from moto.server import main

    main(["-H", "127.0.0.1", "-p", sys.argv[1]])
