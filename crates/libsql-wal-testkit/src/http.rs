//! A plain HTTP/1.1 client over `TcpStream` for the server's tests: one request per
//! connection, the bytes as the server sent them (chunked bodies joined). No client library,
//! so a test sees exactly what goes over the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One request; returns (status, body). Panics on a broken exchange: it is for tests.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    request(addr, method, path, headers, body, None).unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// One request; returns (status, the response's head: status line and headers, body).
pub fn http_with_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    request_with_head(addr, method, path, headers, body, None)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// One request, as [`http`], but a server that is down, closes the connection early or says
/// nothing for `timeout` (each read and write; none: no limit) is an error, not a panic: for
/// the tests that kill and stall servers.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Option<Duration>,
) -> std::io::Result<(u16, Vec<u8>)> {
    request_with_head(addr, method, path, headers, body, timeout).map(|(status, _, body)| (status, body))
}

/// As [`request`], with the response's head.
pub fn request_with_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Option<Duration>,
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut stream = match timeout {
        Some(timeout) => TcpStream::connect_timeout(&addr, timeout)?,
        None => TcpStream::connect(addr)?,
    };
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        head.push_str("Host: 127.0.0.1\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| invalid("no status"))?;
    let mut body = response[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = unchunk(&body).ok_or_else(|| invalid("a chunked body cut short"))?;
    }
    Ok((status, head, body))
}

/// The value of header `name` in a response head (as [`http_with_head`] returns it).
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn unchunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(line_end + 2..line_end + 2 + size)?);
        data = data.get(line_end + 2 + size + 2..)?;
    }
}

/// A keep-alive HTTP/1.1 connection (for load: one TCP connection per client, as libSQL's
/// clients keep theirs). Bodies must come with a `Content-Length`, as `serve`'s JSON does.
pub struct Client {
    addr: SocketAddr,
    stream: Option<std::io::BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, stream: None }
    }

    /// One POST; reconnects once if the server closed the kept connection.
    pub fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.post_with_head(path, headers, body).map(|(status, _, reply)| (status, reply))
    }

    /// As [`Client::post`], with the response's head (status line and headers).
    pub fn post_with_head(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, String, Vec<u8>)> {
        match self.try_post(path, headers, body) {
            Ok(reply) => Ok(reply),
            Err(_) => {
                self.stream = None;
                self.try_post(path, headers, body)
            }
        }
    }

    fn try_post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, String, Vec<u8>)> {
        use std::io::BufRead;
        if self.stream.is_none() {
            let tcp = TcpStream::connect(self.addr)?;
            tcp.set_nodelay(true)?;
            self.stream = Some(std::io::BufReader::new(tcp));
        }
        let reader = self.stream.as_mut().expect("connected above");
        let mut head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        reader.get_mut().write_all(&request)?;
        let mut status_line = String::new();
        if reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status"))?;
        let mut length = 0usize;
        let mut response_head = status_line.clone();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            response_head.push_str(&line);
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut reply = vec![0; length];
        reader.read_exact(&mut reply)?;
        Ok((status, response_head, reply))
    }
}
