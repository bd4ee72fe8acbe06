-- Tenant moves: the whole record of each tenant's latest move, written at every
-- phase change by the instance running it, so any instance (or one restarted)
-- sees it and can resume or abort a move cut short. `tenants.state` keeps the
-- phase alone (active → copying → catching_up → paused → switched → active).
CREATE TABLE pgtenant.moves (
    tenant text PRIMARY KEY,
    id text NOT NULL,
    from_host text NOT NULL,
    to_host text NOT NULL,
    copy boolean NOT NULL,
    drop_source boolean NOT NULL DEFAULT false,
    phase text NOT NULL CHECK (phase IN
        ('active', 'copying', 'catching_up', 'paused', 'switched', 'failed', 'aborted')),
    finished boolean NOT NULL DEFAULT false,
    -- pgtenant.instances.id of the instance running it (no foreign key: the row of
    -- a crashed instance expires, the move's record stays).
    instance text,
    replication_name text,
    replication_database text,
    target_made boolean NOT NULL DEFAULT false,
    message text NOT NULL DEFAULT '',
    rows_done bigint NOT NULL DEFAULT 0,
    rows_total bigint NOT NULL DEFAULT 0,
    bytes_done bigint NOT NULL DEFAULT 0,
    bytes_total bigint NOT NULL DEFAULT 0,
    paused_ms bigint,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Each instance's acknowledgement of a move's pause (or why it could not pause),
-- written before it notifies the instance running the move, which decides from
-- this table: a notification lost with a connection loses no acknowledgement.
CREATE TABLE pgtenant.move_acks (
    move_id text NOT NULL,
    instance text NOT NULL,
    acked_at timestamptz NOT NULL DEFAULT now(),
    error text,
    PRIMARY KEY (move_id, instance)
);
