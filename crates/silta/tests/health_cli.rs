//! `silta health`: the container HEALTHCHECK's probe of the admin port's `/readyz`.

use std::net::SocketAddr;
use std::process::Output;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_silta");

/// A one-route HTTP responder: every request is answered with `status` and `body`. Returns
/// its address; it serves until the test's runtime ends.
async fn responder(status: &'static str, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The request's head; one read holds it (a few dozen bytes).
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                assert!(head.starts_with("GET /readyz HTTP/1.1\r\n"), "{head}");
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// Runs `silta health ARGS` off the runtime, which keeps serving the responder meanwhile.
async fn health(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("health")
            .args(args)
            .env_remove("SILTA_CONFIG")
            .env_remove("SILTA_ADMIN__LISTEN")
            .output()
            .expect("run silta health")
    })
    .await
    .expect("the command's thread")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn ready_exits_zero_with_one_line() {
    let addr = responder("200 OK", "ready\n").await;
    let url = format!("http://{addr}/readyz");
    let out = health(&["--url", &url]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("ready: {url}: 200 ready\n"));
}

#[tokio::test]
async fn not_ready_exits_one_naming_the_reason() {
    let addr = responder("503 Service Unavailable", "store unavailable\n").await;
    let url = format!("http://{addr}/readyz");
    let out = health(&["--url", &url]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("not ready: {url}: 503 store unavailable\n")
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn an_unreachable_port_exits_one() {
    // A port just released: nothing listens there.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("address")
    };
    let url = format!("http://{addr}/readyz");
    let out = health(&["--url", &url, "--timeout", "2"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!("unreachable: {url}: cannot connect")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let url = format!("http://{addr}/readyz");
    let out = health(&["--url", &url, "--timeout", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("unreachable: {url}: no answer within 1000 ms\n")
    );
}

#[tokio::test]
async fn the_port_comes_from_admin_listen_in_the_configuration() {
    let addr = responder("200 OK", "ready\n").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("silta.toml");
    // An unspecified address is probed on loopback.
    std::fs::write(
        &config,
        format!("[admin]\nlisten = \"0.0.0.0:{}\"\n", addr.port()),
    )
    .expect("write config");
    let out = health(&["--config", config.to_str().expect("utf-8 path")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "ready: http://127.0.0.1:{}/readyz: 200 ready\n",
            addr.port()
        )
    );

    // Without admin.listen there is nothing to ask.
    std::fs::write(&config, "").expect("write config");
    let out = health(&["--config", config.to_str().expect("utf-8 path")]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("admin.listen is not set"),
        "{}",
        text(&out.stderr)
    );
}

/// The real gateway under a stand-in for systemd: `READY=1` arrives on `$NOTIFY_SOCKET` once it
/// serves (and `silta health` then finds it ready), `STOPPING=1` when SIGTERM starts the drain.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tells_systemd_when_it_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run silta");
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    run(&["dev-pki", "--out", "pki"]);
    run(&["keys", "generate", "--out", "pki/master.key"]);
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        dir.join("silta.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [store]\nurl = \"sqlite://silta.db\"\n[tls]\ncert = \"pki/server.pem\"\n\
             key = \"pki/server.key\"\nclient_ca = \"pki/ca.pem\"\n[secrets]\n\
             master_secret_file = \"pki/master.key\"\n[[statutory_recipients]]\n\
             org = \"helsinki-social\"\n\
             hpke_public_key_file = \"pki/helsinki-social.hpke-public.key\"\n"
        ),
    )
    .expect("config");
    let socket = dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&socket).expect("bind the notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "silta.toml"])
        .current_dir(dir)
        .env_remove("SILTA_CONFIG")
        .env_remove("SILTA_MASTER_SECRET")
        .env("NOTIFY_SOCKET", &socket)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).expect("log file"))
        .spawn()
        .expect("spawn silta serve");
    let log = || std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();

    let mut buf = [0u8; 512];
    let n = systemd.recv(&mut buf).unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("no READY=1 ({e}); log:\n{}", log())
    });
    let ready = text(&buf[..n]);
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=serving gRPC on 127.0.0.1:{port}")),
        "{ready}"
    );

    // Ready for systemd means ready for the HEALTHCHECK too.
    let out = health(&["--config", dir.join("silta.toml").to_str().expect("utf-8")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let n = systemd.recv(&mut buf).expect("STOPPING=1");
    assert!(
        text(&buf[..n]).starts_with("STOPPING=1"),
        "{}",
        text(&buf[..n])
    );
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}; log:\n{}", log());
}

/// The shipped configurations parse and name the admin port the image's HEALTHCHECK and the
/// systemd install steps ask (whatever answers on this machine's port 9464, if anything).
#[tokio::test]
async fn the_shipped_configurations_point_health_at_their_admin_port() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    for config in ["docker/silta.toml", "systemd/silta.toml"] {
        let path = deploy.join(config);
        let out = health(&[
            "--config",
            path.to_str().expect("utf-8 path"),
            "--timeout",
            "1",
        ])
        .await;
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            said.contains(": http://127.0.0.1:9464/readyz: "),
            "{config}: {said}"
        );
    }
}
