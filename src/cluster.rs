//! Throwaway real PostgreSQL clusters for `pgtenant demo` and the integration tests.
//!
//! Blocking std code: callers in async contexts should use `spawn_blocking`.
//! Each cluster lives in its own data dir, listens on 127.0.0.1 only, trusts every
//! local connection (unless `ClusterOptions::hba` says otherwise) and has the
//! superuser `postgres`. When running as root, the server runs as the OS user
//! `postgres` (created if missing) because PostgreSQL refuses to run as root.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::{env, fs, thread};

use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found (looked in: {0}); \
         install them with `apt-get install postgresql` (Debian/Ubuntu) \
         or set PG_BIN to the directory that holds them"
    )]
    NoBinaries(String),
    #[error("invalid cluster name {0:?}: use letters, digits, '-' and '_' only")]
    InvalidName(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// initdb failed: message plus its output.
    #[error("{0}")]
    Init(String),
    #[error("could not set up the OS user `postgres` to run the server as root: {0}")]
    User(String),
    /// The server did not start: pg_ctl's output and the tail of server.log.
    #[error("{0}")]
    Start(String),
    /// psql failed (connection or SQL error): includes psql's stderr.
    #[error("{0}")]
    Psql(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |e| ClusterError::Io(what, e)
}

/// Directory holding the PostgreSQL server binaries.
#[derive(Debug, Clone)]
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    /// Finds server binaries: env PG_BIN, then `initdb` on PATH, then `pg_config --bindir`,
    /// then the highest /usr/lib/postgresql/*/bin. Must contain initdb, pg_ctl and postgres.
    pub fn find() -> Result<PgBin, ClusterError> {
        // An explicit PG_BIN is authoritative: silently using another install would confuse.
        if let Some(dir) = env::var_os("PG_BIN").filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            return match has_server(&dir) {
                true => Ok(PgBin { dir }),
                false => Err(ClusterError::NoBinaries(format!(
                    "PG_BIN={}",
                    dir.display()
                ))),
            };
        }
        let mut dirs = Vec::new();
        // Resolve symlinks: /usr/local/bin/initdb may point into the real bin dir.
        if let Some(p) = find_on_path("initdb").and_then(|p| fs::canonicalize(p).ok()) {
            dirs.extend(p.parent().map(Path::to_path_buf));
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let text = String::from_utf8_lossy(&out.stdout);
            dirs.extend(out.status.success().then(|| PathBuf::from(text.trim())));
        }
        let entries = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten();
        let version = |e: &fs::DirEntry| e.file_name().to_str()?.parse::<u32>().ok();
        let mut versioned: Vec<_> = entries
            .filter_map(|e| Some((version(&e)?, e.path())))
            .collect();
        versioned.sort();
        dirs.extend(versioned.into_iter().rev().map(|(_, p)| p.join("bin")));
        match dirs.into_iter().find(|d| has_server(d)) {
            Some(dir) => Ok(PgBin { dir }),
            None => Err(ClusterError::NoBinaries(SEARCHED.into())),
        }
    }

    /// `dir/name`; client tools (psql, pgbench) fall back to PATH as they are often
    /// packaged apart from the server.
    pub fn tool(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        let client = name == "psql" || name == "pgbench";
        match client && !p.is_file() {
            true => find_on_path(name).unwrap_or(p),
            false => p,
        }
    }
}

const SEARCHED: &str =
    "PG_BIN (unset), initdb on PATH, pg_config --bindir, /usr/lib/postgresql/*/bin";
const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

fn has_server(dir: &Path) -> bool {
    SERVER_TOOLS.iter().all(|t| dir.join(t).is_file())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra pg_hba.conf lines placed BEFORE the default trust lines (first match wins).
    pub hba: Vec<String>,
    /// Extra postgresql.conf settings, appended last so they override the defaults.
    /// Values are single-quoted for you unless already quoted.
    pub settings: Vec<(String, String)>,
}

impl ClusterOptions {
    /// `wal_level = logical`: the cluster can publish to and subscribe from others
    /// (what copying tenant moves use).
    pub fn logical() -> ClusterOptions {
        ClusterOptions::default().setting("wal_level", "logical")
    }

    /// Adds one postgresql.conf setting.
    pub fn setting(mut self, name: &str, value: &str) -> ClusterOptions {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// A throwaway cluster. Dropping it kills the server (and deletes its temp dir if it has one).
pub struct Cluster {
    bin: PgBin,
    name: String,
    data_dir: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>, // uid/gid to run server tools as (Some when we are root)
    running: bool,
    temp: Option<tempfile::TempDir>, // fields drop after Drop::drop, i.e. after the server stops
}

impl Cluster {
    pub fn start(bin: &PgBin, name: &str) -> Result<Cluster, ClusterError> {
        Self::start_with(bin, name, ClusterOptions::default())
    }

    /// Starts a cluster in a fresh temp dir that is deleted on drop.
    pub fn start_with(
        bin: &PgBin,
        name: &str,
        opts: ClusterOptions,
    ) -> Result<Cluster, ClusterError> {
        let temp = tempfile::Builder::new().prefix("pgtenant-pg-").tempdir();
        let temp = temp.map_err(io_err("creating temp dir"))?;
        let mut c = Self::init(bin, temp.path(), name, &opts)?;
        c.temp = Some(temp);
        c.launch_with_retries()?;
        Ok(c)
    }

    /// Like `start_with` but the data dir is `parent/name`; neither is deleted on drop.
    pub fn start_in(
        bin: &PgBin,
        parent: &Path,
        name: &str,
        opts: ClusterOptions,
    ) -> Result<Cluster, ClusterError> {
        let mut c = Self::init(bin, parent, name, &opts)?;
        c.launch_with_retries()?;
        Ok(c)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join("server.log")
    }
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Runs SQL via `psql -c` as superuser over TCP; returns trimmed stdout.
    /// Several statements in one call run as ONE implicit transaction, so e.g.
    /// `CREATE DATABASE` must be sent alone (or use `psql_file`).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        let out = self.psql_cmd(database).arg("-c").arg(sql).output();
        self.psql_result(database, out.map_err(io_err("running psql"))?)
    }

    /// Runs SQL piped through stdin (`-f -`), statement by statement; for big seeds.
    pub fn psql_file(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = self.psql_cmd(database);
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(io_err("running psql"))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let sql = sql.to_owned();
        // Write from a thread: psql's output could fill its pipe while we still write.
        let writer = thread::spawn(move || stdin.write_all(sql.as_bytes()));
        let out = child.wait_with_output().map_err(io_err("running psql"))?;
        let _ = writer.join(); // a write error (EPIPE) shows up as psql's failure below
        self.psql_result(database, out)
    }

    /// `pg_ctl stop -m fast`; idempotent.
    pub fn stop(&mut self) {
        self.shutdown("fast");
    }

    /// `pg_ctl stop -m immediate`: like a host crash (no checkpoint); `start_again` recovers.
    pub fn kill(&mut self) {
        self.shutdown("immediate");
    }

    /// Restarts on the same port and data dir (fails if the port was taken meanwhile).
    pub fn start_again(&mut self) -> Result<(), ClusterError> {
        match self.running {
            true => Ok(()),
            false => self.launch(),
        }
    }

    fn init(bin: &PgBin, parent: &Path, name: &str, opts: &ClusterOptions) -> Res<Cluster> {
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if name.is_empty() || !name.chars().all(valid) {
            return Err(ClusterError::InvalidName(name.into()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let owner = if root { Some(postgres_user()?) } else { None };
        let data_dir = parent.join(name);
        fs::create_dir(&data_dir).map_err(io_err(format!("creating {}", data_dir.display())))?;
        let mode = |m| fs::Permissions::from_mode(m);
        fs::set_permissions(&data_dir, mode(0o700)).map_err(io_err("chmod data dir"))?;
        if let Some((uid, gid)) = owner {
            let chown = std::os::unix::fs::chown(&data_dir, Some(uid), Some(gid));
            chown.map_err(io_err("chown data dir"))?;
            // The server user must be able to traverse the parent (tempfile makes it 0700).
            let meta = fs::metadata(parent).map_err(io_err("stat parent dir"))?;
            let m = meta.permissions().mode();
            if m & 0o001 == 0 {
                fs::set_permissions(parent, mode(m | 0o001)).map_err(io_err("chmod parent"))?;
            }
        }
        let (bin, name) = (bin.clone(), name.to_string());
        let c = Cluster {
            bin,
            name,
            data_dir,
            port: 0,
            owner,
            running: false,
            temp: None,
        };
        let mut initdb = c.server_cmd("initdb");
        initdb.arg("-D").arg(&c.data_dir);
        initdb.args("-U postgres --auth=trust -E UTF8 --locale=C --no-sync".split(' '));
        debug!(cluster = %c.name, dir = %c.data_dir.display(), "running initdb");
        let out = initdb.output().map_err(io_err("running initdb"))?;
        if !out.status.success() {
            let (name, text) = (&c.name, output_text(&out));
            let msg = format!("initdb for cluster {name} failed ({}): {text}", out.status);
            return Err(ClusterError::Init(msg));
        }

        let dir = c.data_dir.display().to_string();
        // synchronous_commit stays on: with fsync=off it costs only a write(), and it keeps
        // committed rows across kill() (-m immediate would drop unwritten WAL buffers).
        let defaults = [
            ("listen_addresses", "127.0.0.1"),
            ("unix_socket_directories", &dir), // no /var/run/postgresql needed
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "200"),
            ("shared_buffers", "32MB"),
            ("logging_collector", "off"),
        ];
        let extra = opts.settings.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let mut conf = String::from("\n# added by pgtenant cluster.rs\n");
        for (k, v) in defaults.into_iter().chain(extra) {
            conf.push_str(&format!("{k} = {}\n", quote(v)));
        }
        append(&c.data_dir.join("postgresql.conf"), &conf)?;
        let mut hba = opts.hba.join("\n");
        hba.push_str("\nlocal all all trust\nhost all all 127.0.0.1/32 trust\n");
        hba.push_str("host all all ::1/128 trust\n");
        // Truncating (not recreating) keeps the file owned by the server user.
        fs::write(c.data_dir.join("pg_hba.conf"), hba).map_err(io_err("writing pg_hba.conf"))?;
        Ok(c)
    }

    /// Free ports are only probed, so a parallel test may grab ours: retry on bind errors.
    fn launch_with_retries(&mut self) -> Res<()> {
        let mut attempt = 1;
        loop {
            self.port = free_port()?;
            // Later lines win in postgresql.conf, so appending re-targets the port.
            let conf = self.data_dir.join("postgresql.conf");
            append(&conf, &format!("port = {}\n", self.port))?;
            match self.launch() {
                Err(ClusterError::Start(m)) if attempt < 5 && m.contains("already in use") => {
                    debug!(cluster = %self.name, port = self.port, attempt, "port taken, retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn launch(&mut self) -> Res<()> {
        let log = self.log_file();
        let log_start = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        debug!(cluster = %self.name, port = self.port, dir = %self.data_dir.display(), "starting");
        // pg_ctl -l redirects the postmaster's output, so output() does not wait on it.
        let res = self.pg_ctl(&["-w", "-t", "60", "-l", &log.to_string_lossy(), "start"]);
        if matches!(&res, Ok(o) if o.status.success()) {
            self.running = true;
            return Ok(());
        }
        // pg_ctl may time out while the postmaster lives on: make sure it is gone.
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        let detail = match res {
            Ok(o) => format!("pg_ctl {}: {}", o.status, output_text(&o)),
            Err(e) => format!("could not run pg_ctl: {e}"),
        };
        let tail = tail(&log, log_start, 30);
        let (name, port, log) = (&self.name, self.port, log.display());
        let msg =
            format!("cluster {name} did not start on port {port}: {detail}\n--- {log} ---\n{tail}");
        Err(ClusterError::Start(msg))
    }

    fn shutdown(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        debug!(cluster = %self.name, port = self.port, mode, "stopping");
        match self.pg_ctl(&["-m", mode, "-w", "stop"]) {
            Ok(o) if o.status.success() => {}
            Ok(o) => debug!(cluster = %self.name, out = %output_text(&o), "pg_ctl stop failed"),
            Err(e) => debug!(cluster = %self.name, error = %e, "could not run pg_ctl stop"),
        }
        self.running = false;
    }

    fn pg_ctl(&self, args: &[&str]) -> std::io::Result<Output> {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args(args).output()
    }

    /// A server tool run as the server user (when root), from a dir that user can enter.
    fn server_cmd(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.tool(tool));
        let cwd = self.data_dir.parent().unwrap_or(Path::new("/"));
        cmd.current_dir(cwd).stdin(Stdio::null());
        // English messages, so start errors can be recognised (see launch_with_retries).
        cmd.env_remove("PGDATA").env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid); // std also drops supplementary groups when root
        }
        cmd
    }

    fn psql_cmd(&self, database: &str) -> Command {
        let mut cmd = Command::new(self.bin.tool("psql"));
        cmd.args("-X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres".split(' '));
        cmd.args(["-p", &self.port.to_string(), "-d", database]);
        cmd.env("PGCONNECT_TIMEOUT", "10").stdin(Stdio::null());
        cmd
    }

    fn psql_result(&self, database: &str, out: Output) -> Res<String> {
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        let (name, port, err) = (&self.name, self.port, String::from_utf8_lossy(&out.stderr));
        let msg = format!(
            "psql on {name} (port {port}, db {database}): {}",
            err.trim()
        );
        Err(ClusterError::Psql(msg))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Immediate: the data is thrown away anyway. `temp` is removed right after this.
        self.kill();
    }
}

type Res<T> = Result<T, ClusterError>;

/// postgresql.conf value: quoted unless the caller already quoted it.
fn quote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        return v.to_string();
    }
    format!("'{}'", v.replace('\'', "''"))
}

fn output_text(out: &Output) -> String {
    let o = String::from_utf8_lossy(&out.stdout);
    let e = String::from_utf8_lossy(&out.stderr);
    format!("{}\n{}", o.trim(), e.trim()).trim().to_string()
}

fn append(path: &Path, text: &str) -> Res<()> {
    let what = || format!("appending to {}", path.display());
    let file = fs::OpenOptions::new().append(true).open(path);
    file.map_err(io_err(what()))?
        .write_all(text.as_bytes())
        .map_err(io_err(what()))
}

fn free_port() -> Res<u16> {
    let probe = TcpListener::bind("127.0.0.1:0").map_err(io_err("probing a free port"))?;
    Ok(probe
        .local_addr()
        .map_err(io_err("probing a free port"))?
        .port())
}

/// Last `lines` lines of `path` written after byte `from` (this start attempt only).
fn tail(path: &Path, from: u64, lines: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_string(&mut s);
        }
    }
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The lock that keeps processes from running useradd at the same time.
pub const USERADD_LOCK: &str = "pgtenant-useradd.lock";

/// uid/gid of OS user `postgres`, creating the user if needed (checked once per
/// process). Only root gets here: PostgreSQL refuses to run as root.
fn postgres_user() -> Res<(u32, u32)> {
    static CACHE: Mutex<Option<(u32, u32)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.is_none() {
        *cache = id("-u").zip(id("-g"));
    }
    if cache.is_none() {
        *cache = Some(create_postgres_user()?);
    }
    Ok(cache.expect("set above"))
}

fn id(flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().ok().filter(|_| out.status.success())
}

/// `useradd --system postgres`, under a lock across processes (test binaries run in
/// parallel): concurrent useradd runs clobber each other's /etc/passwd, leaving uids
/// that no longer exist. The lock file is removed once the user exists; a process
/// still waiting on it then finds the user and creates nothing.
fn create_postgres_user() -> Res<(u32, u32)> {
    let path = env::temp_dir().join(USERADD_LOCK);
    let lock = fs::File::create(&path).map_err(io_err("creating the useradd lock file"))?;
    // SAFETY: plain syscall on an fd we own; the lock is released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err("locking the useradd lock file")(
            std::io::Error::last_os_error(),
        ));
    }
    if id("-u").is_none() {
        debug!("creating OS user postgres");
        let mut cmd = Command::new("useradd");
        cmd.args("--system --no-create-home --shell /usr/sbin/nologin postgres".split(' '));
        let out = cmd.output().map_err(io_err("running useradd"))?;
        // A non-cooperating creator may have won the race: only fail if the user is missing.
        if !out.status.success() && id("-u").is_none() {
            return Err(ClusterError::User(format!(
                "useradd: {}",
                output_text(&out)
            )));
        }
    }
    let ids = id("-u").zip(id("-g"));
    let ids = ids.ok_or_else(|| ClusterError::User("`id postgres` fails after useradd".into()))?;
    let _ = fs::remove_file(&path);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let bin = PgBin::find().unwrap();
        let mut c = Cluster::start(&bin, "life").unwrap();
        assert_eq!(c.psql("postgres", "select 1").unwrap(), "1");
        c.psql("postgres", "create database app").unwrap();
        let seed = "create table t(id int, v text); insert into t values (1,'a'),(2,'b')";
        c.psql("app", seed).unwrap();
        let q = "select string_agg(v, ',' order by id) from t";
        assert_eq!(c.psql("app", q).unwrap(), "a,b");
        let more = "insert into t values (3,'c');\nselect count(*) from t;\n";
        assert_eq!(c.psql_file("app", more).unwrap(), "3");

        c.kill();
        assert!(c.psql("app", "select 1").is_err());
        c.kill(); // idempotent
        c.start_again().unwrap();
        assert_eq!(c.psql("app", "select count(*) from t").unwrap(), "3");
        let err = c
            .psql("app", "select * from missing")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");

        let dir = c.data_dir().to_path_buf();
        c.stop();
        c.stop();
        drop(c);
        assert!(!dir.exists());
    }

    #[test]
    fn options_and_start_in() {
        let bin = PgBin::find().unwrap();
        let parent = tempfile::tempdir().unwrap();
        let opts = ClusterOptions {
            hba: vec!["host all scram_user 127.0.0.1/32 scram-sha-256".into()],
            settings: vec![("max_connections".into(), "50".into())],
        };
        let c = Cluster::start_in(&bin, parent.path(), "a", opts).unwrap();
        assert_eq!(c.data_dir(), parent.path().join("a"));
        assert_eq!(c.psql("postgres", "show max_connections").unwrap(), "50");
        c.psql("postgres", "create role scram_user login password 'pw'")
            .unwrap();
        // No password given, so scram auth must reject the connection.
        let mut psql = Command::new(bin.tool("psql"));
        psql.args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &c.port().to_string(),
            "-U",
            "scram_user",
        ]);
        let out = psql
            .args(["-d", "postgres", "-w", "-c", "select 1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("password"));
        drop(c);
        assert!(
            parent.path().join("a").exists(),
            "start_in must not delete the caller's dirs"
        );
    }

    #[test]
    fn retries_when_port_taken() {
        let bin = PgBin::find().unwrap();
        let parent = tempfile::tempdir().unwrap();
        let mut c = Cluster::init(&bin, parent.path(), "busy", &ClusterOptions::default()).unwrap();
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        c.port = squatter.local_addr().unwrap().port();
        append(
            &c.data_dir.join("postgresql.conf"),
            &format!("port = {}\n", c.port),
        )
        .unwrap();
        let err = c.launch().unwrap_err().to_string();
        assert!(err.contains("already in use"), "{err}");
        c.launch_with_retries().unwrap();
        assert_eq!(c.psql("postgres", "select 2").unwrap(), "2");
    }

    #[test]
    fn parallel_clusters() {
        let bin = PgBin::find().unwrap();
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let bin = bin.clone();
                thread::spawn(move || {
                    let c = Cluster::start(&bin, &format!("par{i}")).unwrap();
                    assert_eq!(
                        c.psql("postgres", &format!("select {i}")).unwrap(),
                        i.to_string()
                    );
                    c.port()
                })
            })
            .collect();
        let mut ports: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 3);
    }

    #[test]
    fn errors() {
        let bin = PgBin::find().unwrap();
        let bad = Cluster::start(&bin, "../x");
        assert!(matches!(bad, Err(ClusterError::InvalidName(_))));
        let msg = ClusterError::NoBinaries("x".into()).to_string();
        assert!(msg.contains("apt-get install postgresql") && msg.contains("PG_BIN"));
    }
}
