//! The state-size growth alert (Flink's "state size growth alert"): a pure rule over the state
//! sizes of the last completed checkpoints, evaluated by the coordinator after each completion.
//!
//! The rule compares the newest size with the size `checkpoints` completions earlier; a baseline
//! of 0 bytes (an empty or in-memory state) never alerts, since no fraction of it is meaningful.

/// When to warn about state growth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrowthAlert {
    /// Alert when the state grew by more than this fraction (0.5 = 50 %) over the window.
    pub fraction: f64,
    /// The window: completed checkpoints between the baseline and the newest (at least 1).
    pub checkpoints: usize,
}

impl GrowthAlert {
    /// The growth over the window when it exceeds the fraction, else `None`.
    pub fn exceeded(&self, sizes: &[u64]) -> Option<f64> {
        state_growth(sizes, self.checkpoints).filter(|g| *g > self.fraction)
    }
}

/// Growth of the newest of `sizes` (oldest first) over the one `checkpoints` before it, as a
/// fraction of the older one: `(new - old) / old`, negative when the state shrank. `None` with
/// fewer than `checkpoints + 1` sizes, or when the older size is 0.
pub fn state_growth(sizes: &[u64], checkpoints: usize) -> Option<f64> {
    let checkpoints = checkpoints.max(1);
    let newest = *sizes.last()?;
    let index = sizes.len().checked_sub(checkpoints + 1)?;
    let old = *sizes.get(index)?;
    (old > 0).then(|| (newest as f64 - old as f64) / old as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_over_the_window() {
        assert_eq!(state_growth(&[], 1), None);
        assert_eq!(state_growth(&[100], 1), None, "no baseline yet");
        assert_eq!(state_growth(&[100, 150], 1), Some(0.5));
        assert_eq!(
            state_growth(&[100, 150], 2),
            None,
            "window longer than history"
        );
        assert_eq!(
            state_growth(&[100, 400, 150], 2),
            Some(0.5),
            "only the ends count"
        );
        assert_eq!(state_growth(&[7, 100, 120, 50], 2), Some(-0.5), "shrinking");
        assert_eq!(
            state_growth(&[0, 500], 1),
            None,
            "empty baseline never alerts"
        );
        assert_eq!(
            state_growth(&[100, 150], 0),
            Some(0.5),
            "window 0 counts as 1"
        );
    }

    #[test]
    fn alert_fires_only_above_the_fraction() {
        let alert = GrowthAlert {
            fraction: 0.5,
            checkpoints: 3,
        };
        assert_eq!(alert.exceeded(&[100, 110, 120, 150]), None, "exactly 50 %");
        assert_eq!(alert.exceeded(&[100, 110, 120, 151]), Some(0.51));
        assert_eq!(alert.exceeded(&[100, 110, 151]), None, "window not full");
        assert_eq!(alert.exceeded(&[1, 100, 110, 120, 140]), None);
    }
}
