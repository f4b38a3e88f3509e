#!/usr/bin/python3
"""Configure hello-app on an EC2 instance from AWS.

The AMI carries this file as /usr/local/sbin/hello-app-configure (role hello_app_aws), and
an instance runs it twice over:

    hello-app-configure boot       once, from the launch template's UserData
    hello-app-configure refresh    every few minutes, from hello-app-db-url.timer

boot:    with the RDS-managed master secret, create or repair the app's own database role
         (bootstrap.sql, which the role installs next to this script); write the database
         URL file with that role and an IAM auth token; point the CloudWatch agent at the
         app's log file and start it; make sure hello-app runs (it is never restarted);
         start the refresh timer; wait for /readyz; then signal CloudFormation: SUCCESS, or
         FAILURE if anything failed on the way.
refresh: write the database URL file again with a new token, before the last one expires
         (15 minutes). The app sees the new file by itself: nothing is restarted.

The master secret is read only by `boot`, for the bootstrap, and is never written down. The
token is signed here, with the instance role's credentials from the instance metadata
service, which the app's own unit cannot reach.

It reads two JSON files, described in the role's README ("The settings files"): the image's
(IMAGE_SETTINGS), written at bake time, and the stack's (STACK_SETTINGS), written by the
UserData. HELLO_APP_CONFIGURE_ROOT, for tests, puts every file it reads or writes under
another directory; AWS_EC2_METADATA_SERVICE_ENDPOINT, as for the AWS SDKs, moves the
instance metadata service.
"""

import grp
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import closing

import boto3
import psycopg2

IMAGE_SETTINGS = "/etc/hello-app/configure.json"
STACK_SETTINGS = "/etc/hello-app/aws.json"
IMAGE_KEYS = frozenset(
    {
        "service",
        "group",
        "database_url_file",
        "rds_ca_bundle",
        "bootstrap_sql",
        "log_file",
        "ready_url",
        "ready_timeout_seconds",
        "refresh_timer",
    }
)
STACK_KEYS = frozenset(
    {
        "region",
        "stack_name",
        "signal_resource",
        "secret_arn",
        "db_host",
        "db_port",
        "db_name",
        "db_app_user",
        "log_group",
        "settle_seconds",
    }
)
# Where the CloudWatch agent's package installs it.
AGENT_CTL = "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"
AGENT_CONFIG = "/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json"
METADATA_SERVICE = "http://169.254.169.254"


class ConfigureError(Exception):
    """A step failed in a way one line explains."""


def log(message: str) -> None:
    print(f"hello-app-configure: {message}", file=sys.stderr, flush=True)


def under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def read_settings(path: str, keys: frozenset[str]) -> dict:
    try:
        with open(path) as handle:
            settings = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigureError(f"cannot read the settings in {path}: {error}") from None
    missing = sorted(keys - settings.keys())
    if missing:
        raise ConfigureError(f"{path} lacks the settings {', '.join(missing)}")
    return settings


def load_settings(root: str) -> dict:
    """The image's settings and the stack's, in one dict (their keys do not overlap)."""
    image = read_settings(under(root, IMAGE_SETTINGS), IMAGE_KEYS)
    stack = read_settings(under(root, STACK_SETTINGS), STACK_KEYS)
    return {**image, **stack}


def read_secret(settings: dict) -> dict:
    client = boto3.client("secretsmanager", region_name=settings["region"])
    response = client.get_secret_value(SecretId=settings["secret_arn"])
    return json.loads(response["SecretString"])


def database_url(settings: dict, user: str, password: str) -> str:
    """The URL of the database, with this user and password, that only connects over TLS to
    a server whose certificate the RDS CA bundle signed for this host name."""
    user, password = urllib.parse.quote(user, safe=""), urllib.parse.quote(password, safe="")
    tls = urllib.parse.urlencode(
        {"sslmode": "verify-full", "sslrootcert": settings["rds_ca_bundle"]}, safe="/"
    )
    host, port, name = settings["db_host"], settings["db_port"], settings["db_name"]
    return f"postgresql://{user}:{password}@{host}:{port}/{name}?{tls}"


def iam_database_url(settings: dict) -> str:
    """The database URL of the app's role, whose password is an IAM auth token: a presigned
    query string, signed here with no network call, that RDS accepts for 15 minutes."""
    client = boto3.client("rds", region_name=settings["region"])
    token = client.generate_db_auth_token(
        DBHostname=settings["db_host"],
        Port=int(settings["db_port"]),
        DBUsername=settings["db_app_user"],
        Region=settings["region"],
    )
    return database_url(settings, settings["db_app_user"], token)


def run_bootstrap(connection, sql: str, app_user: str) -> None:
    """Run bootstrap.sql for app_user in one transaction on connection (the master's)."""
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT set_config('hello.app_user', %s, true)", (app_user,))
        cursor.execute(sql)


def bootstrap_database(settings: dict, root: str, secret: dict) -> None:
    """Create or repair the app's database role as the master user of secret, over TLS that
    verifies the server's certificate and host name."""
    with open(under(root, settings["bootstrap_sql"])) as handle:
        sql = handle.read()
    try:
        connection = psycopg2.connect(
            host=settings["db_host"],
            port=settings["db_port"],
            dbname=settings["db_name"],
            user=secret["username"],
            password=secret["password"],
            sslmode="verify-full",
            sslrootcert=under(root, settings["rds_ca_bundle"]),
            connect_timeout=10,
            application_name="hello-app-configure",
        )
        with closing(connection):
            run_bootstrap(connection, sql, settings["db_app_user"])
    except psycopg2.Error as error:
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ConfigureError(f"the database bootstrap as the master failed: {reason}") from None


def write_private_file(path: str, text: str, group: str) -> None:
    """Replace path with text atomically, so a reader sees the old file or the new one, never
    half of one: a temporary file in the same directory, mode 0640, owned by root:group,
    renamed over path."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        os.fchmod(fd, 0o640)
        os.fchown(fd, -1, grp.getgrnam(group).gr_gid)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_database_url(path: str, url: str, group: str) -> None:
    """Write url to the database URL file at path, which the app reads again when it changes."""
    write_private_file(path, url + "\n", group)


def start_log_shipping(settings: dict, root: str) -> None:
    """Point the CloudWatch agent at the app's log file, one stream per instance, have it
    publish the root disk's use (the stack's DiskUsedAlarm), and start it."""
    config = {
        # No host dimension: every instance of the stack publishes the same series.
        "agent": {"run_as_user": "root", "omit_hostname": True},
        "metrics": {
            "namespace": "CWAgent",
            "metrics_collected": {
                "disk": {
                    "resources": ["/"],
                    "measurement": ["used_percent"],
                    "drop_device": True,
                    "append_dimensions": {"Stack": settings["stack_name"]},
                }
            },
        },
        "logs": {
            "force_flush_interval": 5,
            "logs_collected": {
                "files": {
                    "collect_list": [
                        {
                            "file_path": settings["log_file"],
                            "log_group_name": settings["log_group"],
                            "log_stream_name": "{instance_id}",
                            "timezone": "UTC",
                        }
                    ]
                }
            },
        },
    }
    config_path = under(root, AGENT_CONFIG)
    with open(config_path, "w") as handle:
        json.dump(config, handle, indent=2)
    command = [under(root, AGENT_CTL), "-a", "fetch-config", "-m", "ec2", "-s"]
    subprocess.run([*command, "-c", f"file:{config_path}"], check=True)  # noqa: S603


def systemctl(*args: str) -> None:
    subprocess.run(["systemctl", *args], check=True)  # noqa: S603, S607 - systemd's own tool


def wait_until_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            # The app's own http://127.0.0.1 address, from the image's settings.
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
                if response.status == 200:
                    return True
        except OSError:
            pass  # not up yet, or 503 until the database answers
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(3, max(0.0, deadline - time.monotonic())))


def instance_id(metadata_service: str) -> str:
    """This instance's ID, from the instance metadata service (IMDSv2, as the launch template
    requires)."""
    # S310: these URLs are http:// ones from METADATA_SERVICE or the environment, never file:.
    token_request = urllib.request.Request(  # noqa: S310
        f"{metadata_service}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    with urllib.request.urlopen(token_request, timeout=5) as response:  # noqa: S310
        token = response.read().decode()
    id_request = urllib.request.Request(  # noqa: S310
        f"{metadata_service}/latest/meta-data/instance-id",
        headers={"X-aws-ec2-metadata-token": token},
    )
    with urllib.request.urlopen(id_request, timeout=5) as response:  # noqa: S310
        return response.read().decode()


def signal(settings: dict, success: bool, metadata_service: str) -> None:
    """Tell a running stack create or rolling update that this instance is ready, or not.
    Instances that scaling launches later have nobody waiting: CloudFormation refuses their
    signal, and that is fine."""
    client = boto3.client("cloudformation", region_name=settings["region"])
    try:
        client.signal_resource(
            StackName=settings["stack_name"],
            LogicalResourceId=settings["signal_resource"],
            UniqueId=instance_id(metadata_service),
            Status="SUCCESS" if success else "FAILURE",
        )
    except Exception as error:  # best effort by design: see above
        log(f"no CloudFormation signal sent ({error})")


def refresh(settings: dict, root: str) -> int:
    # A new token each time: the file is replaced, and the app reads it again.
    url = iam_database_url(settings)
    write_database_url(under(root, settings["database_url_file"]), url, settings["group"])
    return 0


def boot(settings: dict, root: str, metadata_service: str) -> int:
    ready = False
    try:
        if not os.path.isfile(under(root, settings["rds_ca_bundle"])):
            raise ConfigureError(
                f"{settings['rds_ca_bundle']} is missing: the AMI was baked without the RDS"
                " CA bundle, so no connection to the database could be verified"
            )
        bootstrap_database(settings, root, read_secret(settings))
        url = iam_database_url(settings)
        write_database_url(under(root, settings["database_url_file"]), url, settings["group"])
        log(f"wrote {settings['database_url_file']} for {settings['db_app_user']}")
        start_log_shipping(settings, root)
        # Enabled in the AMI, hello-app's workers run already; start them if they do not.
        systemctl("enable", "--now", settings["service"])
        systemctl("enable", "--now", settings["refresh_timer"])
        ready = wait_until_ready(settings["ready_url"], float(settings["ready_timeout_seconds"]))
        if ready:
            # Let the ALB see it healthy (2 checks x 10 s) before an old instance goes.
            time.sleep(float(settings["settle_seconds"]))
        else:
            log(
                f"hello-app did not answer {settings['ready_url']} within"
                f" {settings['ready_timeout_seconds']} s"
            )
    finally:
        signal(settings, ready, metadata_service)
    return 0 if ready else 1


def main(argv: list[str], environ: dict[str, str]) -> int:
    command = argv[1] if len(argv) == 2 else ""
    if command not in ("boot", "refresh"):
        log("usage: hello-app-configure boot|refresh")
        return 2
    root = environ.get("HELLO_APP_CONFIGURE_ROOT", "/")
    metadata_service = environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", METADATA_SERVICE)
    try:
        settings = load_settings(root)
        if command == "refresh":
            return refresh(settings, root)
        return boot(settings, root, metadata_service.rstrip("/"))
    except ConfigureError as error:
        log(str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv, dict(os.environ)))
