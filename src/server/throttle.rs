//! A token bucket: past the configured request rate the server answers
//! ThrottlingException at once instead of queueing without bound (AWS's
//! behaviour at a request quota). Pure: the caller passes the time.

pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: f64,
}

impl Bucket {
    /// `rate` requests a second, up to `rate` at once after a quiet second.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Bucket {
            rate,
            burst: rate,
            tokens: rate,
            last: 0.0,
        }
    }

    /// Whether a request at time `now` (seconds) may run.
    pub fn admit(&mut self, now: f64) -> bool {
        let elapsed = (now - self.last).max(0.0);
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_rate_and_refuses_the_excess() {
        let mut b = Bucket::new(100);
        let admitted = (0..150).filter(|_| b.admit(0.0)).count();
        assert_eq!(admitted, 100, "a burst of the rate, then refusals");
        // Over the next second, about the rate again.
        let admitted = (1..=1000)
            .filter(|i| b.admit(f64::from(*i) / 1000.0))
            .count();
        assert!((99..=101).contains(&admitted), "{admitted}");
        // A clock that steps back admits nothing extra.
        assert!(!(0..10).all(|_| b.admit(0.5)));
    }
}
