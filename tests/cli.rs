//! The command line as a user runs it: the real binary, its exit codes and its output.

mod support;

use coexist::verify::{header_value, Algorithm};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coexist"));
    c.env("RUST_LOG", "warn");
    c
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn sign_prints_the_header_value_for_the_exact_bytes() {
    // WAHA's documented test vector (sha512, bare hex).
    let out = bin()
        .args(["sign", "--secret", "my-secret-key", "--algo", "sha512"])
        .arg(fixture("personal/waha-hmac-test-body.json"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        "208f8a55dde9e05519e898b10b89bf0d0b3b0fdf11fdbf09b6b90476301b98d8097c462b2b17a6ce93b6b47a136cf2e78a33a63f6752c2c1631777076153fa89"
    );
    // Meta's form, from stdin, byte for byte (escaped non-ASCII stays escaped).
    let body = br#"{"t":"caf\u00e9"}"#;
    let out = run_with_stdin(&["sign", "--secret", "s"], body);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        header_value(Algorithm::Sha256, b"s", body)
    );
}

#[test]
fn parse_prints_one_event_per_line() {
    let out = bin()
        .arg("parse")
        .arg(fixture("meta/batch_three_messages.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<coexist::Event> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events.len(),
        3,
        "every message of the batch, not only the first"
    );
    assert!(
        events.iter().all(|e| e.channel == "106540352242922"),
        "without --config: the phone_number_id"
    );
    assert!(events
        .iter()
        .all(|e| e.event_type == coexist::EventType::Message));
}

#[test]
fn parse_with_a_config_names_the_configured_channel() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[meta]\napp_secrets = [\"${SECRET}\"]\n[[channels]]\nid = \"shop\"\nkind = \"waba\"\nphone_number_id = \"106540352242922\"\n",
    )
    .unwrap();
    let out = bin()
        .env("SECRET", "s")
        .arg("parse")
        .arg(fixture("meta/text_message.json"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let event: coexist::Event = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(event.channel, "shop");
}

#[test]
fn parse_with_a_config_names_the_personal_channel_of_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[[channels]]\nid = \"phone-a\"\nkind = \"personal\"\nsession = \"other\"\nwebhook_secrets = [\"${K}\"]\n\
         [[channels]]\nid = \"phone-b\"\nkind = \"personal\"\nsession = \"default\"\nwebhook_secrets = [\"${K}\"]\n",
    )
    .unwrap();
    let out = bin()
        .env("K", "k")
        .arg("parse")
        .arg(fixture("personal/waha_message_text.json"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let event: coexist::Event = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(event.channel, "phone-b", "session \"default\" is phone-b's");
}

#[test]
fn parse_refuses_invalid_json_with_exit_2_and_the_place() {
    let out = run_with_stdin(&["parse"], b"{\n  \"entry\": [\n    oops\n");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_config_names_the_line_and_the_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[meta]\napp_secrets = [\"${S}\"]\n\n[[channels]]\nid = \"a\"\nkind = \"wabba\"\n",
    )
    .unwrap();
    let out = bin()
        .env("S", "x")
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("line 6") && err.contains("channels[0].kind") && err.contains("wabba"),
        "{err}"
    );
}

/// `replay` against a real `coexist run` (embedded queue): signs each file as its route
/// expects, prints each status code, and exits non-zero when any was refused.
#[test]
fn replay_signs_posts_and_reports_each_code() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[meta]\napp_secrets = [\"${{META}}\"]\n\
             [[channels]]\nid = \"shop\"\nkind = \"waba\"\nphone_number_id = \"106540352242922\"\n\
             [[channels]]\nid = \"phone\"\nkind = \"personal\"\nwebhook_secrets = [\"${{WAHA}}\"]\n[bot]\nmode = \"none\"\n"
        ),
    )
    .unwrap();
    let server = support::Proc(
        bin()
            .env("META", "meta-secret")
            .env("WAHA", "waha-secret")
            .args(["run", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "coexist run did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let base = format!("http://127.0.0.1:{port}");
    let replay = |url: &str, secret: &str, files: &[&str]| {
        let mut c = bin();
        c.args(["replay", "--url", url, "--secret", secret]);
        for f in files {
            c.arg(fixture(f));
        }
        c.output().unwrap()
    };

    let ok = replay(
        &format!("{base}/webhooks/meta"),
        "meta-secret",
        &["meta/text_message.json", "meta/batch_three_messages.json"],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let lines: Vec<String> = text(&ok.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{lines:?}");

    // The personal route is signed with sha512 automatically.
    let waha = replay(
        &format!("{base}/webhooks/personal/phone"),
        "waha-secret",
        &["personal/waha_message_text.json"],
    );
    assert!(waha.status.success(), "{}", text(&waha.stdout));
    assert!(text(&waha.stdout).starts_with("200 "));

    let refused = replay(
        &format!("{base}/webhooks/meta"),
        "wrong",
        &["meta/text_message.json"],
    );
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        text(&refused.stdout).starts_with("403 "),
        "{}",
        text(&refused.stdout)
    );

    server.stop(); // coexist run exits 0 on SIGTERM
}
