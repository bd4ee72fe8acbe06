//! The command line: `check` names each problem with its file and key, `serve`
//! re-reads the registry on SIGHUP, and `demo` serves its sample tenants with
//! instructions that can be pasted, cleans up on Ctrl-C (or keeps everything with
//! `--keep`) and says at once when its port is taken.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn pgtenant() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgtenant"))
}

#[test]
fn check_names_file_and_key_of_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("tenants.toml");
    std::fs::write(
        &registry,
        "[hosts.a]\naddress = \"127.0.0.1:5432\"\n[tenants.acme]\nhost = \"nowhere\"\ndatabase = \"erp\"\n",
    )
    .unwrap();
    let config = dir.path().join("pgtenant.toml");
    std::fs::write(
        &config,
        format!("[registry]\nfile = {:?}\n", registry.display().to_string()),
    )
    .unwrap();

    let out = pgtenant()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tenants.toml: tenants.\"acme\".host: unknown host \"nowhere\""),
        "{stderr}"
    );

    // A bad environment override is named by its variable and key.
    let out = pgtenant()
        .args(["check", "--config"])
        .arg(&config)
        .env("PGTENANT__PROXY__LISTEN", "nowhere")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr,
        "PGTENANT__PROXY__LISTEN: proxy.listen: \"nowhere\" is not an IP address and port\n"
    );

    std::fs::write(
        &registry,
        "[hosts.a]\naddress = \"127.0.0.1:5432\"\n[tenants.acme]\nhost = \"a\"\ndatabase = \"erp\"\n",
    )
    .unwrap();
    let out = pgtenant()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(1 tenant, 1 host)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_rereads_the_registry_on_sighup() {
    let env = EnvBuilder::erp().start().await;
    let port: u16 = closed_port_address()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let config = env.dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[registry]\nfile = {:?}\nwatch_interval = \"1h\"\n",
            env.registry_path.display().to_string()
        ),
    )
    .unwrap();
    let mut child = pgtenant()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = eventually(Duration::from_secs(10), || async {
        connect(&config_for(addr, "app", Some("acme"))).await.ok()
    })
    .await;
    assert!(up.is_some(), "pgtenant serve did not come up");

    // Only a SIGHUP can make it notice: the file is polled once an hour.
    env.write_registry(&format!(
        "{ERP_REGISTRY}\n[tenants.newco]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_globex\"]\nbackend_user = \"app\"\n"
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = connect(&config_for(addr, "app", Some("newco"))).await;
    assert!(before.is_err(), "newco was served before SIGHUP");
    unsafe_free_kill(child.id(), "HUP");
    let served = eventually(Duration::from_secs(5), || async {
        connect(&config_for(addr, "app", Some("newco"))).await.ok()
    })
    .await
    .expect("newco served after SIGHUP");
    assert_eq!(items(&served).await, GLOBEX_ITEMS);

    unsafe_free_kill(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");
}

/// Sends a signal with kill(1), keeping the test free of unsafe code.
fn unsafe_free_kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// A running `pgtenant demo`: the child, what it printed up to "Ctrl-C …", and the
/// rest of its output, read once it has stopped.
struct Demo {
    child: std::process::Child,
    lines: Vec<String>,
    rest: tokio::task::JoinHandle<Vec<String>>,
    port: u16,
    /// The demo's TMPDIR, to see what it leaves behind.
    tmp: tempfile::TempDir,
}

impl Demo {
    async fn start(extra: &[&str]) -> Demo {
        let port: u16 = closed_port_address()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // The clusters' server user (as root: `postgres`) must pass through it.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let mut child = pgtenant()
            .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Read what it prints until it says it is serving, then the rest to the end.
        let stdout = child.stdout.take().unwrap();
        let (first, first_rx) = tokio::sync::oneshot::channel();
        let rest = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            let mut seen = Vec::new();
            for line in lines.by_ref() {
                let done = line.contains("stops the proxy and both clusters");
                seen.push(line);
                if done {
                    break;
                }
            }
            let _ = first.send(seen);
            lines.collect::<Vec<_>>()
        });
        let lines = tokio::time::timeout(Duration::from_secs(90), first_rx)
            .await
            .expect("demo came up within 90 seconds")
            .expect("demo printed its instructions");
        Demo {
            child,
            lines,
            rest,
            port,
            tmp,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    /// The directory it named at the start.
    fn dir(&self) -> String {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix("starting two PostgreSQL clusters in "))
            .map(|rest| rest.trim_end_matches(" ...").to_string())
            .expect("demo names its directory")
    }

    /// SIGTERM, as `docker stop` sends (Ctrl-C takes the same path); what it printed
    /// while stopping.
    async fn stop(self) -> (Vec<String>, tempfile::TempDir) {
        unsafe_free_kill(self.child.id(), "TERM");
        let mut child = self.child;
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "demo exits cleanly on SIGTERM: {status}");
        (self.rest.await.unwrap(), self.tmp)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_its_tenants_and_cleans_up() {
    let demo = Demo::start(&[]).await;
    let dir = demo.dir();
    assert!(std::path::Path::new(&dir).exists());

    let addr = demo.addr();
    let acme = connect(&config_for(addr, "demo", Some("acme")))
        .await
        .unwrap();
    assert_eq!(value(&acme, "SHOW search_path").await, "tenant_acme");
    assert_eq!(
        column(&acme, "SELECT name FROM items ORDER BY id")
            .await
            .len(),
        2
    );
    let initech = connect(&config_for(addr, "demo", Some("initech")))
        .await
        .unwrap();
    assert_eq!(
        value(&initech, "SELECT current_database()").await,
        "initech"
    );
    let globex = connect(&config_for(addr, "demo.globex", Some("postgres")))
        .await
        .unwrap();
    assert_eq!(column(&globex, "SELECT name FROM items").await.len(), 3);
    drop((acme, initech, globex));

    // Every "Try" line runs as it is when pasted into a shell.
    let tries: Vec<&String> = demo
        .lines
        .iter()
        .skip_while(|l| !l.starts_with("Try"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(tries.len(), 5, "{:?}", demo.lines);
    for line in tries {
        let out = tokio::process::Command::new("bash")
            .args(["-c", line])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "pasting {line:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("row"),
            "{line:?}"
        );
    }

    let (_, tmp) = demo.stop().await;
    assert!(
        !std::path::Path::new(&dir).exists(),
        "demo left {dir} behind"
    );
    // Nothing else either (as root, the lock around creating the `postgres` user).
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "demo left {left:?} in its TMPDIR");
}

#[test]
fn demo_on_a_busy_port_says_so_before_making_clusters() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let out = pgtenant()
        .args(["demo", "--listen", &address])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "no cluster was started"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!(
        "pgtenant: {address} is already in use (another pgtenant or demo?); serve on another address with --listen, e.g. pgtenant demo --listen 127.0.0.1:"
    );
    assert!(stderr.starts_with(&prefix), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keep_leaves_clusters_and_settings_that_start_again() {
    let parent = tempfile::tempdir().unwrap();
    let kept = parent.path().join("kept");
    let demo = Demo::start(&["--keep", kept.to_str().unwrap()]).await;
    let kept = std::fs::canonicalize(&kept).unwrap();
    assert_eq!(demo.dir(), kept.display().to_string());
    let acme = connect(&config_for(demo.addr(), "demo", Some("acme")))
        .await
        .unwrap();
    assert_eq!(value(&acme, "SHOW search_path").await, "tenant_acme");
    drop(acme);
    let (said, _tmp) = demo.stop().await;
    for file in [
        "pgtenant.toml",
        "tenants.toml",
        "pg-a/PG_VERSION",
        "pg-b/PG_VERSION",
    ] {
        assert!(kept.join(file).exists(), "{file} was not kept");
    }

    // The printed instructions start the clusters again; check --connect then
    // reaches every host and tenant of the kept settings.
    let restart: Vec<&String> = said
        .iter()
        .skip_while(|l| !l.starts_with("kept in "))
        .skip(1)
        .collect();
    assert_eq!(restart.len(), 3, "{said:?}");
    for line in &restart[..2] {
        let out = tokio::process::Command::new("bash")
            .args(["-c", line])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{line}: {out:?}");
    }
    assert_eq!(
        *restart[2],
        format!(
            "  pgtenant serve --config {}",
            kept.join("pgtenant.toml").display()
        )
    );
    let mut check = pgtenant();
    check
        .args(["check", "--connect", "--config"])
        .arg(kept.join("pgtenant.toml"));
    let out = tokio::process::Command::from(check).output().await.unwrap();
    // Stop them before anything can fail, so no server outlives the test.
    for line in &restart[..2] {
        let stop = line.replace(" start", " -m immediate stop");
        let _ = tokio::process::Command::new("bash")
            .args(["-c", &stop])
            .output()
            .await;
    }
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A directory that is not empty is refused before anything is made.
    let out = pgtenant()
        .args(["demo", "--listen", "127.0.0.1:0", "--keep"])
        .arg(&kept)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "pgtenant: --keep {}: the directory is not empty; name a new or empty one\n",
            kept.display()
        )
    );
}
