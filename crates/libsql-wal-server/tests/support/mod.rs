//! An in-process server on a free loopback port, and a plain HTTP/1.1 client over
//! `TcpStream` (no client library: the tests see the bytes the server sends).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use libsql_wal_server::{Server, ServerConfig};
use serde_json::{Value, json};

pub struct Running {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

/// Starts a server on `dir` configured by `configure`.
pub fn start(configure: impl FnOnce(&mut ServerConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("dbs"));
    configure(&mut config);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let server = Server::bind(config).await?;
            addr_tx.send(server.local_addr().unwrap()).unwrap();
            server
                .run(async move {
                    let _ = stopped.await;
                })
                .await
        })
    });
    let addr = addr_rx.recv().expect("the server did not start");
    Running { addr, dir, stop: Some(stop), thread: Some(thread) }
}

impl Running {
    /// Stops the server as SIGTERM does and waits for its shutdown.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().unwrap(),
            None => Ok(()),
        }
    }

    pub fn db_path(&self, namespace: &str) -> std::path::PathBuf {
        self.dir.path().join("dbs").join(format!("{namespace}.db"))
    }

    /// One HTTP request; returns (status, body).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
        http(self.addr, method, path, headers, body)
    }

    /// A `/v2/pipeline` request; returns (status, parsed body).
    pub fn pipeline(&self, baton: Option<&str>, requests: Value) -> (u16, Value) {
        self.pipeline_at("/v2/pipeline", &[], baton, requests)
    }

    pub fn pipeline_at(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        baton: Option<&str>,
        requests: Value,
    ) -> (u16, Value) {
        let body = serde_json::to_vec(&json!({ "baton": baton, "requests": requests })).unwrap();
        let (status, body) = self.request("POST", path, headers, &body);
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        head.push_str("Host: 127.0.0.1\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of headers");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = response[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    (status, body)
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

pub fn execute(sql: &str) -> Value {
    json!({ "type": "execute", "stmt": { "sql": sql } })
}

pub fn close() -> Value {
    json!({ "type": "close" })
}

/// The rows of result `i` of a pipeline response, values as their JSON `value`.
pub fn rows(response: &Value, i: usize) -> Vec<Vec<Value>> {
    let result = &response["results"][i];
    assert_eq!(result["type"], "ok", "result {i} failed: {result}");
    result["response"]["result"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v["value"].clone()).collect())
        .collect()
}

pub fn error_code(response: &Value, i: usize) -> String {
    let result = &response["results"][i];
    assert_eq!(result["type"], "error", "result {i} did not fail: {result}");
    result["error"]["code"].as_str().unwrap().to_string()
}
