//! Test harness for Garage, a real S3-compatible distributed object store: starts 1 or 3 nodes
//! on free 127.0.0.1 ports in a temporary directory (`db_engine = "sqlite"`), applies the
//! layout, creates a bucket and a key with access to it, and kills the nodes on drop.
//!
//! The `garage` binary is looked up on PATH and in ~/.cargo/bin (`.ci/run` installs it); without
//! it [`GarageCluster::start`] prints a loud SKIPPED line and returns None.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowstate::checkpoint::uri::{StorageOptions, open_storage_with};

/// The bucket every cluster creates.
pub const BUCKET: &str = "flowstate";
/// The S3 region the nodes are configured with.
pub const REGION: &str = "garage";
const RPC_SECRET: &str = "5f0c2a1e9b7d43e8a6c1f2b3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607";

/// Where the `garage` binary is, if anywhere.
pub fn garage_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("garage"));
    let from_cargo = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/garage"));
    from_path.chain(from_cargo).find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One running node.
pub struct GarageNode {
    child: Option<Child>,
    config: PathBuf,
    pub rpc_port: u16,
    pub s3_port: u16,
}

/// A running Garage cluster with one bucket and one key that owns it.
pub struct GarageCluster {
    binary: PathBuf,
    pub nodes: Vec<GarageNode>,
    pub key_id: String,
    pub secret: String,
    dir: tempfile::TempDir,
}

impl GarageCluster {
    /// Starts `nodes` nodes (replication factor = `nodes`), or None when `garage` is absent.
    pub fn start(nodes: usize) -> Option<GarageCluster> {
        let Some(binary) = garage_binary() else {
            let line = "SKIPPED: garage binary not found (see .ci/run)";
            // CI installs Garage (.ci/run): there a missing binary is a failure, not a skip.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "garage binary not found with CI=true: the Garage tests would not run"
            );
            println!("{line}");
            eprintln!("\n{}\n{line}\n{}\n", "!".repeat(60), "!".repeat(60));
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = GarageCluster {
            binary,
            nodes: Vec::new(),
            key_id: String::new(),
            secret: String::new(),
            dir,
        };
        for i in 0..nodes {
            let node = cluster.spawn_node(i, nodes);
            cluster.nodes.push(node);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let ids: Vec<String> = (0..nodes)
            .map(|i| {
                let out = cluster.retry(i, deadline, &["node", "id", "-q"]);
                out.trim().split('@').next().unwrap_or("").to_string()
            })
            .collect();
        for (id, node) in ids.iter().zip(&cluster.nodes).skip(1) {
            let peer = format!("{id}@127.0.0.1:{}", node.rpc_port);
            cluster.retry(0, deadline, &["node", "connect", &peer]);
        }
        for id in &ids {
            cluster.retry(
                0,
                deadline,
                &["layout", "assign", "-z", "dc1", "-c", "1G", id],
            );
        }
        cluster.retry(0, deadline, &["layout", "apply", "--version", "1"]);
        cluster.retry(0, deadline, &["bucket", "create", BUCKET]);
        let (key_id, secret) = cluster.create_key("flowstate-owner");
        cluster.retry(
            0,
            deadline,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", &key_id,
            ],
        );
        cluster.key_id = key_id;
        cluster.secret = secret;
        // The S3 API answers once the layout reached every node: probe with a real write.
        let probe = cluster.uri("probe");
        loop {
            let attempt = open_storage_with(&probe, &cluster.options())
                .and_then(|s| s.write_file("ready", b"1").and_then(|_| s.delete("ready")));
            match attempt {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("garage not ready yet: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("garage did not become ready: {e}"),
            }
        }
        Some(cluster)
    }

    fn spawn_node(&self, index: usize, replication: usize) -> GarageNode {
        let root = self.dir.path().join(format!("node-{index}"));
        std::fs::create_dir_all(&root).unwrap();
        let (rpc_port, s3_port, admin_port) = (free_port(), free_port(), free_port());
        let config = root.join("garage.toml");
        let text = format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{RPC_SECRET}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
            root = root.display()
        );
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(root.join("server.log")).unwrap();
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start garage server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", s3_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "garage node {index} did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        GarageNode {
            child: Some(child),
            config,
            rpc_port,
            s3_port,
        }
    }

    /// Runs `garage -c <node's config> args`; Err(output) on failure.
    pub fn garage(&self, node: usize, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.nodes[node].config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    fn retry(&self, node: usize, deadline: Instant, args: &[&str]) -> String {
        loop {
            match self.garage(node, args) {
                Ok(out) => return out,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("garage {args:?} not yet: {}", e.trim());
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("garage {args:?} failed: {e}"),
            }
        }
    }

    /// Creates a key (no bucket permissions); returns (key id, secret).
    pub fn create_key(&self, name: &str) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let out = self.retry(0, deadline, &["key", "create", name]);
        let field = |label: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no '{label}' in: {out}"))
        };
        (field("Key ID:"), field("Secret key:"))
    }

    /// The S3 endpoint of node `node`.
    pub fn endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].s3_port)
    }

    /// `s3://flowstate/<prefix>`.
    pub fn uri(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// Storage options for node 0 with the owner key (path-style, http on loopback, no env).
    pub fn options(&self) -> StorageOptions {
        self.options_for(0, &self.key_id, &self.secret)
    }

    /// Storage options for node `node` with the given key.
    pub fn options_for(&self, node: usize, key_id: &str, secret: &str) -> StorageOptions {
        StorageOptions::new()
            .with_pairs([
                ("from_env", "false"),
                ("endpoint", self.endpoint(node).as_str()),
                ("region", REGION),
                ("access_key_id", key_id),
                ("secret_access_key", secret),
                ("allow_http", "true"),
                ("virtual_hosted_style_request", "false"),
            ])
            .expect("valid options")
    }

    /// SIGKILLs node `node`.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
