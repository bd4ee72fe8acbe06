//! Copying a tenant's data with logical replication, as the hosts' `admin_user`.
//!
//! The schema (DDL) comes first, from `pg_dump --schema-only` of the tenant's schemas
//! (or whole database) applied on the target; then a publication on the source, a
//! subscription on the target (its initial copy, then the stream of changes). One
//! name serves the publication, the subscription and its slot: `pgtenant_move_<tenant>`.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::registry::Host;

/// Where to connect as the host's admin role.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
}

impl Endpoint {
    pub fn new(host: &Host, database: &str) -> Result<Endpoint, String> {
        let (name, port) = host
            .address
            .rsplit_once(':')
            .ok_or_else(|| format!("host {}: address without a port", host.name))?;
        Ok(Endpoint {
            host: name.trim_start_matches('[').trim_end_matches(']').into(),
            port: port
                .parse()
                .map_err(|_| format!("host {}: bad port", host.name))?,
            database: database.into(),
            user: host.admin_user.clone().unwrap_or_else(|| "postgres".into()),
            password: host.admin_password.as_ref().map(|p| p.expose().to_string()),
        })
    }

    pub fn with_database(&self, database: &str) -> Endpoint {
        Endpoint {
            database: database.into(),
            ..self.clone()
        }
    }

    pub async fn connect(&self) -> Result<Client, String> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database)
            .application_name("pgtenant move")
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = &self.password {
            config.password(password);
        }
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| format!("{}: {}", self.describe(), error_text(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The subscription's connection string to this endpoint.
    fn conninfo(&self) -> String {
        let mut s = format!(
            "host={} port={} dbname={} user={}",
            conn_value(&self.host),
            self.port,
            conn_value(&self.database),
            conn_value(&self.user)
        );
        if let Some(password) = &self.password {
            s.push_str(&format!(" password={}", conn_value(password)));
        }
        s
    }

    fn describe(&self) -> String {
        format!(
            "{}:{} database {} as {}",
            self.host, self.port, self.database, self.user
        )
    }
}

/// The server's message (and detail) rather than tokio-postgres' "db error".
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

pub(super) fn sql(e: tokio_postgres::Error) -> String {
    error_text(&e)
}

pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn conn_value(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// What is copied: the tenant's schemas in a shared database, or its whole database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Schemas(Vec<String>),
    Database,
}

impl Scope {
    /// A tenant with a search_path is a schema tenant (its schemas but `public`);
    /// one without is a database tenant.
    pub fn of(search_path: &[String]) -> Scope {
        let schemas: Vec<String> = search_path
            .iter()
            .filter(|s| !matches!(s.as_str(), "public" | "$user" | "pg_catalog"))
            .cloned()
            .collect();
        match schemas.is_empty() {
            true => Scope::Database,
            false => Scope::Schemas(schemas),
        }
    }

    /// A condition on a `schemaname`-like column, with the schemas as `$1`.
    fn filter(&self, column: &str) -> String {
        match self {
            Scope::Schemas(_) => format!("{column} = ANY($1::text[])"),
            Scope::Database => format!(
                "({column} NOT IN ('pg_catalog', 'information_schema') AND {column} NOT LIKE 'pg\\_%' AND cardinality($1::text[]) >= 0)"
            ),
        }
    }

    fn schemas(&self) -> Vec<String> {
        match self {
            Scope::Schemas(s) => s.clone(),
            Scope::Database => Vec::new(),
        }
    }
}

/// How far the initial copy is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub tables: usize,
    pub tables_ready: usize,
    pub rows_done: u64,
    pub rows_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// An open copy: connections to both sides and the objects' name.
pub struct Copy {
    pub source: Endpoint,
    pub target: Endpoint,
    pub scope: Scope,
    pub name: String,
    src: Client,
    dst: Option<Client>,
    /// What the copy made on the target (dropped again if the move fails).
    pub created_database: bool,
    pub created_schemas: bool,
}

impl Copy {
    pub async fn open(
        source: Endpoint,
        target: Endpoint,
        scope: Scope,
        name: String,
    ) -> Result<Copy, String> {
        let src = source.connect().await?;
        Ok(Copy {
            source,
            target,
            scope,
            name,
            src,
            dst: None,
            created_database: false,
            created_schemas: false,
        })
    }

    fn dst(&self) -> &Client {
        self.dst
            .as_ref()
            .expect("target connected in prepare_target")
    }

    /// What logical replication needs of the source, checked before anything is made.
    pub async fn check(&self) -> Result<(), String> {
        let row = self
            .src
            .query_one(
                "SELECT current_setting('wal_level'), current_setting('server_version_num')::int",
                &[],
            )
            .await
            .map_err(sql)?;
        let (wal_level, version): (String, i32) = (row.get(0), row.get(1));
        if wal_level != "logical" {
            return Err(format!(
                "the source host has wal_level = {wal_level}; copying needs wal_level = logical (set it in postgresql.conf and restart)"
            ));
        }
        if version < 150000 && matches!(self.scope, Scope::Schemas(_)) {
            return Err("copying a schema tenant needs PostgreSQL 15 or later on the source (publications FOR TABLES IN SCHEMA)".into());
        }
        if let Scope::Schemas(schemas) = &self.scope {
            let found: i64 = self
                .src
                .query_one(
                    "SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1::text[])",
                    &[schemas],
                )
                .await
                .map_err(sql)?
                .get(0);
            if found as usize != schemas.len() {
                return Err(format!(
                    "schema(s) {} not found on the source",
                    schemas.join(", ")
                ));
            }
        }
        // UPDATE and DELETE on a published table without a replica identity fail on
        // the source: refuse rather than break the tenant's writes.
        let query = format!(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {} \
             AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
               (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
             ORDER BY 1",
            self.scope.filter("n.nspname")
        );
        let rows = self
            .src
            .query(&query, &[&self.scope.schemas()])
            .await
            .map_err(sql)?;
        if !rows.is_empty() {
            let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            return Err(format!(
                "table(s) without a primary key or replica identity cannot be copied by logical replication: {} (add a primary key, or ALTER TABLE … REPLICA IDENTITY FULL)",
                names.join(", ")
            ));
        }
        Ok(())
    }

    /// Creates the database on the target if it is missing and applies the schema.
    pub async fn prepare_target(&mut self) -> Result<(), String> {
        let admin = self.target.with_database("postgres").connect().await?;
        let exists = admin
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&self.target.database],
            )
            .await
            .map_err(sql)?
            .is_some();
        if !exists {
            let owner: String = self
                .src
                .query_one(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()",
                    &[],
                )
                .await
                .map_err(sql)?
                .get(0);
            admin
                .batch_execute(&format!(
                    "CREATE DATABASE {} OWNER {}",
                    ident(&self.target.database),
                    ident(&owner)
                ))
                .await
                .map_err(|e| format!("creating database on the target: {}", sql(e)))?;
            self.created_database = true;
        } else if self.scope == Scope::Database {
            return Err(format!(
                "database \"{}\" already exists on the target host; a database tenant is copied into a new database",
                self.target.database
            ));
        }
        self.dst = Some(self.target.connect().await?);
        let ddl = self.dump_schema().await?;
        self.dst()
            .batch_execute(&ddl)
            .await
            .map_err(|e| format!("applying the schema on the target: {}", sql(e)))?;
        self.created_schemas = true;
        Ok(())
    }

    async fn dump_schema(&self) -> Result<String, String> {
        let bin = crate::cluster::PgBin::find()
            .map_err(|e| format!("pg_dump is needed to copy the schema: {e}"))?;
        let mut command = tokio::process::Command::new(bin.tool("pg_dump"));
        command
            .args(["--schema-only", "--no-publications", "--no-subscriptions"])
            .arg(format!("--host={}", self.source.host))
            .arg(format!("--port={}", self.source.port))
            .arg(format!("--username={}", self.source.user))
            .arg(format!("--dbname={}", self.source.database))
            .env("PGCONNECT_TIMEOUT", "10")
            .kill_on_drop(true);
        if let Some(password) = &self.source.password {
            command.env("PGPASSWORD", password);
        }
        for schema in self.scope.schemas() {
            command.arg(format!("--schema={}", ident(&schema)));
        }
        let out = command
            .output()
            .await
            .map_err(|e| format!("cannot run pg_dump: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_dump of the source failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8(out.stdout).map_err(|_| "pg_dump printed non-UTF-8 text")?;
        Ok(without_meta_commands(&text))
    }

    /// Takes over the replication a move cut short left: true when the subscription
    /// (target), its slot and the publication (source) are all there; the
    /// subscription is enabled again in case it was disabled. `target_made` is what
    /// the record says the earlier move made on the target.
    pub async fn reuse(&mut self, target_made: bool) -> Result<bool, String> {
        let dst = match self.target.connect().await {
            Ok(dst) => dst,
            // No database on the target: nothing to take over.
            Err(_) => return Ok(false),
        };
        let subscribed = dst
            .query_opt(
                "SELECT 1 FROM pg_subscription WHERE subname = $1",
                &[&self.name],
            )
            .await
            .map_err(sql)?
            .is_some();
        let published: i64 = self
            .src
            .query_one(
                "SELECT (SELECT count(*) FROM pg_publication WHERE pubname = $1) \
                 + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1)",
                &[&self.name],
            )
            .await
            .map_err(sql)?
            .get(0);
        if !subscribed || published != 2 {
            return Ok(false);
        }
        dst.batch_execute(&format!("ALTER SUBSCRIPTION {} ENABLE", ident(&self.name)))
            .await
            .map_err(|e| format!("enabling the subscription on the target: {}", sql(e)))?;
        self.dst = Some(dst);
        self.created_schemas = target_made;
        self.created_database = target_made && self.scope == Scope::Database;
        Ok(true)
    }

    /// The publication on the source and the subscription on the target.
    pub async fn start(&self) -> Result<(), String> {
        let what = match &self.scope {
            Scope::Schemas(schemas) => format!(
                "FOR TABLES IN SCHEMA {}",
                schemas
                    .iter()
                    .map(|s| ident(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Scope::Database => "FOR ALL TABLES".into(),
        };
        self.src
            .batch_execute(&format!("CREATE PUBLICATION {} {what}", ident(&self.name)))
            .await
            .map_err(|e| format!("creating the publication on the source: {}", sql(e)))?;
        // synchronous_commit on: each applied transaction is confirmed as soon as it
        // is applied, so the final catch-up under the pause is short.
        self.dst()
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (synchronous_commit = 'on')",
                ident(&self.name),
                literal(&self.source.conninfo()),
                ident(&self.name)
            ))
            .await
            .map_err(|e| format!("creating the subscription on the target: {}", sql(e)))?;
        Ok(())
    }

    pub async fn progress(&self) -> Result<Progress, String> {
        let query = format!(
            "SELECT n.nspname::text, c.relname::text, greatest(coalesce(s.n_live_tup, 0), c.reltuples::int8), \
             pg_table_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
             WHERE c.relkind = 'r' AND {}",
            self.scope.filter("n.nspname")
        );
        let sizes = self
            .src
            .query(&query, &[&self.scope.schemas()])
            .await
            .map_err(sql)?;
        let states = self
            .dst()
            .query(
                "SELECT n.nspname::text, c.relname::text, sr.srsubstate::text \
                 FROM pg_subscription_rel sr JOIN pg_class c ON c.oid = sr.srrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE sr.srsubid = (SELECT oid FROM pg_subscription WHERE subname = $1)",
                &[&self.name],
            )
            .await
            .map_err(sql)?;
        let copying = self
            .dst()
            .query_one(
                "SELECT coalesce(sum(tuples_processed), 0)::int8, coalesce(sum(bytes_processed), 0)::int8 \
                 FROM pg_stat_progress_copy WHERE datname = current_database()",
                &[],
            )
            .await
            .map_err(sql)?;
        let mut p = Progress {
            tables: states.len(),
            rows_done: copying.get::<_, i64>(0).max(0) as u64,
            bytes_done: copying.get::<_, i64>(1).max(0) as u64,
            ..Progress::default()
        };
        for row in &sizes {
            let (schema, table): (String, String) = (row.get(0), row.get(1));
            let rows = row.get::<_, i64>(2).max(0) as u64;
            let bytes = row.get::<_, i64>(3).max(0) as u64;
            p.rows_total += rows;
            p.bytes_total += bytes;
            let ready = states.iter().any(|s| {
                s.get::<_, String>(0) == schema
                    && s.get::<_, String>(1) == table
                    && matches!(s.get::<_, String>(2).as_str(), "r" | "s")
            });
            if ready {
                p.tables_ready += 1;
                p.rows_done += rows;
                p.bytes_done += bytes;
            }
        }
        p.rows_done = p.rows_done.min(p.rows_total);
        p.bytes_done = p.bytes_done.min(p.bytes_total);
        Ok(p)
    }

    /// Every table has had its initial copy and follows the stream.
    pub async fn synced(&self) -> Result<bool, String> {
        let row = self
            .dst()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1), \
                 (SELECT count(*) FILTER (WHERE srsubstate <> 'r') FROM pg_subscription_rel \
                 WHERE srsubid = (SELECT oid FROM pg_subscription WHERE subname = $1))",
                &[&self.name],
            )
            .await
            .map_err(sql)?;
        if !row.get::<_, bool>(0) {
            return Err(format!(
                "subscription {} is gone from the target",
                self.name
            ));
        }
        Ok(row.get::<_, i64>(1) == 0)
    }

    /// The source's WAL position now.
    pub async fn source_lsn(&self) -> Result<String, String> {
        let row = self
            .src
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(sql)?;
        Ok(row.get(0))
    }

    /// The subscription has applied (and confirmed to the source) everything up to `lsn`.
    pub async fn confirmed(&self, lsn: &str) -> Result<bool, String> {
        let row = self
            .src
            .query_opt(
                "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false) \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name, &lsn],
            )
            .await
            .map_err(sql)?;
        match row {
            Some(row) => Ok(row.get(0)),
            None => Err(format!(
                "replication slot {} is gone from the source",
                self.name
            )),
        }
    }

    /// Logical replication does not carry sequences: each is set on the target to
    /// its value on the source, so the next value there is past every one used.
    pub async fn sync_sequences(&self) -> Result<usize, String> {
        let query = format!(
            "SELECT schemaname::text, sequencename::text, last_value FROM pg_sequences \
             WHERE last_value IS NOT NULL AND {}",
            self.scope.filter("schemaname")
        );
        let rows = self
            .src
            .query(&query, &[&self.scope.schemas()])
            .await
            .map_err(sql)?;
        for row in &rows {
            let (schema, name, value): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
            self.dst()
                .query_one(
                    "SELECT setval(format('%I.%I', $1::text, $2::text)::regclass, $3::int8, true)",
                    &[&schema, &name, &value],
                )
                .await
                .map_err(|e| {
                    format!("setting sequence {schema}.{name} on the target: {}", sql(e))
                })?;
        }
        Ok(rows.len())
    }
}

/// The dump without psql meta-commands (recent pg_dump brackets its output with
/// `\restrict`/`\unrestrict`): a schema-only dump has no data lines, so a line that
/// starts with a backslash is one of those.
fn without_meta_commands(dump: &str) -> String {
    dump.lines()
        .filter(|line| !line.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The objects' name for a tenant: lower-case letters, digits and `_` only.
pub fn object_name(tenant: &str) -> String {
    let clean: String = tenant
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() {
            true => c.to_ascii_lowercase(),
            false => '_',
        })
        .take(40)
        .collect();
    format!("pgtenant_move_{clean}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_tenants_copy_their_own_schemas() {
        assert_eq!(
            Scope::of(&["tenant_acme".into(), "public".into()]),
            Scope::Schemas(vec!["tenant_acme".into()])
        );
        assert_eq!(Scope::of(&[]), Scope::Database);
        assert_eq!(Scope::of(&["public".into()]), Scope::Database);
    }

    #[test]
    fn meta_commands_are_left_out() {
        let dump = "\\restrict abc\nCREATE TABLE t (a int);\n\\unrestrict abc\n";
        assert_eq!(without_meta_commands(dump), "CREATE TABLE t (a int);");
    }

    #[test]
    fn names_and_values_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(conn_value("it's a \\"), "'it\\'s a \\\\'");
        assert_eq!(object_name("Acme-Corp"), "pgtenant_move_acme_corp");
    }
}
