//! A built-in demo of pen's main job, with no setup: it starts two tiny HTTP backends,
//! runs pen in front of them (round robin, X-Forwarded-For on), makes a few requests to
//! show where each one landed, and keeps running so you can `curl` it yourself.
//!
//! ```sh
//! cargo run --release -p pen --example demo
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// A backend answering each request with its name and the client address pen passed on
/// in X-Forwarded-For, then closing (the demo speaks HTTP/1.0).
fn backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve(name, stream));
        }
    });
    Ok(addr)
}

fn serve(name: &str, stream: TcpStream) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    {
        let mut forwarded = String::from("-");
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if first {
                first = false;
            } else if let Some(v) = line.strip_prefix("X-Forwarded-For: ") {
                forwarded = v.trim().to_string();
            }
        }
        let body = format!("hello from backend {name} (X-Forwarded-For: {forwarded})\n");
        let head = format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = out
            .write_all(head.as_bytes())
            .and_then(|_| out.write_all(body.as_bytes()));
    }
}

/// A port that was free a moment ago, preferring 8080.
fn pick_port() -> u16 {
    (8080..8090)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .or_else(|| {
            TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()
                .map(|a| a.port())
        })
        .unwrap_or(8080)
}

fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply.lines().last().unwrap_or_default().to_string())
}

fn main() -> std::io::Result<()> {
    let a = backend("A")?;
    let b = backend("B")?;
    let port = pick_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["-f", "-r", "-H", &listen, &a.to_string(), &b.to_string()];
    println!("pen {}", args.join(" "));
    let argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    let pen = thread::spawn(move || pen::run(argv));

    let addr: SocketAddr = listen.parse().expect("a literal address");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if pen.is_finished() || Instant::now() > deadline {
            eprintln!("demo: pen did not start on {listen}");
            std::process::exit(1);
        }
        thread::sleep(Duration::from_millis(20));
    }
    println!("backends: A on {a}, B on {b}; pen balances round robin on {listen}\n");
    for i in 1..=4 {
        println!("request {i}: {}", get(addr)?);
    }
    println!("\nTry it yourself:  curl http://{listen}/     (Ctrl-C stops the demo)");
    match pen.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            eprintln!("pen: {}", e.error);
            std::process::exit(1)
        }
        Err(_) => std::process::exit(1),
    }
}
