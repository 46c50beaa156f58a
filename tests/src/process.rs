//! Helper processes that must not outlive the test.

use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

/// A helper process (chromedriver) started as the leader of its own process
/// group. Dropping the guard SIGKILLs the whole group, so a browser it
/// launched cannot outlive a failed test, then reaps the leader.
#[derive(Debug)]
pub struct ProcessGroupGuard {
    name: String,
    child: Child,
}

impl ProcessGroupGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let child = cmd.process_group(0).spawn().with_context(|| format!("cannot start {name}"))?;
        Ok(Self { name: name.to_owned(), child })
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited unexpectedly ({status})", self.name),
        }
    }
}

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        // The group id is the leader's pid, which stays ours until we reap it below.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
