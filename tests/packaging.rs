//! What ships: the example settings list every key, the release binary carries no
//! debug info (a profiling profile does), the Docker image's smoke step passes on
//! the shipped configuration, and the load tool stays quiet in a test run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pgtenant() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgtenant"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PGTENANT") {
            command.env_remove(name);
        }
    }
    command
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The names after "valid sections:" / "valid keys in [x]:" in what `check` says
/// about an unknown one: the keys the settings types accept, whatever they are.
fn valid_names(variable: &str) -> BTreeSet<String> {
    let out = pgtenant()
        .args(["check", "--config"])
        .arg(root().join("config/pgtenant.toml"))
        .current_dir(root())
        .env(variable, "1")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    let list = stderr
        .split_once("]: ")
        .or_else(|| stderr.split_once("valid sections: "))
        .unwrap_or_else(|| panic!("no list of valid names in {stderr:?}"))
        .1;
    list.trim().split(", ").map(str::to_string).collect()
}

#[test]
fn example_settings_list_every_key() {
    let example = std::fs::read_to_string(root().join("config/pgtenant.toml")).unwrap();
    let mut section = String::new();
    let mut listed: BTreeSet<(String, String)> = BTreeSet::new();
    for line in example.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, _)) = line.trim_start_matches("# ").split_once(" = ") {
            if !key.contains(' ') && !section.is_empty() {
                listed.insert((section.clone(), key.to_string()));
            }
        }
    }
    let sections = valid_names("PGTENANT__NO_SUCH_SECTION__X");
    assert!(sections.contains("proxy"), "{sections:?}");
    for section in &sections {
        let keys = valid_names(&format!(
            "PGTENANT__{}__NO_SUCH_KEY",
            section.to_ascii_uppercase()
        ));
        for key in keys {
            assert!(
                listed.contains(&(section.clone(), key.clone())),
                "config/pgtenant.toml does not list {section}.{key}"
            );
        }
    }
}

#[test]
fn release_has_no_debug_info_and_profiling_has() {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let profile = |name: &str| manifest["profile"][name].as_table().cloned();
    let release = profile("release").unwrap_or_default();
    let no_debug = |v: Option<&toml::Value>| match v {
        None => true,
        Some(toml::Value::Boolean(b)) => !b,
        Some(toml::Value::Integer(i)) => *i == 0,
        Some(toml::Value::String(s)) => s == "none",
        Some(_) => false,
    };
    assert!(no_debug(release.get("debug")), "release keeps debug info");
    let profiling = profile("profiling").expect("a profiling profile");
    assert_eq!(profiling["inherits"].as_str(), Some("release"));
    assert!(
        !no_debug(profiling.get("debug")),
        "profiling has no debug info"
    );
}

/// Dockerfile `ENV a=b c=d` of the final stage, and its `RUN pgtenant …` smoke step.
fn docker_smoke_step() -> (Vec<(String, String)>, String) {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let joined = dockerfile.replace("\\\n", " ");
    let last_stage = joined.rsplit("\nFROM ").next().unwrap();
    let mut env = Vec::new();
    let mut smoke = None;
    for line in last_stage.lines() {
        if let Some(pairs) = line.strip_prefix("ENV ") {
            for pair in pairs.split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap();
                env.push((k.to_string(), v.to_string()));
            }
        }
        if let Some(command) = line.strip_prefix("RUN pgtenant ") {
            smoke = Some(format!("pgtenant {command}"));
        }
    }
    (env, smoke.expect("the image runs pgtenant as a smoke step"))
}

#[test]
fn docker_smoke_step_passes_on_the_shipped_config() {
    let (env, smoke) = docker_smoke_step();
    assert!(smoke.contains("pgtenant --version"), "{smoke}");
    assert!(smoke.contains("pgtenant check"), "{smoke}");
    // The image's /etc/pgtenant is config/ (COPY config/ /etc/pgtenant/): run the same
    // commands, with the same environment, in a copy of it.
    let etc = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(root().join("config")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, etc.path().join(file.file_name().unwrap())).unwrap();
    }
    let here = etc.path().display().to_string();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pgtenant"));
    let script = smoke
        .replace("/etc/pgtenant", &here)
        .replace("pgtenant ", &format!("{} ", bin.display()));
    let mut command = Command::new("sh");
    command.args(["-c", &script]).current_dir(etc.path());
    for (name, _) in std::env::vars() {
        if name.starts_with("PGTENANT") {
            command.env_remove(name);
        }
    }
    for (name, value) in env {
        command.env(name, value.replace("/etc/pgtenant", &here));
    }
    let out: Output = command.output().unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("pgtenant "), "{stdout}");
    assert!(
        stdout.contains(&format!("{here}/pgtenant.toml: ok;")),
        "{stdout}"
    );
}

/// `cargo test --all-targets` runs the load tool with no arguments: it must not
/// print its usage there (it looks like a failure in the test output).
#[test]
fn load_tool_is_quiet_in_a_test_run() {
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "--bench",
            "load",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exe = text(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"compiler-artifact\"") && l.contains("\"name\":\"load\""))
        .find_map(|l| {
            let at = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            Some(l[at..].split('"').next()?.to_string())
        })
        .expect("cargo names the load tool's test binary");

    let quiet = Command::new(&exe)
        .env("CARGO", env!("CARGO"))
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert_eq!(
        (text(&quiet.stdout), text(&quiet.stderr)),
        (String::new(), String::new())
    );
    // Run by hand, it explains itself.
    let by_hand = Command::new(&exe).env_remove("CARGO").output().unwrap();
    assert!(text(&by_hand.stdout).starts_with("usage:"));
}
