-- The app's own database role, created or repaired by the RDS master user.
--
-- hello-app-configure runs this at every boot, with the master secret, in one transaction
-- after `SELECT set_config('hello.app_user', '<role>', true)`: every statement may run again
-- and leaves the same state. By hand: psql -v ON_ERROR_STOP=1 -c "SET hello.app_user = 'hello_app_iam'" -f bootstrap.sql
--
-- What the app's role may do afterwards: log in (on RDS only with an IAM token, through
-- rds_iam), connect to this database, and create tables in public, which it then owns. It
-- owns the tables every release has created, so its migrations can alter them; it has no
-- privilege on any other table, and no other role (except the master) has any on its own.
-- The tables stay in public because instances of the previous release, still connected as
-- the master during a rolling update, look for them there; the master keeps using them as
-- a member of the app's role.
DO $bootstrap$
DECLARE
    app_user text := current_setting('hello.app_user', true);
    old_table text;
BEGIN
    IF coalesce(app_user, '') = '' THEN
        RAISE EXCEPTION 'hello.app_user is not set: SET hello.app_user = ''<the app''s role>'' first';
    END IF;
    -- Boots of several instances at once: one creates the role, the others wait, then find it.
    PERFORM pg_advisory_xact_lock(hashtext('hello-app bootstrap'));

    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = app_user) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', app_user);
    END IF;
    -- No password ever: an IAM token is its only credential (a password set by hand goes).
    EXECUTE format('ALTER ROLE %I WITH LOGIN PASSWORD NULL', app_user);
    -- RDS's role for IAM database authentication; plain PostgreSQL (the tests) has none.
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_iam') THEN
        EXECUTE format('GRANT rds_iam TO %I', app_user);
    END IF;
    -- ALTER ... OWNER TO needs the master to be a member of the new owner; the master thereby
    -- also keeps the use of the app's tables, which the previous release needs (see above).
    EXECUTE format('GRANT %I TO %I', app_user, current_user);

    EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), app_user);
    -- PostgreSQL 15 and later no longer let PUBLIC create in public; older databases did.
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA public TO %I', app_user);

    -- What the app created while it connected as the master (app/migrations.py, versions 1
    -- and 2, and their bookkeeping): handed over once. Later migrations run as the app's role
    -- and own what they create. A table's serial sequence follows its table.
    FOREACH old_table IN ARRAY ARRAY['schema_migrations', 'visits', 'visit_count'] LOOP
        IF EXISTS (
            SELECT FROM pg_class
            WHERE oid = to_regclass(format('public.%I', old_table))
              AND relowner <> (SELECT oid FROM pg_roles WHERE rolname = app_user)
        ) THEN
            EXECUTE format('ALTER TABLE public.%I OWNER TO %I', old_table, app_user);
        END IF;
    END LOOP;
    IF EXISTS (
        SELECT FROM pg_proc
        WHERE oid = to_regprocedure('public.count_visit()')
          AND proowner <> (SELECT oid FROM pg_roles WHERE rolname = app_user)
    ) THEN
        EXECUTE format('ALTER FUNCTION public.count_visit() OWNER TO %I', app_user);
    END IF;
END
$bootstrap$;
