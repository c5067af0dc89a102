//! Background jobs: library operations (create, clone, delete, rename, settings) run on their
//! own threads, report progress through [`vivarium_core::disk::Progress`], and end with a
//! [`Done`] the UI thread picks up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use eframe::egui;
use vivarium_core::disk::Progress;

/// What a finished job did, for the notification and the selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// A VM was created (from the New VM dialog).
    Created {
        /// Its name.
        name: String,
        /// Things the user should know.
        warnings: Vec<String>,
    },
    /// A VM was created from an installer ISO dropped on the window.
    CreatedFromIso {
        /// Its name.
        name: String,
        /// What was recognised on the ISO and what the VM got, for people.
        recognised: String,
        /// Things the user should know.
        warnings: Vec<String>,
    },
    /// A VM was cloned.
    Cloned {
        /// The clone's name.
        name: String,
        /// Things the user should know.
        warnings: Vec<String>,
    },
    /// A VM was deleted.
    Deleted {
        /// Its name.
        name: String,
    },
    /// Settings were saved (possibly with a rename).
    Saved {
        /// The VM's name after the change.
        name: String,
    },
    /// Notes were saved.
    NotesSaved {
        /// The VM.
        name: String,
    },
    /// A VM process started.
    Started {
        /// The VM.
        name: String,
        /// Its pid.
        pid: u32,
    },
    /// A running VM was told to do something.
    Controlled {
        /// The VM.
        name: String,
        /// What was done, e.g. "powered off".
        what: &'static str,
    },
}

/// Progress and cancellation shared between a job's thread and the UI.
#[derive(Debug)]
pub struct JobProgress {
    done: AtomicU64,
    total: AtomicU64,
    cancel: AtomicBool,
    ctx: egui::Context,
}

impl JobProgress {
    /// The fraction done, if the job has reported a total.
    pub fn fraction(&self) -> Option<f32> {
        let total = self.total.load(Ordering::Relaxed);
        (total > 0).then(|| self.done.load(Ordering::Relaxed) as f32 / total as f32)
    }

    /// Bytes done and total, as reported.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// Asks the job to stop; it undoes itself and ends with "cancelled".
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Whether cancel was asked.
    pub fn is_cancelling(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

impl Progress for JobProgress {
    fn update(&self, done: u64, total: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        // Progress bars move at a calm rate; no need to repaint for every chunk at once.
        self.ctx.request_repaint_after(Duration::from_millis(30));
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// A job that has not finished yet, as the UI shows it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its id.
    pub id: u64,
    /// What it does, e.g. "Cloning web as web-2".
    pub label: String,
    /// The VM it works on (whose buttons are off meanwhile).
    pub vm: Option<String>,
    /// Its progress and cancel switch.
    pub progress: Arc<JobProgress>,
}

/// A finished job.
#[derive(Debug)]
pub struct Finished {
    /// The job's id.
    pub id: u64,
    /// What it was doing.
    pub label: String,
    /// The result: what it did, or the error message.
    pub result: Result<Done, vivarium_core::Error>,
}

/// The running jobs and the channel their results come back on.
pub struct Jobs {
    running: Vec<Job>,
    next_id: u64,
    tx: Sender<Finished>,
    rx: Receiver<Finished>,
    ctx: egui::Context,
}

impl Jobs {
    /// No jobs yet; finished jobs wake the UI through `ctx`.
    pub fn new(ctx: egui::Context) -> Self {
        let (tx, rx) = channel();
        Jobs {
            running: Vec::new(),
            next_id: 1,
            tx,
            rx,
            ctx,
        }
    }

    /// Starts `work` on its own thread; returns the job's id.
    pub fn spawn(
        &mut self,
        label: impl Into<String>,
        vm: Option<String>,
        work: impl FnOnce(&JobProgress) -> Result<Done, vivarium_core::Error> + Send + 'static,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let label = label.into();
        let progress = Arc::new(JobProgress {
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            ctx: self.ctx.clone(),
        });
        self.running.push(Job {
            id,
            label: label.clone(),
            vm,
            progress: progress.clone(),
        });
        let tx = self.tx.clone();
        let ctx = self.ctx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || {
                let result = work(&progress);
                let _ = tx.send(Finished { id, label, result });
                ctx.request_repaint();
            });
        if let Err(error) = spawned {
            let label = self.running.pop().map(|job| job.label).unwrap_or_default();
            let _ = self.tx.send(Finished {
                id,
                label,
                result: Err(vivarium_core::Error::io("could not start a thread", error)),
            });
        }
        id
    }

    /// Jobs that finished since the last call.
    pub fn take_finished(&mut self) -> Vec<Finished> {
        let finished: Vec<Finished> = self.rx.try_iter().collect();
        self.running
            .retain(|job| !finished.iter().any(|f| f.id == job.id));
        finished
    }

    /// The running job with this id.
    pub fn get(&self, id: u64) -> Option<&Job> {
        self.running.iter().find(|job| job.id == id)
    }

    /// Whether a job works on this VM.
    pub fn busy_with(&self, vm: &str) -> Option<&Job> {
        self.running
            .iter()
            .find(|job| job.vm.as_deref() == Some(vm))
    }

    /// Every running job.
    pub fn running(&self) -> &[Job] {
        &self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_reports_progress_and_its_result() {
        let ctx = egui::Context::default();
        let mut jobs = Jobs::new(ctx);
        let (go_tx, go_rx) = channel::<()>();
        let id = jobs.spawn("Deleting x", Some("x".into()), move |progress| {
            progress.update(5, 10);
            go_rx.recv().unwrap();
            Ok(Done::Deleted { name: "x".into() })
        });
        assert!(jobs.busy_with("x").is_some());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while jobs.get(id).unwrap().progress.fraction().is_none() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(jobs.get(id).unwrap().progress.fraction(), Some(0.5));
        go_tx.send(()).unwrap();
        let finished = loop {
            let finished = jobs.take_finished();
            if !finished.is_empty() {
                break finished;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(
            finished[0].result.as_ref().unwrap(),
            &Done::Deleted { name: "x".into() }
        );
        assert!(jobs.running().is_empty());
    }
}
