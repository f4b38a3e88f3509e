"""Render docs/architecture.png from code: `make diagram` (or `python docs/diagram.py [OUT]`,
which writes OUT.png).

Uses the `diagrams` package (its AWS icons ship inside the wheel, nothing is fetched) and
Graphviz's `dot`. Keep it in step with infra/hello-app.yaml and the Mermaid diagram in
docs/architecture.md.
"""

import sys
from pathlib import Path

from diagrams import Cluster, Diagram, Edge
from diagrams.aws.compute import EC2, AutoScaling
from diagrams.aws.database import RDS
from diagrams.aws.general import Users
from diagrams.aws.integration import SNS
from diagrams.aws.management import Cloudformation, Cloudwatch, CloudwatchAlarm, SystemsManager
from diagrams.aws.network import ELB, Endpoint, InternetGateway
from diagrams.aws.security import SecretsManager

OUT = Path(__file__).resolve().parent / "architecture"


def main(out: Path = OUT) -> None:
    graph = {"pad": "0.4", "nodesep": "0.5", "ranksep": "0.9", "fontsize": "20"}
    with Diagram(
        "hello-app on AWS: one region, two Availability Zones",
        filename=str(out),
        outformat="png",
        show=False,
        direction="LR",
        graph_attr=graph,
    ):
        users = Users("visitors")
        with Cluster("VPC 10.0.0.0/16 (us-east-1)"):
            igw = InternetGateway("internet gateway")
            with Cluster("public subnets, AZ a + AZ b"):
                alb = ELB("ALB\nHTTP→HTTPS, /healthz")
            with Cluster("private subnets, AZ a + AZ b (no internet route)"):
                with Cluster("Auto Scaling group, min 2, ELB health check"):
                    app_a = EC2("app AZ a\n(baked AMI)")
                    app_b = EC2("app AZ b\n(baked AMI)")
                asg = AutoScaling("target tracking\nCPU 50 %")
                with Cluster("RDS PostgreSQL Multi-AZ"):
                    primary = RDS("primary")
                    standby = RDS("standby")
                endpoints = Endpoint("VPC endpoints\nssm, logs, secrets,\ncfn, monitoring")
        with Cluster("regional AWS services"):
            secrets = SecretsManager("DB secret\n(RDS-managed)")
            logs = Cloudwatch("logs, metrics,\ndashboard")
            alarms = CloudwatchAlarm("8 alarms")
            topic = SNS("SNS → on-call e-mail")
            ssm = SystemsManager("Session Manager")
            cfn = Cloudformation("stack + rolling\nupdate signals")

        users >> Edge(label="HTTPS") >> igw >> alb
        alb >> Edge(label=":8080") >> [app_a, app_b]
        asg - Edge(style="dotted") - [app_a, app_b]
        [app_a, app_b] >> Edge(label="5432") >> primary
        primary - Edge(label="sync replication", style="dashed") - standby
        [app_a, app_b] >> Edge(label="443") >> endpoints
        endpoints >> [secrets, logs, ssm, cfn]
        logs >> alarms >> topic


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
