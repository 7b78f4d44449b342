//! The workspace's binaries as child processes, for the end-to-end tests and the benchmarks
//! that run them the way production does: a clean environment, a free loopback port, and a
//! guard that kills the child if the caller ends early.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, ensure};

/// A child process, killed and reaped when dropped.
pub struct Process(Child);

impl Process {
    /// Wraps a child started elsewhere.
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    /// The operating system's id of the child.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Kills the child at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and expects a clean exit, as an orchestrator stopping the service would.
    pub fn terminate(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()?;
        ensure!(status.success(), "could not send SIGTERM");
        ensure!(
            self.0.wait()?.success(),
            "the process did not exit cleanly on SIGTERM"
        );
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A workspace binary of the profile this one was built in (`target/<profile>/<name>`): beside
/// this binary, or beside the `deps/` a test binary lives in.
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory"))?;
    let dir = if dir.ends_with("deps") {
        dir.parent()
            .ok_or_else(|| anyhow::anyhow!("no target directory"))?
    } else {
        dir
    };
    Ok(dir.join(name))
}

/// Starts `binary` with nothing but `env` (and `RUST_LOG=warn`, which `env` may override),
/// its standard output discarded.
pub fn spawn(binary: &Path, env: &[(&str, String)]) -> anyhow::Result<Process> {
    start(binary, env, Stdio::null(), Stdio::inherit())
}

/// Starts `binary` like [`spawn`], its standard output and error written to `log`.
pub fn spawn_logged(binary: &Path, env: &[(&str, String)], log: &Path) -> anyhow::Result<Process> {
    let file = std::fs::File::create(log)?;
    start(binary, env, file.try_clone()?.into(), file.into())
}

fn start(
    binary: &Path,
    env: &[(&str, String)],
    stdout: Stdio,
    stderr: Stdio,
) -> anyhow::Result<Process> {
    let mut command = command(binary, &[], env)?;
    command.stdout(stdout).stderr(stderr);
    command
        .spawn()
        .map(Process)
        .with_context(|| format!("starting {}", binary.display()))
}

/// `binary` with `args`, nothing but `env` and `RUST_LOG=warn` (which `env` may override).
fn command(binary: &Path, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Command> {
    ensure!(
        binary.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, \
         which ./scripts/test does; `--release` for the benchmarks)",
        binary.display()
    );
    let mut command = Command::new(binary);
    command.args(args).env_clear().env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    Ok(command)
}

/// Runs `binary` with `args` and nothing but `env` (as [`spawn`]) to completion, off the
/// async workers; its exit status and captured output.
pub async fn run(
    binary: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> anyhow::Result<std::process::Output> {
    let mut command = command(binary, args, env)?;
    tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("running {}", binary.display()))
}

/// Starts `binary` with `args` like [`spawn`].
pub fn spawn_with_args(
    binary: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> anyhow::Result<Process> {
    let mut command = command(binary, args, env)?;
    command.stdout(Stdio::null()).stderr(Stdio::inherit());
    command
        .spawn()
        .map(Process)
        .with_context(|| format!("starting {}", binary.display()))
}

/// A loopback port nothing listens on now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
