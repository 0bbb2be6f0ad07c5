//! The browser demo in a real browser: `tenantgate demo` (the binary, as a user runs it) serves
//! its page from an allowed and a disallowed origin; headless Chromium, driven over WebDriver
//! (chromedriver + fantoccini), opens both. What is asserted is what the browser decided: the
//! page can only see a CORS refusal as a failed `fetch` and a refused WebSocket as a close before
//! opening. The gateway's access log (the demo's stdout) shows the preflights the browser sent.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test.sh` installs them), or
//! `CHROMIUM` / `CHROMEDRIVER` pointing at other builds.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// Kills the child process when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn program(var: &str, default: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: run the suite with scripts/test.sh (it installs Debian's chromium and \
         chromium-driver) or set {var}"
    );
    path
}

/// `tenantgate demo` on free ports; returns the process, its stdout so far (kept growing by a
/// reader thread), and the allowed and disallowed page URLs it printed.
fn start_demo() -> (Kill, Arc<Mutex<String>>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Kill(child);
    let output = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let out = output.clone();
    std::thread::spawn(move || {
        let mut pages = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("allowed origin") {
                pages.push(line.split_whitespace().last().unwrap_or("").to_string());
                if pages.len() == 2 {
                    let _ = tx.send(pages.clone());
                }
            }
            let mut out = out.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    });
    let pages = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("the demo printed no page URLs:\n{}", output.lock().unwrap()));
    (demo, output, pages[0].clone(), pages[1].clone())
}

/// chromedriver on a free port, once it answers.
async fn start_chromedriver() -> (Kill, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Kill(
        Command::new(program("CHROMEDRIVER", "/usr/bin/chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (driver, format!("http://127.0.0.1:{port}"))
}

async fn open_browser(driver: &str, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": program("CHROMIUM", "/usr/bin/chromium"),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("chromedriver could not start Chromium")
}

/// Opens `url` and waits for the page's first round of calls to finish; returns what the page
/// recorded (`window.demoResults`) and saves a screenshot.
async fn visit(browser: &Client, url: &str, shot: &str) -> Value {
    browser.goto(url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let results = browser
            .execute("return window.demoResults", vec![])
            .await
            .unwrap();
        if results["done"].as_u64().unwrap_or(0) >= 1 {
            let png = browser.screenshot().await.unwrap();
            let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(shot);
            std::fs::write(&path, png).unwrap();
            eprintln!("{url}: {results}\n  screenshot: {}", path.display());
            return results;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: the page did not finish: {results}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_lets_the_allowed_origin_through_and_blocks_the_other() {
    let (_demo, log, allowed, disallowed) = start_demo();
    let (_driver, driver_url) = start_chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = open_browser(&driver_url, profile.path()).await;

    let ok = visit(&browser, &allowed, "browser-allowed-origin.png").await;
    let blocked = visit(&browser, &disallowed, "browser-disallowed-origin.png").await;
    browser.close().await.unwrap();

    // The allowed origin: the preflight passed, the POST reached the backend with the tenant's
    // headers and the browser let the page read the answer; the WebSocket opened and echoed.
    assert_eq!(ok["fetch"]["state"], "ok", "{ok}");
    assert!(
        ok["fetch"]["detail"]
            .as_str()
            .unwrap()
            .contains("HTTP 200; the backend got X-Tenant-Provider-Region: eu-west-1"),
        "{ok}"
    );
    assert_eq!(ok["websocket"]["state"], "ok", "{ok}");
    assert_eq!(
        ok["websocket"]["detail"],
        "subprotocol chat; echo: hello over WebSocket"
    );

    // The disallowed origin: the browser refused the fetch (the page sees only a TypeError) and
    // the WebSocket never opened (1006: closed abnormally, the handshake was refused).
    assert_eq!(blocked["fetch"]["state"], "blocked", "{blocked}");
    assert!(
        blocked["fetch"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("TypeError"),
        "{blocked}"
    );
    assert_eq!(blocked["websocket"]["state"], "blocked", "{blocked}");
    assert_eq!(
        blocked["websocket"]["detail"],
        "closed before opening, code 1006"
    );

    // The gateway saw what the browser sent: a preflight from each origin (answered 204 and
    // 403), the allowed page's POST and WebSocket, and the disallowed page's WebSocket refused.
    let log = log.lock().unwrap().clone();
    let access = |method: &str, path: &str, status: u16| {
        log.lines().any(|l| {
            l.contains("tenantgate::access")
                && l.contains(&format!("method={method} "))
                && l.contains(&format!("path=\"{path}\""))
                && l.contains(&format!("status={status} "))
        })
    };
    assert!(access("OPTIONS", "/api/messages", 204), "{log}");
    assert!(access("OPTIONS", "/api/messages", 403), "{log}");
    assert!(access("POST", "/api/messages", 200), "{log}");
    assert!(access("GET", "/ws", 101), "{log}");
    assert!(access("GET", "/ws", 403), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("method=POST") && l.contains("status=403")),
        "the disallowed POST never left the browser: {log}"
    );
}
