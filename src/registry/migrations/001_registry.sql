-- Hosts, tenants and client users, shaped like the registry file; instances of the
-- proxy that serve them. Values of *_password may be "enc:…" as in the file.
CREATE TABLE pgtenant.hosts (
    name text PRIMARY KEY,
    address text NOT NULL,
    max_connections integer NOT NULL DEFAULT 100 CHECK (max_connections > 0),
    tls text NOT NULL DEFAULT 'disable'
        CHECK (tls IN ('disable', 'prefer', 'require', 'verify-ca', 'verify-full')),
    tls_ca_file text,
    tls_server_name text,
    auth_user text,
    auth_password text,
    admin_user text,
    admin_password text
);

CREATE TABLE pgtenant.tenants (
    name text PRIMARY KEY,
    host text NOT NULL REFERENCES pgtenant.hosts (name) ON UPDATE CASCADE,
    database text NOT NULL CHECK (database <> ''),
    search_path text[] NOT NULL DEFAULT '{}',
    backend_user text,
    backend_password text,
    pool_size integer CHECK (pool_size > 0),
    min_idle integer CHECK (min_idle >= 0),
    pool_mode text CHECK (pool_mode IN ('session', 'transaction')),
    share boolean,
    state text NOT NULL DEFAULT 'active',
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtenant.users (
    name text PRIMARY KEY,
    password text NOT NULL,
    tenants text[] NOT NULL DEFAULT '{}'
);

CREATE TABLE pgtenant.instances (
    id text PRIMARY KEY,
    address text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now()
);

-- One notification per changing statement; instances read the registry again.
-- An application's own table can carry the same trigger (see the README).
CREATE FUNCTION pgtenant.notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgtenant_registry', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgtenant.hosts
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
CREATE TRIGGER notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgtenant.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
CREATE TRIGGER notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgtenant.users
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
