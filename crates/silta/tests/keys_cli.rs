//! `silta keys recipient-keypair`: a statutory recipient's HPKE key pair.

use std::process::Command;

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
