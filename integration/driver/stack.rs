//! The compose stack's lifecycle: up, down (always, via `Drop`), container logs,
//! killing, starting, pausing and resuming one service, destroying one (container and
//! volume) and creating it afresh, and running a command on the host inside a
//! container's network namespace (`nsenter -t <pid> -n`).
//!
//! Owns: the compose project name and every docker / docker-compose invocation.
//! Calls docker-compose 1.x, docker and nsenter as subprocesses; nothing else.
//! `output` (run a program, keep its stdout) is shared with `api` for promtool.

use std::process::{Child, Command, Stdio};

/// Compose project name: keeps the suite's containers, network and volumes apart.
const PROJECT: &str = "timbala-integ";

/// A running stack; torn down (with its volumes) when dropped.
pub struct Stack {
    dump_logs: bool,
}

impl Stack {
    /// Removes anything left by an earlier run, then starts every service.
    pub fn up() -> Result<Stack, String> {
        compose(&["down", "-v", "--remove-orphans"])?;
        let stack = Stack { dump_logs: false };
        compose(&["up", "-d", "--no-build"])?;
        Ok(stack)
    }

    /// Makes teardown print every container's logs first (called on failure).
    pub fn dump_logs_on_teardown(&mut self) {
        self.dump_logs = true;
    }

    pub fn kill(&self, service: &str) -> Result<(), String> {
        compose(&["kill", "-s", "SIGKILL", service])
    }

    pub fn start(&self, service: &str) -> Result<(), String> {
        compose(&["start", service])
    }

    /// Destroys a service for good: SIGKILL, container removed, and its named volume
    /// (the node's data directory, identity included) removed.
    pub fn destroy(&self, service: &str) -> Result<(), String> {
        compose(&["kill", "-s", "SIGKILL", service])?;
        compose(&["rm", "-f", "-s", service])?;
        let volumes = output(
            "docker",
            &[
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("label=com.docker.compose.project={PROJECT}"),
                "--filter",
                &format!("label=com.docker.compose.volume={service}"),
            ],
        )?;
        let volumes: Vec<&str> = volumes.split_whitespace().collect();
        if volumes.is_empty() {
            return Err(format!("no volume of {service} to remove"));
        }
        for volume in volumes {
            output("docker", &["volume", "rm", volume])?;
        }
        Ok(())
    }

    /// Creates and starts a new container for a destroyed service (with a new, empty
    /// volume), leaving every other service as it is.
    pub fn recreate(&self, service: &str) -> Result<(), String> {
        compose(&["up", "-d", "--no-build", "--no-deps", service])
    }

    /// Stops the service's process with SIGSTOP, sent from the host: a hung node that
    /// holds its sockets open but never answers. `docker-compose pause` (the cgroup
    /// freezer) was a no-op on this machine's kernel (a frozen process kept running),
    /// and SIGSTOP from an ancestor namespace is delivered even to a container's PID 1.
    pub fn pause(&self, service: &str) -> Result<(), String> {
        self.signal(service, libc::SIGSTOP)
    }

    pub fn unpause(&self, service: &str) -> Result<(), String> {
        self.signal(service, libc::SIGCONT)
    }

    fn signal(&self, service: &str, signal: libc::c_int) -> Result<(), String> {
        let pid = self.pid(service)?;
        // SAFETY: kill(2) with a pid read from docker and a constant signal number.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(format!(
                "signal {signal} to {service} (pid {pid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// The host PID of a service's main process, for entering its namespaces.
    pub fn pid(&self, service: &str) -> Result<u32, String> {
        let id = output("docker-compose", &["-p", PROJECT, "ps", "-q", service])?;
        let pid = output("docker", &["inspect", "-f", "{{.State.Pid}}", id.trim()])?;
        pid.trim()
            .parse()
            .map_err(|e| format!("pid of {service}: {pid:?}: {e}"))
    }

    /// Runs a host program inside `service`'s network namespace and waits for it.
    pub fn in_netns(&self, service: &str, program: &[&str]) -> Result<String, String> {
        let pid = self.pid(service)?.to_string();
        let mut args = vec!["-t", pid.as_str(), "-n"];
        args.extend_from_slice(program);
        output("nsenter", &args)
    }

    /// Starts a host program inside `service`'s network namespace and leaves it running.
    pub fn spawn_in_netns(&self, service: &str, program: &[&str]) -> Result<Child, String> {
        let pid = self.pid(service)?.to_string();
        Command::new("nsenter")
            .args(["-t", pid.as_str(), "-n"])
            .args(program)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("nsenter {}: {e}", program.join(" ")))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.dump_logs {
            eprintln!("==== container logs (last 200 lines each) ====");
            let _ = Command::new("docker-compose")
                .args(["-p", PROJECT, "logs", "--no-color", "--tail", "200"])
                .status();
        }
        if let Err(e) = compose(&["down", "-v", "--remove-orphans"]) {
            eprintln!("teardown failed: {e}");
        }
    }
}

/// Runs `docker-compose -p PROJECT ...` from the repository root (where
/// docker-compose.yml lives), quietly unless it fails.
fn compose(args: &[&str]) -> Result<(), String> {
    let mut all = vec!["-p", PROJECT];
    all.extend_from_slice(args);
    output("docker-compose", &all).map(drop)
}

/// Runs a program to completion; its stdout, or an error quoting its stderr.
pub fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
