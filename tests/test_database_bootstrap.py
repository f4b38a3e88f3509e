"""The app's own database role: bootstrap.sql, which the boot step runs with the RDS master
secret at every boot, against a real PostgreSQL laid out as RDS lays it out.

RDS's master user is no superuser: it may create roles and owns the database. The fixture
makes one of those (`hello_app`, the stack's MasterUsername) on a throwaway server, whose
superuser only builds the scene and reads the catalogs.
"""

import importlib.util
from contextlib import closing

import psycopg2
import psycopg2.errors
import pytest
from support import REPO_ROOT
from test_postgres_tls import LOCALHOST, CertificateAuthority

from app.config import Config
from app.db import open_database
from app.migrations import MIGRATIONS, migrate

ROLE_FILES = REPO_ROOT / "ansible/roles/hello_app_aws/files"
BOOTSTRAP_SQL = (ROLE_FILES / "bootstrap.sql").read_text()
MASTER, MASTER_PASSWORD = "hello_app", "master-secret"  # a throwaway server
APP_USER = "hello_app_iam"
APP_PASSWORD = "app-test-password"  # noqa: S105 - stands in for the IAM token RDS checks
DATABASE = "hello"


@pytest.fixture(scope="module")
def configure():
    """The boot step, imported from the file the role installs as hello-app-configure."""
    spec = importlib.util.spec_from_file_location(
        "hello_app_configure", ROLE_FILES / "hello_app_configure.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RdsLikeServer:
    """A throwaway server with a database owned by a master user that is not a superuser,
    as RDS creates it."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.superuser = cluster.url  # the postgres database, as the cluster's superuser
        self.as_superuser(
            f"CREATE ROLE {MASTER} LOGIN CREATEROLE PASSWORD '{MASTER_PASSWORD}'",
            f"CREATE DATABASE {DATABASE} OWNER {MASTER}",
        )
        # PostgreSQL 15 stopped letting PUBLIC create in public; databases from before kept it.
        self.as_superuser("GRANT CREATE ON SCHEMA public TO PUBLIC", database=DATABASE)

    def url(self, user: str, password: str, database: str = DATABASE) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.cluster.port}/{database}"

    def connect(self, user: str, password: str):
        return closing(psycopg2.connect(self.url(user, password)))

    def as_superuser(self, *statements: str, database: str = "postgres") -> list:
        url = self.superuser.rsplit("/", 1)[0] + f"/{database}"
        with closing(psycopg2.connect(url)) as conn:
            conn.autocommit = True  # CREATE DATABASE refuses to run in a transaction
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
                return cur.fetchall() if cur.description else []

    def add_rds_iam(self) -> None:
        """RDS's rds_iam role, which its master may grant."""
        self.as_superuser(
            "CREATE ROLE rds_iam NOLOGIN", f"GRANT rds_iam TO {MASTER} WITH ADMIN OPTION"
        )

    def bootstrap(self, configure) -> None:
        with self.connect(MASTER, MASTER_PASSWORD) as conn:
            configure.run_bootstrap(conn, BOOTSTRAP_SQL, APP_USER)

    def let_the_app_log_in(self) -> str:
        """A password for the app's role, in place of the IAM token RDS would check; its URL."""
        self.as_superuser(f"ALTER ROLE {APP_USER} PASSWORD '{APP_PASSWORD}'")
        return self.url(APP_USER, APP_PASSWORD)

    def deploy_an_earlier_release(self, visits: int) -> None:
        """What releases before this one left: their tables, made by the master, with visits.
        Those releases knew migrations 1 and 2; later ones run as the app's own role."""
        with self.connect(MASTER, MASTER_PASSWORD) as conn, conn.cursor() as cur:
            migrate(cur, "postgresql", MIGRATIONS[:2])
            for _ in range(visits):
                cur.execute("INSERT INTO visits DEFAULT VALUES")
            conn.commit()

    def state(self) -> dict:
        """What the bootstrap may change, from the catalogs."""
        queries = {
            "roles": "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb,"
            " rolcanlogin, rolreplication, rolbypassrls, rolpassword IS NULL AS no_password"
            " FROM pg_authid WHERE rolname !~ '^pg_' ORDER BY rolname",
            "memberships": "SELECT roleid::regrole::text, member::regrole::text,"
            " grantor::regrole::text, admin_option FROM pg_auth_members"
            " WHERE roleid::regrole::text !~ '^pg_' ORDER BY 1, 2, 3",
            "database": "SELECT datdba::regrole::text, datacl::text FROM pg_database"
            " WHERE datname = current_database()",
            "schema": "SELECT nspowner::regrole::text, nspacl::text FROM pg_namespace"
            " WHERE nspname = 'public'",
            "relations": "SELECT relname, relkind, relowner::regrole::text, relacl::text"
            " FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY relname",
            "functions": "SELECT proname, proowner::regrole::text, proacl::text FROM pg_proc"
            " WHERE pronamespace = 'public'::regnamespace ORDER BY proname",
        }
        return {
            name: self.as_superuser(query, database=DATABASE) for name, query in queries.items()
        }


@pytest.fixture
def server(postgres_cluster):
    return RdsLikeServer(postgres_cluster)


def owners(state: dict) -> dict[str, str]:
    found = {name: owner for name, _, owner, _ in state["relations"]}
    found.update({f"{name}()": owner for name, owner, _ in state["functions"]})
    return found


def test_bootstrap_run_twice_leaves_the_same_state(server, configure):
    server.add_rds_iam()
    server.deploy_an_earlier_release(visits=3)

    server.bootstrap(configure)
    first = server.state()
    server.bootstrap(configure)

    assert server.state() == first
    (app_role,) = [role for role in first["roles"] if role[0] == APP_USER]
    # LOGIN, no password, and nothing else: not superuser, no CREATEROLE/CREATEDB/REPLICATION.
    assert app_role == (APP_USER, False, True, False, False, True, False, False, True)
    memberships = {(role, member) for role, member, _, _ in first["memberships"]}
    assert ("rds_iam", APP_USER) in memberships
    assert (APP_USER, MASTER) in memberships  # the master keeps the use of the app's tables
    assert (MASTER, APP_USER) not in memberships
    # Everything the earlier release created is the app's now: its tables, the serial
    # sequence and primary keys that come with them, and the trigger's function.
    assert owners(first) == {
        name: APP_USER
        for name in (
            "count_visit()",
            "schema_migrations",
            "schema_migrations_pkey",
            "visit_count",
            "visit_count_pkey",
            "visits",
            "visits_id_seq",
            "visits_pkey",
        )
    }


def test_without_rds_iam_the_bootstrap_still_runs_as_on_plain_postgresql(server, configure):
    server.bootstrap(configure)
    server.bootstrap(configure)

    roles = {role[0] for role in server.state()["roles"]}
    assert APP_USER in roles and "rds_iam" not in roles


def test_on_a_new_database_the_app_role_migrates_and_counts_visits(server, configure):
    server.bootstrap(configure)
    database = open_database(Config(database_url=server.let_the_app_log_in()))

    assert [database.record_visit().count for _ in range(3)] == [1, 2, 3]
    assert database.count_visits() == 3
    assert set(owners(server.state()).values()) == {APP_USER}


def test_the_app_role_keeps_counting_the_visits_of_the_tables_it_was_handed(server, configure):
    server.deploy_an_earlier_release(visits=5)
    server.bootstrap(configure)

    database = open_database(Config(database_url=server.let_the_app_log_in()))

    assert database.record_visit().count == 6
    # An instance of the earlier release, still connected as the master during the rolling
    # update, goes on counting in the same tables.
    assert (
        open_database(Config(database_url=server.url(MASTER, MASTER_PASSWORD))).count_visits() == 6
    )


def test_the_app_role_cannot_touch_what_is_not_its_own(server, configure):
    server.as_superuser("CREATE TABLE public.other_tenant (secret text)", database=DATABASE)
    server.bootstrap(configure)
    server.let_the_app_log_in()

    refused = {
        "read another role's table": "SELECT * FROM public.other_tenant",
        "create a schema": "CREATE SCHEMA app_private",
        "create a role": "CREATE ROLE accomplice LOGIN",
        "create a database": "CREATE DATABASE elsewhere",
        "take the master's role": f"SET ROLE {MASTER}",
    }
    for what, statement in refused.items():
        with server.connect(APP_USER, APP_PASSWORD) as conn:
            conn.autocommit = True  # CREATE DATABASE runs outside a transaction, or not at all
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
                pytest.fail(f"the app's role could {what}")


def test_other_roles_can_neither_connect_nor_create_in_public(server, configure):
    server.as_superuser("CREATE ROLE someone LOGIN PASSWORD 'someone-password'")
    server.deploy_an_earlier_release(visits=1)
    server.bootstrap(configure)

    with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
        psycopg2.connect(server.url("someone", "someone-password"))
    server.as_superuser(f"GRANT CONNECT ON DATABASE {DATABASE} TO someone")
    with server.connect("someone", "someone-password") as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("CREATE TABLE public.squatter (id int)")
        conn.rollback()
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT count(*) FROM public.visits")


def test_the_bootstrap_without_the_app_user_setting_fails_in_one_clear_line(server):
    with (
        server.connect(MASTER, MASTER_PASSWORD) as conn,
        conn.cursor() as cur,
        pytest.raises(psycopg2.errors.RaiseException) as refused,
    ):
        cur.execute(BOOTSTRAP_SQL)
    assert str(refused.value).splitlines()[0] == (
        "hello.app_user is not set: SET hello.app_user = '<the app's role>' first"
    )


def test_boot_bootstraps_as_the_master_only_over_tls_it_verifies(server, configure, tmp_path):
    """The boot step's own connection: the master's secret, sslmode=verify-full against the
    CA bundle the image carries, and the host name the stack gives."""
    authority = CertificateAuthority("hello-test-rds-ca")
    server.cluster.stop()
    server.cluster.require_tls(*authority.issue(*LOCALHOST))
    server.cluster.start()
    root = tmp_path / "root"
    (root / "etc/ssl").mkdir(parents=True)
    (root / "etc/ssl/rds-ca.pem").write_bytes(authority.pem())
    (root / "etc/ssl/other-ca.pem").write_bytes(CertificateAuthority("not-rds").pem())
    (root / "share").mkdir()
    (root / "share/bootstrap.sql").write_text(BOOTSTRAP_SQL)
    settings = {
        "db_host": "localhost",
        "db_port": str(server.cluster.port),
        "db_name": DATABASE,
        "db_app_user": APP_USER,
        "rds_ca_bundle": "/etc/ssl/other-ca.pem",
        "bootstrap_sql": "/share/bootstrap.sql",
    }
    master = {"username": MASTER, "password": MASTER_PASSWORD}

    with pytest.raises(configure.ConfigureError, match="certificate verify failed"):
        configure.bootstrap_database(settings, str(root), master)
    assert APP_USER not in {role[0] for role in server.state()["roles"]}

    configure.bootstrap_database(
        {**settings, "rds_ca_bundle": "/etc/ssl/rds-ca.pem"}, str(root), master
    )
    assert APP_USER in {role[0] for role in server.state()["roles"]}
