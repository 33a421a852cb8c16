//! An in-process server on a free loopback port, and a plain HTTP/1.1 client over
//! `TcpStream` (no client library: the tests see the bytes the server sends).

#![allow(dead_code)]

use std::net::SocketAddr;

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

    /// Stops the server as SIGTERM does; the databases' directory outlives it.
    pub fn stop_keeping_files(mut self) -> (Result<(), String>, tempfile::TempDir) {
        let stopped = self.stop_inner();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (stopped, dir)
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

pub use libsql_wal_testkit::http::http;

/// `statements` in one pipeline that closes its stream; the response, which must be 200.
pub fn sql(server: &Running, statements: &[&str]) -> Value {
    let mut requests: Vec<Value> = statements.iter().map(|s| execute(s)).collect();
    requests.push(close());
    let (status, response) = server.pipeline(None, json!(requests));
    assert_eq!(status, 200, "{response}");
    response
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
