//! `silta keys`: a statutory recipient's HPKE key pair; `keys show` and `keys promote` on a
//! store that is not there, into a closed pipe, and among unrelated `SILTA_…` variables.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_silta");

#[test]
fn recipient_keypair_writes_an_owner_only_private_key_and_prints_a_working_config_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("hpke");
    let run = || {
        Command::new(BIN)
            .args([
                "keys",
                "recipient-keypair",
                "--org",
                "helsinki-social",
                "--out",
            ])
            .arg(&out)
            .output()
            .expect("run silta")
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    let printed = String::from_utf8(first.stdout).expect("utf-8");
    let private = std::fs::read_to_string(out.join("hpke-private.key")).expect("private key");
    let public = std::fs::read_to_string(out.join("hpke-public.key")).expect("public key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("hpke-private.key"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The printed entry is configuration silta accepts, with the public key only.
    assert!(!printed.contains(private.trim()));
    use figment::providers::Format as _;
    let config: silta_server::Config =
        figment::Figment::from(figment::providers::Toml::string(&printed))
            .extract()
            .expect("a config entry");
    let [entry] = config.statutory_recipients.as_slice() else {
        panic!("one entry: {printed}");
    };
    assert_eq!(entry.org, "helsinki-social");
    assert_eq!(entry.hpke_public_key.as_deref(), Some(public.trim()));
    let key = silta_core::sealed::RecipientKey::from_base64(public.trim()).expect("a key");

    // The pair works: what is sealed to the public key opens with the private one.
    let hetu = silta_core::Hetu::parse(
        "150385-9345",
        silta_core::HetuRules {
            allow_temporary: true,
        },
    )
    .expect("synthetic code");
    let org = silta_core::OrgId::new("helsinki-social").expect("org");
    let sealed = silta_core::sealed::seal(&hetu, &key, "f", &org, "a").expect("sealed");
    let opened =
        silta_core::sealed::open(&private, &sealed, "f", "helsinki-social", "a").expect("opens");
    assert_eq!(opened.as_str(), "150385-9345");

    // Never overwritten.
    let again = run();
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read_to_string(out.join("hpke-private.key")).expect("private key"),
        private
    );
}

/// A folder with a master secret and a configuration naming `sqlite://<db>`; the store is
/// made (by `silta db migrate`) only when `create` is set.
fn keys_setup(db: &str, create: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let ok = |out: Output| assert!(out.status.success(), "{out:?}");
    ok(silta(
        dir.path(),
        &["keys", "generate", "--out", "master.key"],
    ));
    std::fs::write(
        dir.path().join("silta.toml"),
        format!(
            "[store]\nurl = \"sqlite://{db}\"\n[secrets]\nmaster_secret_file = \"master.key\"\n"
        ),
    )
    .expect("config");
    if create {
        ok(silta(
            dir.path(),
            &["db", "migrate", "--url", &format!("sqlite://{db}")],
        ));
    }
    dir
}

fn silta(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("SILTA_CONFIG")
        .env_remove("SILTA_MASTER_SECRET")
        .output()
        .expect("run silta")
}

#[test]
fn read_only_key_commands_refuse_a_missing_store_naming_store_url_and_create_none() {
    // The store is silta.db; the configuration names a mistyped silta.bd.
    let dir = keys_setup("silta.bd", false);
    for args in [
        ["keys", "show", "--config", "silta.toml"].as_slice(),
        ["keys", "promote", "--config", "silta.toml"].as_slice(),
    ] {
        let out = silta(dir.path(), args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded: {out:?}");
        assert!(
            said.contains("store.url") && said.contains("silta.bd"),
            "{args:?}: {said}"
        );
        assert!(!said.contains("panicked"), "{said}");
        assert!(
            !dir.path().join("silta.bd").exists(),
            "{args:?} created the database"
        );
    }
    // Once the store exists, `keys show` reads it.
    let made = keys_setup("silta.db", true);
    let out = silta(made.path(), &["keys", "show", "--config", "silta.toml"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn keys_show_into_a_closed_pipe_ends_quietly_as_a_unix_tool_does() {
    let dir = keys_setup("silta.db", true);
    // The reading end is closed before silta starts, so its first write finds no reader,
    // as `silta keys show | head -0` would.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(BIN)
        .args(["keys", "show", "--config", "silta.toml"])
        .current_dir(dir.path())
        .env_remove("SILTA_MASTER_SECRET")
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run silta");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.is_empty(), "not quiet: {said}");
    // 128 + SIGPIPE, what a shell reports for `cat` ended by a closed pipe; never a panic (101).
    assert_eq!(out.status.code(), Some(141), "{out:?}");
}

#[test]
fn unrelated_silta_variables_are_ignored_with_a_warning_naming_them_and_never_their_value() {
    let dir = keys_setup("silta.db", true);
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["keys", "show", "--config", "silta.toml"])
            .current_dir(dir.path())
            .env_remove("SILTA_MASTER_SECRET");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().expect("run silta")
    };
    let out = run(&[("SILTA_DEBUG", "s3cret-value"), ("SILTA_HOME", "/opt/x")]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("SILTA_DEBUG") && said.contains("SILTA_HOME"),
        "{said}"
    );
    assert!(
        !said.contains("s3cret-value") && !said.contains("/opt/x"),
        "{said}"
    );

    // The documented shape is configuration: a typo in it is still an error.
    let out = run(&[("SILTA_STORE__URLL", "sqlite://silta.db")]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(said.contains("urll"), "{said}");
    // And it is read: SILTA_STORE__URL overrides the file.
    let out = run(&[("SILTA_STORE__URL", "sqlite://elsewhere.db")]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("elsewhere.db"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_show_refuses_a_postgres_database_without_a_silta_schema_and_leaves_it_empty() {
    use silta_store::testing::TempDatabase;
    let Some(db) = TempDatabase::create("keys_show_postgres_without_schema").await else {
        return;
    };
    let dir = keys_setup("unused.db", false);
    std::fs::write(
        dir.path().join("silta.toml"),
        format!(
            "[store]\nurl = \"{}\"\n[secrets]\nmaster_secret_file = \"master.key\"\n",
            db.url
        ),
    )
    .expect("config");
    let out = silta(dir.path(), &["keys", "show", "--config", "silta.toml"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        said.contains("store.url") && said.contains("no silta store"),
        "{said}"
    );
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .expect("query");
    let _ = conn.close().await;
    db.drop_now().await;
    assert!(!migrated, "keys show gave the database a schema");
}
