//! A plain HTTP/1.1 GET on 127.0.0.1 with hyper's client, for the metrics
//! endpoint and Prometheus's API.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// `GET http://127.0.0.1:{port}{path}`: status, `Content-Type` and body.
pub fn get_with_type(port: u16, path: &str) -> std::io::Result<(u16, String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", format!("127.0.0.1:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(std::io::Error::other)?;
        let fut = async {
            let res = sender
                .send_request(req)
                .await
                .map_err(std::io::Error::other)?;
            let status = res.status().as_u16();
            let ctype = res
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            Ok::<_, std::io::Error>((status, ctype, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), fut)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 30 s"))?
    })
}

/// `GET http://127.0.0.1:{port}{path}`: status and body.
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    get_with_type(port, path).map(|(s, _, b)| (s, b))
}
