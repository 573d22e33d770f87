//! HTTPS with a self-signed certificate made at test time: HTTP/1.1 and HTTP/2 by ALPN.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::{tempdir, Running, APP, TOKEN};

fn connector(cert: CertificateDer<'static>, alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A signed callback for `room` (distinct rooms: the same signed request twice is a replay).
fn callback(addr: std::net::SocketAddr, room: &str) -> hyper::Request<Full<Bytes>> {
    let query = hookbus::simulate::query(APP, "Live.CallbackAfterCreateRoom", Some(TOKEN));
    hyper::Request::post(format!("https://localhost:{}/?{query}", addr.port()))
        .header("host", format!("localhost:{}", addr.port()))
        .body(Full::new(Bytes::from(format!(r#"{{"RoomId":"{room}"}}"#))))
        .unwrap()
}

#[tokio::test]
async fn https_serves_http1_and_http2() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempdir("tls");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, generated.cert.pem()).unwrap();
    std::fs::write(&key_path, generated.key_pair.serialize_pem()).unwrap();
    let flags = [
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
        "--sdk-app-id",
        APP,
        "--token",
        TOKEN,
    ];
    let (gateway, captured) = Running::stdout(&flags).await;
    let cert = generated.cert.der().clone();
    let name = ServerName::try_from("localhost").unwrap();

    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let tls = connector(cert.clone(), b"http/1.1").connect(name.clone(), stream).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(callback(gateway.addr, "r1")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_11);

    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let tls = connector(cert, b"h2").connect(name, stream).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(callback(gateway.addr, "r2")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#);

    // A client that does not speak TLS gets nothing, and the gateway carries on.
    let (status, _) = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let stream = TcpStream::connect(gateway.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let answered = sender.send_request(callback(gateway.addr, "r3")).await;
        (answered.is_err(), ())
    })
    .await
    .unwrap();
    assert!(status, "plain HTTP is refused on the TLS port");
    gateway.stop().await;
    assert_eq!(captured.lines().len(), 2, "both callbacks reached the bus");
}
