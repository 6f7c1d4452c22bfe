//! Name lookups for control commands and HUP reloads, off the event loop. The original
//! looked up the name in `server N address NAME`, `source NAME`, `log NAME:PORT` or
//! `listen NAME:PORT` inside its loop, so a slow name server froze all traffic. Here such
//! commands go to one worker thread, which looks the names up and wakes the loop; the loop
//! then applies the commands with those answers ([`common::addr::with_answers`]), exactly
//! as if it had looked them up itself. The worker is started on first use.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;

use common::addr::{with_answers, Answers};
use mio::{Registry, Token, Waker};

use crate::command::file::read_file;
use crate::command::{names_of, Command};
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

/// Commands waiting for their names (with their line numbers in a file; 1 for a session).
#[derive(Debug)]
pub struct Job {
    pub origin: Origin,
    pub cmds: Vec<(usize, Command)>,
    pub names: Vec<String>,
}

/// A job whose names have been looked up.
#[derive(Debug)]
pub struct Done {
    pub origin: Origin,
    pub cmds: Vec<(usize, Command)>,
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
                    let answers = job.names.iter().map(|n| (n.clone(), look(n))).collect();
                    let done = Done {
                        origin: job.origin,
                        cmds: job.cmds,
                        answers,
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
    /// HUP: re-reads the `-F` file. If it names hosts, they are looked up off the loop
    /// first and the file applies when the answers come ([`State::apply_reload`]).
    pub fn reload_config(&mut self, path: &Path) {
        let cmds = match read_file(path) {
            Ok(c) => c,
            Err(e) => {
                common::diag!("{e}");
                return;
            }
        };
        let names = names_of(cmds.iter().map(|(_, c)| c));
        // A reload behind one still waiting for names waits its turn, so that reloads
        // apply in the order of the HUPs.
        if names.is_empty() && self.reloads_waiting == 0 {
            return self.apply_reload(path, cmds);
        }
        let origin = Origin::Reload(path.to_path_buf());
        match self.submit_lookup(origin, cmds, names) {
            Ok(()) => self.reloads_waiting += 1,
            Err(job) => self.apply_reload(path, job.cmds),
        }
    }

    /// Hands commands to the lookup worker; gives them back if there is none.
    pub(crate) fn submit_lookup(
        &mut self,
        origin: Origin,
        cmds: Vec<(usize, Command)>,
        names: Vec<String>,
    ) -> Result<(), Job> {
        let job = Job {
            origin,
            cmds,
            names,
        };
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
                    common::diag!("can't start the name lookup thread: {e}");
                    return None;
                }
            }
        }
        self.lookups.as_ref()
    }

    /// Applies the commands whose names have been looked up, and answers their sessions
    /// (a session that timed out meanwhile gets no reply, but its command still applies).
    pub(crate) fn lookups_done(&mut self) {
        let done: Vec<Done> = match &self.lookups {
            Some(l) => l.finished().collect(),
            None => return,
        };
        for d in done {
            match d.origin {
                Origin::Session { key, id } => {
                    let reply: String = with_answers(d.answers, || {
                        d.cmds
                            .into_iter()
                            .map(|(_, c)| reply_text(self.apply(c)))
                            .collect()
                    });
                    if self.sessions.get(key).is_some_and(|s| s.id == id) {
                        self.session_reply(key, reply.into_bytes());
                    }
                }
                Origin::Reload(path) => {
                    self.reloads_waiting = self.reloads_waiting.saturating_sub(1);
                    with_answers(d.answers, || self.apply_reload(&path, d.cmds));
                }
            }
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
        let job = Job {
            origin: origin.clone(),
            cmds: vec![(1, Command::Source("web.test".into()))],
            names: vec!["web.test".into(), "nowhere.test".into()],
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
        assert_eq!(done.cmds, [(1, Command::Source("web.test".into()))]);
        assert_eq!(
            done.answers,
            vec![
                ("web.test".to_string(), Ok("127.0.0.7".parse().unwrap())),
                (
                    "nowhere.test".to_string(),
                    Err("can't resolve: no such host".to_string())
                ),
            ]
        );
    }
}
