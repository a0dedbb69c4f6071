//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): one datagram of `KEY=VALUE`
//! lines to the socket named by `$NOTIFY_SOCKET`. Without that variable (not under systemd, or
//! another `Type=`) nothing is sent.

use std::ffi::OsStr;

/// Sends `state` (e.g. `READY=1`) to `$NOTIFY_SOCKET`. `Ok(false)`: no socket to tell.
pub(crate) fn notify(state: &str) -> std::io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notification socket `socket`: a path, or `@name` for a Linux abstract
/// socket.
#[cfg(unix)]
pub(crate) fn notify_to(socket: &OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let sender = UnixDatagram::unbound()?;
    let name = socket.as_bytes();
    let sent = match name.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            sender.send_to_addr(state.as_bytes(), &addr)?
        }
        _ => sender.send_to(state.as_bytes(), socket)?,
    };
    if sent != state.len() {
        return Err(std::io::Error::other("the notification was cut short"));
    }
    Ok(())
}

/// Not a Unix system: there is no systemd to tell.
#[cfg(not(unix))]
pub(crate) fn notify_to(_socket: &OsStr, _state: &str) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn the_state_arrives_as_one_datagram() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        notify_to(path.as_os_str(), "READY=1\nSTATUS=serving").expect("send");
        notify_to(path.as_os_str(), "STOPPING=1").expect("send");
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).expect("receive");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        let n = receiver.recv(&mut buf).expect("receive");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_socket_is_reached_by_its_at_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("silta-notify-test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let receiver = UnixDatagram::bind_addr(&addr).expect("bind");
        notify_to(OsStr::new(&format!("@{name}")), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("receive");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("absent.sock");
        assert!(notify_to(path.as_os_str(), "READY=1").is_err());
    }
}
