//! Shared harness for the integration tests: real PostgreSQL clusters, a settings file
//! and a registry file in a temp dir, and a pgtenant `Server` on 127.0.0.1:0.
//!
//! ```ignore
//! let env = EnvBuilder::erp().settings("[pool]\npool_size = 1").start().await;
//! let client = env.connect("app", "acme").await;
//! ```
//!
//! Registry text may name a host's address as `${NAME}` (e.g. `address = "${pg-a}"`);
//! it is filled in when the file is written. Set `PGTENANT_TEST_LOG=debug` to see the
//! proxy's log.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod process;
pub mod tls;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pgtenant::cluster::{Cluster, ClusterOptions, PgBin};
use pgtenant::{Server, Settings};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

// ---------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------

/// Name of the host the `erp` fixture starts.
pub const ERP_HOST: &str = "pg-a";

/// Run in `postgres` on the erp host: the application role and the shared database.
pub const ERP_ROLES: &str = "
CREATE ROLE app LOGIN;
CREATE DATABASE erp OWNER app;
";

/// Run in `erp`: one schema per tenant, each with an `items` table holding its own
/// rows, plus a decoy `public.items` that a client without the tenant's search_path
/// would see instead.
pub const ERP_SCHEMAS: &str = "
SET ROLE app;
CREATE SCHEMA tenant_acme;
CREATE SCHEMA tenant_globex;
CREATE TABLE tenant_acme.items (id int PRIMARY KEY, name text);
CREATE TABLE tenant_globex.items (id int PRIMARY KEY, name text);
CREATE TABLE public.items (id int PRIMARY KEY, name text);
INSERT INTO tenant_acme.items VALUES (1, 'acme anvil'), (2, 'acme rocket skates');
INSERT INTO tenant_globex.items VALUES (1, 'globex hammock'), (2, 'globex doomsday device'), (3, 'globex coupon');
INSERT INTO public.items VALUES (1, 'public decoy');
";

pub const ACME_ITEMS: &[&str] = &["acme anvil", "acme rocket skates"];
pub const GLOBEX_ITEMS: &[&str] = &["globex hammock", "globex doomsday device", "globex coupon"];

/// Registry for the erp fixture: tenants acme and globex, schema per tenant, as `app`.
pub const ERP_REGISTRY: &str = r#"
[hosts.pg-a]
address = "${pg-a}"
max_connections = 50

[tenants.acme]
host = "pg-a"
database = "erp"
search_path = ["tenant_acme"]
backend_user = "app"

[tenants.globex]
host = "pg-a"
database = "erp"
search_path = ["tenant_globex"]
backend_user = "app"
"#;

// ---------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------

struct HostSpec {
    name: String,
    opts: ClusterOptions,
    /// (database, SQL) run in order with `psql -f -` once the cluster is up.
    seeds: Vec<(String, String)>,
}

/// Describes an `Env`: hosts with their seeds, the registry and settings overrides.
pub struct EnvBuilder {
    hosts: Vec<HostSpec>,
    registry: String,
    settings: String,
}

impl Default for EnvBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvBuilder {
    pub fn new() -> EnvBuilder {
        EnvBuilder {
            hosts: Vec::new(),
            registry: String::new(),
            settings: String::new(),
        }
    }

    /// Host `pg-a` with database `erp` (tenants acme and globex) and its registry.
    pub fn erp() -> EnvBuilder {
        Self::erp_with(ClusterOptions::default())
    }

    /// Like `erp`, with cluster options (hba lines, postgresql.conf settings).
    pub fn erp_with(opts: ClusterOptions) -> EnvBuilder {
        EnvBuilder::new()
            .host_with(ERP_HOST, opts)
            .seed("postgres", ERP_ROLES)
            .seed("erp", ERP_SCHEMAS)
            .registry(ERP_REGISTRY)
    }

    /// Adds a cluster named `name` (letters, digits, '-', '_').
    pub fn host(self, name: &str) -> EnvBuilder {
        self.host_with(name, ClusterOptions::default())
    }

    pub fn host_with(mut self, name: &str, opts: ClusterOptions) -> EnvBuilder {
        self.hosts.push(HostSpec {
            name: name.into(),
            opts,
            seeds: Vec::new(),
        });
        self
    }

    /// SQL run as superuser in `database` of the host added last, statement by statement.
    pub fn seed(mut self, database: &str, sql: &str) -> EnvBuilder {
        let host = self.hosts.last_mut().expect("seed() needs a host() first");
        host.seeds.push((database.into(), sql.into()));
        self
    }

    /// Replaces the registry text (`${HOST}` placeholders allowed).
    pub fn registry(mut self, text: &str) -> EnvBuilder {
        self.registry = text.into();
        self
    }

    /// Appends tables to the registry text.
    pub fn registry_extra(mut self, text: &str) -> EnvBuilder {
        self.registry.push('\n');
        self.registry.push_str(text);
        self
    }

    /// Settings TOML merged key by key over the harness defaults (may be called again).
    pub fn settings(mut self, text: &str) -> EnvBuilder {
        self.settings.push('\n');
        self.settings.push_str(text);
        self
    }

    /// Starts the clusters (in parallel), writes the files and starts the proxy.
    pub async fn start(self) -> Env {
        init_logging();
        let dir = tempfile::Builder::new()
            .prefix("pgtenant-test-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");

        let starting: Vec<_> = self
            .hosts
            .into_iter()
            .map(|spec| tokio::task::spawn_blocking(move || start_host(spec)))
            .collect();
        let mut hosts = Vec::new();
        for handle in starting {
            hosts.push(handle.await.expect("cluster start panicked"));
        }

        let mut env = Env {
            server: None,
            hosts,
            registry_path: dir.path().join("tenants.toml"),
            settings_path: dir.path().join("pgtenant.toml"),
            dir,
        };
        env.write_registry(&self.registry);
        let settings = env.write_settings(&env.settings_path, &self.settings);
        env.server = Some(start_server(settings).await);
        env
    }
}

fn pg_bin() -> &'static PgBin {
    static BIN: OnceLock<PgBin> = OnceLock::new();
    BIN.get_or_init(|| PgBin::find().expect("PostgreSQL server binaries"))
}

fn start_host(spec: HostSpec) -> Cluster {
    let cluster = Cluster::start_with(pg_bin(), &spec.name, spec.opts)
        .unwrap_or_else(|e| panic!("starting cluster {}: {e}", spec.name));
    for (db, sql) in &spec.seeds {
        cluster
            .psql_file(db, sql)
            .unwrap_or_else(|e| panic!("seeding {} db {db}: {e}", spec.name));
    }
    cluster
}

fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if let Ok(filter) = std::env::var("PGTENANT_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

async fn start_server(settings: Settings) -> Server {
    Server::start(settings)
        .await
        .unwrap_or_else(|e| panic!("starting pgtenant: {e}"))
}

/// Deep-merges `over` into `base` (tables merge, other values replace).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Env
// ---------------------------------------------------------------------------------

/// A running test environment. Dropping it kills the clusters and removes the files
/// (the proxy's tasks end with the test's runtime).
pub struct Env {
    server: Option<Server>,
    pub hosts: Vec<Cluster>,
    pub registry_path: PathBuf,
    pub settings_path: PathBuf,
    pub dir: TempDir,
}

impl Env {
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.server().local_addr()
    }

    /// Stops accepting new clients (sessions already open go on).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Starts another proxy on the same registry with other settings overrides.
    pub async fn start_server(&self, overrides: &str) -> Server {
        let n = std::fs::read_dir(self.dir.path()).map_or(0, |d| d.count());
        let path = self.dir.path().join(format!("pgtenant-{n}.toml"));
        start_server(self.write_settings(&path, overrides)).await
    }

    fn write_settings(&self, path: &Path, overrides: &str) -> Settings {
        let mut settings: toml::Table = toml::from_str(&format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[registry]\nfile = {:?}\nwatch_interval = \"200ms\"\n",
            self.registry_path.display().to_string()
        ))
        .expect("default settings");
        let overrides: toml::Table = toml::from_str(overrides)
            .unwrap_or_else(|e| panic!("settings overrides are not TOML: {e}\n{overrides}"));
        merge(&mut settings, overrides);
        // A PostgreSQL registry replaces the file (the settings allow one of them).
        if let Some(toml::Value::Table(registry)) = settings.get_mut("registry") {
            if registry.contains_key("url") {
                registry.remove("file");
            }
        }
        std::fs::write(path, toml::to_string(&settings).expect("settings TOML"))
            .expect("writing settings");
        Settings::load(path).unwrap_or_else(|e| panic!("settings refused: {e}"))
    }

    pub fn host(&self, name: &str) -> &Cluster {
        self.hosts
            .iter()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// `127.0.0.1:PORT` of a host.
    pub fn host_address(&self, name: &str) -> String {
        self.host(name).address()
    }

    /// Fills `${HOST}` placeholders with host addresses.
    pub fn render(&self, text: &str) -> String {
        let mut text = text.to_string();
        for host in &self.hosts {
            text = text.replace(&format!("${{{}}}", host.name()), &host.address());
        }
        text
    }

    /// Replaces the registry file atomically (write + rename), placeholders filled in.
    pub fn write_registry(&self, text: &str) {
        let tmp = self.registry_path.with_extension("toml.tmp");
        std::fs::write(&tmp, self.render(text)).expect("writing registry");
        std::fs::rename(&tmp, &self.registry_path).expect("replacing registry");
    }

    /// Crashes a host (`pg_ctl stop -m immediate`).
    pub fn kill_host(&mut self, name: &str) {
        let cluster = self
            .hosts
            .iter_mut()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no host {name}"));
        tokio::task::block_in_place(|| cluster.kill());
    }

    /// Stops a host cleanly (`pg_ctl stop -m fast`), as for a restart.
    pub fn stop_host(&mut self, name: &str) {
        let cluster = self
            .hosts
            .iter_mut()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no host {name}"));
        tokio::task::block_in_place(|| cluster.stop());
    }

    /// Starts a stopped host again on its port and data directory.
    pub fn start_host_again(&mut self, name: &str) {
        let cluster = self
            .hosts
            .iter_mut()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no host {name}"));
        tokio::task::block_in_place(|| cluster.start_again())
            .unwrap_or_else(|e| panic!("starting {name} again: {e}"));
    }

    /// `postgres://user@127.0.0.1:PORT/db` for the proxy; `user` and `db` are
    /// percent-encoded.
    pub fn url(&self, user: &str, db: &str) -> String {
        url(self.addr(), user, db)
    }

    /// A tokio-postgres config for the proxy (None: no database in the startup packet).
    pub fn config(&self, user: &str, db: Option<&str>) -> Config {
        config_for(self.addr(), user, db)
    }

    /// Connects through the proxy; panics with the server's error if refused.
    pub async fn connect(&self, user: &str, db: &str) -> Client {
        connect(&self.config(user, Some(db)))
            .await
            .unwrap_or_else(|e| panic!("connecting as {user} to {db}: {}", describe(&e)))
    }

    pub async fn try_connect(&self, user: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
        connect(&self.config(user, Some(db))).await
    }

    /// Connects through the proxy and hands notices and notifications to the receiver.
    pub async fn connect_with_messages(
        &self,
        user: &str,
        db: &str,
    ) -> (Client, mpsc::UnboundedReceiver<AsyncMessage>) {
        connect_with_messages(&self.config(user, Some(db)))
            .await
            .unwrap_or_else(|e| panic!("connecting as {user} to {db}: {}", describe(&e)))
    }

    /// Connects straight to a host as superuser, bypassing the proxy.
    pub async fn direct(&self, host: &str, db: &str) -> Client {
        let mut config = Config::new();
        let host = self.host(host);
        config
            .host("127.0.0.1")
            .port(host.port())
            .user("postgres")
            .dbname(db);
        connect(&config)
            .await
            .unwrap_or_else(|e| panic!("direct connection to {}: {}", host.name(), describe(&e)))
    }

    /// Client backends connected to `db` on a host (not counting the one asking).
    pub async fn backends(&self, host: &str, db: &str) -> i64 {
        let client = self.direct(host, "postgres").await;
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND backend_type = 'client backend' \
                 AND pid <> pg_backend_pid()",
                &[&db],
            )
            .await
            .expect("counting backends")
            .get(0)
    }

    /// Runs `/usr/bin/psql -X -h 127.0.0.1 -p PORT ARGS...` against the proxy.
    pub async fn psql(&self, args: &[&str]) -> Output {
        let port = self.addr().port().to_string();
        tokio::process::Command::new("/usr/bin/psql")
            .args(["-X", "-h", "127.0.0.1", "-p", &port])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGDATABASE")
            .env_remove("PGUSER")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("running psql")
    }
}

// ---------------------------------------------------------------------------------
// tokio-postgres helpers
// ---------------------------------------------------------------------------------

pub fn url(addr: SocketAddr, user: &str, db: &str) -> String {
    format!("postgres://{}@{addr}/{}", encode(user), encode(db))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn config_for(addr: SocketAddr, user: &str, db: Option<&str>) -> Config {
    let mut config = Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .connect_timeout(Duration::from_secs(10));
    if let Some(db) = db {
        config.dbname(db);
    }
    config
}

/// Connects with `config` and drives the connection on a task.
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects and forwards every asynchronous message (notice, notification).
pub async fn connect_with_messages(
    config: &Config,
) -> Result<(Client, mpsc::UnboundedReceiver<AsyncMessage>), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            let _ = tx.send(message);
        }
    });
    Ok((client, rx))
}

/// The first column of every row of a simple query, as text (NULL as "NULL").
pub async fn column(client: &Client, sql: &str) -> Vec<String> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some(row.get(0).unwrap_or("NULL").to_string())
            }
            _ => None,
        })
        .collect()
}

/// The single value of a one-row, one-column simple query.
pub async fn value(client: &Client, sql: &str) -> String {
    let rows = column(client, sql).await;
    assert_eq!(rows.len(), 1, "{sql} returned {rows:?}");
    rows.into_iter().next().unwrap()
}

/// `SELECT name FROM items ORDER BY id`, unqualified: what the search_path shows.
pub async fn items(client: &Client) -> Vec<String> {
    column(client, "SELECT name FROM items ORDER BY id").await
}

/// SQLSTATE and message of an error, for assertion messages.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Calls `attempt` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = attempt().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `127.0.0.1:PORT` where nothing listens (a port just bound and released).
pub fn closed_port_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
    let addr = listener.local_addr().expect("probe port");
    drop(listener);
    addr.to_string()
}

// ---------------------------------------------------------------------------------
// Raw protocol
// ---------------------------------------------------------------------------------

pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// A startup message: length, code (protocol version), then `key\0value\0...` and
/// the terminating `\0`.
pub fn startup_packet(code: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    packet(code, &body)
}

/// A length-prefixed startup-phase packet with `code` and an arbitrary body.
pub fn packet(code: u32, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A tagged frontend message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query message.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// One backend message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// Fields of an ErrorResponse or NoticeResponse.
    pub fn error(&self) -> ErrorFields {
        assert!(
            self.tag == b'E' || self.tag == b'N',
            "expected an ErrorResponse, got {:?}",
            self
        );
        ErrorFields::parse(&self.body)
    }

    /// Column values of a DataRow (NULL as None).
    pub fn data_row(&self) -> Vec<Option<String>> {
        assert_eq!(self.tag, b'D', "expected a DataRow, got {self:?}");
        let b = &self.body;
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        let mut at = 2;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes(b[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                values.push(None);
            } else {
                let len = len as usize;
                values.push(Some(String::from_utf8_lossy(&b[at..at + len]).into_owned()));
                at += len;
            }
        }
        values
    }
}

/// The fields of an ErrorResponse that tests look at.
#[derive(Debug, Clone, Default)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut fields = ErrorFields::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let text = String::from_utf8_lossy(&tail[..end]).into_owned();
            match kind {
                b'S' => fields.severity = text,
                b'C' => fields.code = text,
                b'M' => fields.message = text,
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or_default();
        }
        fields
    }
}

/// A client speaking raw bytes to the proxy. Every read is bounded by `timeout`.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub timeout: Duration,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connecting to proxy"),
            buf: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Connects and completes a 3.0 startup with `params` (user, database, …); returns
    /// the client and the startup replies up to ReadyForQuery.
    pub async fn login(addr: SocketAddr, params: &[(&str, &str)]) -> (Raw, Vec<Msg>) {
        let mut raw = Raw::connect(addr).await;
        raw.send(&startup_packet(PROTOCOL_3_0, params)).await;
        let replies = raw.read_until_ready().await;
        (raw, replies)
    }

    /// `login` as user `app` to tenant acme, the replies dropped.
    pub async fn acme(addr: SocketAddr) -> Raw {
        Raw::login(addr, &[("user", "app"), ("database", "acme")])
            .await
            .0
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("sending to proxy");
    }

    /// Reads more bytes; false at end of stream (or a reset connection).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(self.timeout, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no answer from the proxy within {:?}", self.timeout));
        match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// One untagged byte (the answer to SSLRequest / GSSENCRequest).
    pub async fn read_byte(&mut self) -> Option<u8> {
        if self.buf.is_empty() && !self.fill().await {
            return None;
        }
        Some(self.buf.remove(0))
    }

    /// The next message, or None once the proxy closed the connection.
    pub async fn read_message(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..len + 1].to_vec();
                    self.buf.drain(..len + 1);
                    return Some(Msg { tag, body });
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Messages up to and including ReadyForQuery (panics if the proxy closes first).
    pub async fn read_until_ready(&mut self) -> Vec<Msg> {
        let mut messages = Vec::new();
        loop {
            let msg = self.read_message().await.unwrap_or_else(|| {
                panic!("connection closed before ReadyForQuery; got {messages:?}")
            });
            let done = msg.tag == b'Z';
            messages.push(msg);
            if done {
                return messages;
            }
        }
    }

    /// Every message until the proxy closes the connection.
    pub async fn read_to_end(&mut self) -> Vec<Msg> {
        let mut messages = Vec::new();
        while let Some(msg) = self.read_message().await {
            messages.push(msg);
        }
        messages
    }

    /// The ErrorResponse the proxy ends the connection with (panics on anything else).
    pub async fn expect_fatal(&mut self) -> ErrorFields {
        let messages = self.read_to_end().await;
        match messages.as_slice() {
            [.., last] if last.tag == b'E' => last.error(),
            _ => panic!("expected an ErrorResponse and a close, got {messages:?}"),
        }
    }
}
