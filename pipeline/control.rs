//! What the processing loop is asked to do (run, drain, stop), shared between the loop and
//! whoever asks: a signal handler, the demo's timer, a benchmark.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// What the loop is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep consuming.
    Run,
    /// Consume up to the end offsets as of now, close every window, checkpoint, return.
    Drain,
    /// Stop consuming, checkpoint (within the shutdown deadline), return.
    Stop,
}

/// The loop's [`Control`], shared with whoever asks it to drain or stop (a signal handler).
#[derive(Debug, Clone)]
pub struct ControlHandle(Arc<AtomicU8>);

impl ControlHandle {
    /// A handle that starts at `control`.
    pub fn new(control: Control) -> Self {
        ControlHandle(Arc::new(AtomicU8::new(control as u8)))
    }

    /// What the loop is asked to do now.
    pub fn get(&self) -> Control {
        match self.0.load(Ordering::Relaxed) {
            0 => Control::Run,
            1 => Control::Drain,
            _ => Control::Stop,
        }
    }

    /// Asks the loop to stop; never undone.
    pub fn stop(&self) {
        self.0.store(Control::Stop as u8, Ordering::Relaxed);
    }

    /// Asks a running loop to drain; a loop already stopping keeps stopping.
    pub fn drain(&self) {
        let _ = self.0.compare_exchange(Control::Run as u8, Control::Drain as u8, Ordering::Relaxed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_never_undone_by_a_drain() {
        let control = ControlHandle::new(Control::Run);
        control.drain();
        assert_eq!(control.get(), Control::Drain);
        control.stop();
        control.drain();
        assert_eq!(control.get(), Control::Stop);
    }
}
