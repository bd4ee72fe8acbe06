//! The pgtenant binary run as a process of its own, so the figures in /proc (memory,
//! system calls, wakeups) are the proxy's alone and a crash is its own.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{closed_port_address, config_for, connect, eventually, Env};

/// `pgtenant serve` in transaction mode on `env`'s registry, on a port of its own.
pub struct Proxy {
    pub child: Child,
    pub port: u16,
}

impl Proxy {
    /// Starts it; `extra` is TOML that goes under `[proxy]` (and may open other tables,
    /// e.g. `"[pool]\npool_size = 2"`).
    pub async fn start(env: &Env, extra: &str) -> Proxy {
        let port = closed_port_address()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let config = env.dir.path().join(format!("proxy-{port}.toml"));
        std::fs::write(
            &config,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:{port}\"\npool_mode = \"transaction\"\n{extra}\n[registry]\nfile = {:?}\n",
                env.registry_path.display().to_string()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("PGTENANT_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting pgtenant");
        let proxy = Proxy { child, port };
        let up = eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(up.is_some(), "pgtenant did not start listening");
        proxy
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A numeric field of /proc/PID/`file` (a trailing " kB" dropped).
    pub fn proc_field(&self, file: &str, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/pid/{file}"))
    }

    /// write(2)/writev(2) calls made so far (socket sends through the VFS).
    pub fn writes(&self) -> u64 {
        self.proc_field("io", "syscw:")
    }

    /// Resident memory now.
    pub fn rss_kib(&self) -> u64 {
        self.proc_field("status", "VmRSS:")
    }

    /// Peak resident memory since the start or the last `reset_peak`.
    pub fn peak_kib(&self) -> u64 {
        self.proc_field("status", "VmHWM:")
    }

    /// Sets the peak (VmHWM) back to the current RSS (`clear_refs` 5, Linux 4.0+);
    /// false where the kernel does not allow it, and the peak then counts from the
    /// start.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").is_ok()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        connect(&config_for(self.addr(), "app", Some(db)))
            .await
            .expect("connect through pgtenant")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
