//! Adaptive busy polling (`busy_poll US`). After a pass with events the loop may poll
//! without sleeping for a while, so that the next packet does not have to wake it. How
//! long adapts as the kernel's haltpoll governor does: the window grows while the waits for
//! events are shorter than `US` (a spin would have caught them) and shrinks when they are
//! longer (a spin would only burn CPU). A lightly loaded pen therefore sleeps at once, and
//! a busy one stays awake between packets.

use std::time::{Duration, Instant};

/// The window after the first short wait, and the smallest one kept.
const START: Duration = Duration::from_micros(10);

/// The window and the wait being timed.
#[derive(Debug, Default)]
pub struct Spin {
    window: Duration,
    /// When the last pass with events ended, until events come again.
    waiting_since: Option<Instant>,
}

impl Spin {
    /// Events came at `now`: learn from how long they were waited for. `max` is the
    /// `busy_poll` setting.
    pub fn woke(&mut self, now: Instant, max: Duration) {
        let Some(since) = self.waiting_since.take() else {
            return;
        };
        let waited = now.saturating_duration_since(since);
        if waited <= self.window {
            // The spin caught them: keep the window.
        } else if waited <= max {
            self.window = (self.window * 2).max(START);
        } else {
            self.window /= 2;
            if self.window < START {
                self.window = Duration::ZERO;
            }
        }
        self.window = self.window.min(max);
    }

    /// A pass with events ended at `now`: poll without sleeping until the returned time,
    /// if any.
    pub fn pass_end(&mut self, now: Instant, max: Duration) -> Option<Instant> {
        self.waiting_since = Some(now);
        self.window = self.window.min(max);
        (!self.window.is_zero()).then(|| now + self.window)
    }

    /// The current window.
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Ends a pass at `t`, then wakes `after` later; returns the window after that.
    fn step(s: &mut Spin, t: &mut Instant, after: Duration) -> Duration {
        s.pass_end(*t, MAX);
        *t += after;
        s.woke(*t, MAX);
        s.window()
    }

    #[test]
    fn short_waits_grow_the_window_up_to_the_setting() {
        let (mut s, mut t) = (Spin::default(), Instant::now());
        assert_eq!(s.pass_end(t, MAX), None, "no spin before any short wait");
        let grown: Vec<_> = (0..4).map(|_| step(&mut s, &mut t, us(45))).collect();
        assert_eq!(grown, [us(10), us(20), us(40), us(50)]);
        assert_eq!(s.pass_end(t, MAX), Some(t + us(50)));
    }

    #[test]
    fn a_caught_wait_keeps_the_window() {
        let (mut s, mut t) = (Spin::default(), Instant::now());
        step(&mut s, &mut t, us(5));
        step(&mut s, &mut t, us(15));
        assert_eq!(step(&mut s, &mut t, us(3)), us(20));
    }

    #[test]
    fn long_waits_shrink_the_window_to_nothing() {
        let (mut s, mut t) = (Spin::default(), Instant::now());
        for _ in 0..4 {
            step(&mut s, &mut t, us(45));
        }
        let shrunk: Vec<_> = (0..4).map(|_| step(&mut s, &mut t, us(500))).collect();
        assert_eq!(shrunk, [us(25), Duration::from_nanos(12_500), us(0), us(0)]);
        assert_eq!(s.pass_end(t, MAX), None, "an idle pen sleeps at once");
    }

    #[test]
    fn a_lower_setting_caps_the_window_at_once() {
        let (mut s, mut t) = (Spin::default(), Instant::now());
        for _ in 0..4 {
            step(&mut s, &mut t, us(45));
        }
        assert_eq!(s.pass_end(t, us(5)), Some(t + us(5)));
        assert_eq!(s.pass_end(t, Duration::ZERO), None);
    }
}
