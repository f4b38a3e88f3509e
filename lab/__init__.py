"""The HA lab: the production topology of docs/architecture.md in containers on one machine.

- HAProxy stands in for the ALB, with the target group's health check scaled down in time;
- three systemd containers stand in for the Auto Scaling Group's instances, provisioned by
  ansible/site.yml over SSH;
- a PostgreSQL primary and its synchronous standby stand in for RDS Multi-AZ, the name `db`
  following the primary;
- Locust sends a constant, bounded load through HAProxy's port on 127.0.0.1.

`make lab` brings it up, `make drills` injects faults under load and measures them,
`make lab-down` removes it. Its state (keys, inventory, generated passwords) lives in .lab/.
"""
