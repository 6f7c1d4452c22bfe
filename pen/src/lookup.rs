//! Name lookups and config file reads for control commands and HUP reloads, off the event
//! loop. The original looked up the name in `server N address NAME`, `source NAME`,
//! `log NAME:PORT` or `listen NAME:PORT`, and read `include` and `-F` files, inside its
//! loop, so a slow name server or disk froze all traffic. Here such commands go to one
//! worker thread, which reads the files, looks the names up and wakes the loop; the loop
//! then applies the commands with those answers and files
//! ([`common::addr::with_answers`], [`with_files`]), exactly as if it had looked them up
//! and read them itself. The worker is started on first use, and takes jobs in order, so
//! reloads apply in the order of the HUPs.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;

use common::addr::{with_answers, Answers};
use mio::{Registry, Token, Waker};

use crate::command::file::read_file;
use crate::command::preload::{with_files, Files, Preload};
use crate::command::Command;
use crate::control::reply_text;
use crate::event_loop::LOOKUP;
use crate::state::State;

/// Where the commands of a job came from, and so where their replies go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A control session: its slab key, and its id (keys are reused).
    Session { key: usize, id: u64 },
    /// The `-F` file, re-read on HUP.
    Reload(PathBuf),
}

/// Commands waiting for their files and names (with their line numbers; 1 for a session).
/// A reload's commands are in its file.
#[derive(Debug)]
pub struct Job {
    pub origin: Origin,
    pub cmds: Vec<(usize, Command)>,
}

/// A job whose files have been read and names looked up.
#[derive(Debug)]
pub struct Done {
    pub origin: Origin,
    pub cmds: Vec<(usize, Command)>,
    pub files: Files,
    pub answers: Answers,
}

/// The worker's two ends.
#[derive(Debug)]
pub struct Lookups {
    jobs: Sender<Job>,
    done: Receiver<Done>,
}

impl Lookups {
    /// Starts the worker; it wakes the loop's `token` when a job is done.
    pub fn start(registry: &Registry, token: Token) -> io::Result<Lookups> {
        Lookups::start_with(registry, token, common::addr::lookup)
    }

    fn start_with(
        registry: &Registry,
        token: Token,
        look: fn(&str) -> Result<IpAddr, String>,
    ) -> io::Result<Lookups> {
        let waker = Arc::new(Waker::new(registry, token)?);
        let (jobs, todo) = mpsc::channel::<Job>();
        let (finished, done) = mpsc::channel::<Done>();
        thread::Builder::new()
            .name("pen-lookup".into())
            .spawn(move || {
                // Ends when the loop drops its `Lookups`.
                for job in todo {
                    let mut pre = Preload::default();
                    match &job.origin {
                        Origin::Reload(path) => pre.read(path, 0),
                        Origin::Session { .. } => pre.walk(&job.cmds, 0),
                    }
                    let answers = pre.names().into_iter().map(|n| {
                        let a = look(&n);
                        (n, a)
                    });
                    let done = Done {
                        answers: answers.collect(),
                        origin: job.origin,
                        cmds: job.cmds,
                        files: pre.files,
                    };
                    if finished.send(done).is_err() {
                        break;
                    }
                    if let Err(e) = waker.wake() {
                        common::diag!("lookup: can't wake the loop: {e}");
                    }
                }
            })?;
        Ok(Lookups { jobs, done })
    }

    /// Hands `job` to the worker; gives it back if the worker is gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.jobs.send(job).map_err(|e| e.0)
    }

    /// The jobs finished since the last call.
    pub fn finished(&self) -> impl Iterator<Item = Done> + '_ {
        self.done.try_iter()
    }
}

/// Handing commands to the worker, and applying them when it is done.
impl State {
    /// HUP: re-reads the `-F` file, off the loop with the names it looks up, and applies
    /// it when the worker is done ([`State::lookups_done`]).
    pub fn reload_config(&mut self, path: &Path) {
        let origin = Origin::Reload(path.to_path_buf());
        if self.submit_lookup(origin, Vec::new()).is_err() {
            self.reload_now(path);
        }
    }

    /// Reads the `-F` file (from memory inside [`with_files`]) and applies it.
    fn reload_now(&mut self, path: &Path) {
        match read_file(path) {
            Ok(cmds) => self.apply_reload(path, cmds),
            Err(e) => common::diag!("{e}"),
        }
    }

    /// Hands commands to the worker; gives them back if there is none.
    pub(crate) fn submit_lookup(
        &mut self,
        origin: Origin,
        cmds: Vec<(usize, Command)>,
    ) -> Result<(), Job> {
        let job = Job { origin, cmds };
        match self.lookup_worker() {
            Some(worker) => worker.submit(job),
            None => Err(job),
        }
    }

    /// The lookup worker, started on first use.
    fn lookup_worker(&mut self) -> Option<&Lookups> {
        if self.lookups.is_none() {
            let reg = self.registry.as_ref()?;
            match Lookups::start(reg, LOOKUP) {
                Ok(l) => self.lookups = Some(l),
                Err(e) => {
                    common::diag!("can't start the lookup thread: {e}");
                    return None;
                }
            }
        }
        self.lookups.as_ref()
    }

    /// Applies the commands whose files and names are ready, and answers their sessions
    /// (a session that timed out meanwhile gets no reply, but its command still applies).
    pub(crate) fn lookups_done(&mut self) {
        let done: Vec<Done> = match &self.lookups {
            Some(l) => l.finished().collect(),
            None => return,
        };
        for d in done {
            let Done {
                origin,
                cmds,
                files,
                answers,
            } = d;
            with_answers(answers, || {
                with_files(files, || match origin {
                    Origin::Session { key, id } => {
                        let reply: String = cmds
                            .into_iter()
                            .map(|(_, c)| reply_text(self.apply(c)))
                            .collect();
                        if self.sessions.get(key).is_some_and(|s| s.id == id) {
                            self.session_reply(key, reply.into_bytes());
                        }
                    }
                    Origin::Reload(path) => self.reload_now(&path),
                })
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::{Duration, Instant};

    /// A name server that takes its time.
    fn slow(name: &str) -> Result<IpAddr, String> {
        thread::sleep(Duration::from_millis(300));
        match name {
            "web.test" => Ok("127.0.0.7".parse().unwrap()),
            _ => Err("can't resolve: no such host".into()),
        }
    }

    #[test]
    fn a_slow_lookup_does_not_hold_up_the_submitter() {
        let mut poll = Poll::new().unwrap();
        let lookups = Lookups::start_with(poll.registry(), Token(7), slow).unwrap();
        let t0 = Instant::now();
        let origin = Origin::Session { key: 3, id: 42 };
        let cmds = vec![
            (1, Command::Source("web.test".into())),
            (1, Command::Log(Some("nowhere.test:514".into()))),
        ];
        let job = Job {
            origin: origin.clone(),
            cmds: cmds.clone(),
        };
        assert!(lookups.submit(job).is_ok());
        assert!(t0.elapsed() < Duration::from_millis(250), "submit blocked");
        assert_eq!(lookups.finished().count(), 0, "nothing is done yet");

        let mut events = Events::with_capacity(4);
        let end = Instant::now() + Duration::from_secs(20);
        let done = loop {
            assert!(Instant::now() < end, "the worker never woke the loop");
            poll.poll(&mut events, Some(Duration::from_secs(1)))
                .unwrap();
            if events.iter().any(|e| e.token() == Token(7)) {
                if let Some(d) = lookups.finished().next() {
                    break d;
                }
            }
        };
        assert_eq!(done.origin, origin);
        assert_eq!(done.cmds, cmds);
        assert_eq!(
            done.answers,
            vec![
                (
                    "nowhere.test".to_string(),
                    Err("can't resolve: no such host".to_string())
                ),
                ("web.test".to_string(), Ok("127.0.0.7".parse().unwrap())),
            ]
        );
    }
}
