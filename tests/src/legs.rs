//! Side-by-side comparisons for the benchmarks on a noisy VM. Each round runs three legs next
//! to each other: A, B, and B again as a control that shows the noise floor. The order rotates
//! from round to round, and a ratio is the median of the per-round ratios, so slow drifts of
//! the machine cancel out.

/// The median of some samples (the upper one for an even count).
pub fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The legs of one comparison, in the order a round runs them: `leg(round, i)` is the leg to
/// run `i`-th (0 is A, 1 is B, 2 is B again).
pub fn leg(round: usize, i: usize) -> usize {
    (round + i) % 3
}

/// Samples of one measure, per leg.
#[derive(Clone, Default)]
pub struct Legs([Vec<f64>; 3]);

impl Legs {
    /// Records one round's sample of `leg`.
    pub fn push(&mut self, leg: usize, sample: f64) {
        self.0[leg].push(sample);
    }

    /// The median of the per-round ratios of leg `x` to leg `y`.
    pub fn ratio(&self, x: usize, y: usize) -> f64 {
        median(self.0[x].iter().zip(&self.0[y]).map(|(a, b)| a / b))
    }

    /// A Markdown row: name, A's and B's medians (`digits` decimals), A / B, and B again / B.
    pub fn row(&self, name: &str, digits: usize) -> String {
        format!(
            "| {name} | {:.digits$} | {:.digits$} | {:.3} | {:.3} |",
            median(self.0[0].iter().copied()),
            median(self.0[1].iter().copied()),
            self.ratio(0, 1),
            self.ratio(2, 1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_medians_of_paired_rounds_and_every_leg_runs_once_a_round() {
        let mut l = Legs::default();
        // A drifts upward; B is always half of A in the same round.
        for (round, a) in [10.0, 20.0, 40.0].into_iter().enumerate() {
            let mut seen = [false; 3];
            for i in 0..3 {
                seen[leg(round, i)] = true;
            }
            assert_eq!(seen, [true; 3]);
            l.push(0, a);
            l.push(1, a / 2.0);
            l.push(2, a / 2.0);
        }
        assert_eq!(l.ratio(0, 1), 2.0);
        assert_eq!(l.ratio(2, 1), 1.0);
        assert_eq!(l.row("x", 0), "| x | 20 | 10 | 2.000 | 1.000 |");
    }
}
