//! Keyboard and mouse events on their way to a VM process, sent from a thread of its own so
//! the UI never waits on the control socket. Events queued while a batch is on its way go
//! together in the next one.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use eframe::egui;
use vivarium_core::Library;
use vivarium_core::control::ControlClient;
use vivarium_core::input::InputEvent;

/// The sending side of one VM's input; the thread ends when the link is dropped.
pub struct InputLink {
    queue: Sender<Vec<InputEvent>>,
    problem: Arc<Mutex<Option<String>>>,
}

impl InputLink {
    /// Starts the thread that sends to VM `name`'s process (it connects when the first
    /// events come). `ctx` repaints when the link's state changes.
    pub fn start(library: &Library, name: &str, ctx: &egui::Context) -> InputLink {
        let (queue, events) = channel();
        let problem = Arc::new(Mutex::new(None));
        let (library, vm, slot, ctx) = (
            library.clone(),
            name.to_string(),
            problem.clone(),
            ctx.clone(),
        );
        let _ = std::thread::Builder::new()
            .name(format!("input-{name}"))
            .spawn(move || send_loop(&library, &vm, &events, &slot, &ctx));
        InputLink { queue, problem }
    }

    /// Queues events for the guest; returns at once.
    pub fn send(&self, events: Vec<InputEvent>) {
        if !events.is_empty() {
            let _ = self.queue.send(events);
        }
    }

    /// Why the last batch did not reach the VM process, if it did not.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn send_loop(
    library: &Library,
    name: &str,
    events: &Receiver<Vec<InputEvent>>,
    problem: &Mutex<Option<String>>,
    ctx: &egui::Context,
) {
    let mut client: Option<ControlClient> = None;
    while let Ok(mut batch) = events.recv() {
        while let Ok(more) = events.try_recv() {
            batch.extend(more);
        }
        let result = match client.as_mut() {
            Some(client) => client.send_input(&batch),
            None => ControlClient::connect(library, name).and_then(|mut c| {
                let sent = c.send_input(&batch);
                client = Some(c);
                sent
            }),
        };
        let now = match result {
            Ok(()) => None,
            Err(e) => {
                // Connect again for the next batch (the VM process may have restarted).
                client = None;
                Some(e.to_string())
            }
        };
        let mut slot = problem.lock().unwrap_or_else(|e| e.into_inner());
        if *slot != now {
            *slot = now;
            ctx.request_repaint();
        }
    }
}
