//! A MongoDB-wire test server of a test's own (smongo, see `MONGODB_IN_TESTS.md`), which the
//! test may stop, pause and restart; `scripts/test.sh` says where its Python is
//! (`TEST_SMONGO_PYTHON`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::doc;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test server of the test's own, which it may stop, pause and restart (same port and data).
pub struct OwnServer {
    port: u16,
    data: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnServer {
    /// A port and data directory, with no server running yet.
    pub fn unstarted() -> OwnServer {
        OwnServer {
            port: free_port(),
            data: tempfile::tempdir().unwrap(),
            child: None,
        }
    }

    pub async fn start() -> OwnServer {
        let mut server = OwnServer::unstarted();
        server.restart().await;
        server
    }

    pub fn uri(&self) -> String {
        // serverMonitoringMode=poll: see scripts/test.sh (a test-server quirk).
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true&serverMonitoringMode=poll",
            self.port
        )
    }

    /// Starts the server and waits for a real ping.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let python = std::env::var("TEST_SMONGO_PYTHON")
            .expect("TEST_SMONGO_PYTHON is not set: run the tests with `bash scripts/test.sh`");
        let child = Command::new(python)
            .args(["-m", "smongo.wire", "--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--db-path")
            .arg(self.data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the test server");
        self.child = Some(child);
        let client = mongo_client(&self.uri()).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "test server did not answer ping");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("not running").id();
        let ok = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    /// Waits for a server killed with [`OwnServer::signal`] to exit.
    pub fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        self.signal("TERM");
        self.child.take().unwrap().wait().unwrap();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn mongo_client(uri: &str) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(uri).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_millis(500));
    mongodb::Client::with_options(options).unwrap()
}
