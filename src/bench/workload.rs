//! The benchmark's workload: what each simulated user sends, what it must print,
//! and how long it thinks between requests.
//!
//! The plan is made up front from a seed, so the gateway run and the baseline
//! (which receives the same plan as JSON) execute exactly the same code with the
//! same think times. The three scenarios are the original service's: a counter
//! (`x += k`), a growing list (`my_list.append(k)`) and a NumPy array scaled in
//! place; each request after the first prints a value the plan predicts.

use clap::ValueEnum;
use serde::Serialize;

/// One of the original's workloads, or all three spread over the users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Arithmetic,
    List,
    Numpy,
    /// Users take arithmetic, list and numpy in turn.
    Mixed,
}

/// One request and the exact `result_text` it must produce.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub code: String,
    pub expect: String,
}

/// Everything one user does.
#[derive(Clone, Debug, Serialize)]
pub struct UserPlan {
    pub scenario: Scenario,
    pub steps: Vec<Step>,
    /// Pause after each step but the last, milliseconds.
    pub think_ms: Vec<f64>,
}

/// A small deterministic generator (SplitMix64): plans must repeat across runs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    /// Uniform in `[lo, hi)` (exactly `lo` when they are equal).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The plans of `users` users making `requests` requests each.
pub fn plan(
    scenario: Scenario,
    users: usize,
    requests: usize,
    think_s: (f64, f64),
    seed: u64,
) -> Vec<UserPlan> {
    let mut rng = Rng::new(seed);
    (0..users)
        .map(|user| {
            let scenario = match scenario {
                Scenario::Mixed => {
                    [Scenario::Arithmetic, Scenario::List, Scenario::Numpy][user % 3]
                }
                one => one,
            };
            let steps = match scenario {
                Scenario::Arithmetic => arithmetic(&mut rng, requests),
                Scenario::List => list(&mut rng, requests),
                Scenario::Numpy | Scenario::Mixed => numpy(&mut rng, requests),
            };
            let think_ms = (1..steps.len())
                .map(|_| rng.uniform(think_s.0, think_s.1) * 1000.0)
                .collect();
            UserPlan {
                scenario,
                steps,
                think_ms,
            }
        })
        .collect()
}

fn arithmetic(rng: &mut Rng, requests: usize) -> Vec<Step> {
    let mut x = rng.int(1, 1000);
    let mut steps = vec![silent(format!("x = {x}"))];
    while steps.len() < requests {
        let k = rng.int(1, 100);
        x += k;
        steps.push(printed(format!("x += {k}; print(x)"), x.to_string()));
    }
    steps.truncate(requests);
    steps
}

fn list(rng: &mut Rng, requests: usize) -> Vec<Step> {
    let start: Vec<i64> = (0..3).map(|_| rng.int(1, 100)).collect();
    let mut sum: i64 = start.iter().sum();
    let items: Vec<String> = start.iter().map(i64::to_string).collect();
    let mut steps = vec![silent(format!("my_list = [{}]", items.join(", ")))];
    while steps.len() < requests {
        let k = rng.int(1, 100);
        sum += k;
        steps.push(printed(
            format!("my_list.append({k}); print(sum(my_list))"),
            sum.to_string(),
        ));
    }
    steps.truncate(requests);
    steps
}

/// Even steps scale the array and print its sum, odd steps print its mean.
/// Factors are ±1 or ±2, at most 40 doublings: values stay exact in int64 and
/// in float64, so the expected text is certain.
fn numpy(rng: &mut Rng, requests: usize) -> Vec<Step> {
    let mut arr: Vec<i64> = (0..5).map(|_| rng.int(1, 100)).collect();
    let items: Vec<String> = arr.iter().map(i64::to_string).collect();
    let mut steps = vec![silent(format!(
        "import numpy as np; arr = np.array([{}])",
        items.join(", ")
    ))];
    let mut doublings = 0;
    while steps.len() < requests {
        if steps.len() % 2 == 1 {
            let mut k: i64 = [-2, -1, 1, 2][rng.int(0, 3) as usize];
            if k.abs() == 2 {
                if doublings == 40 {
                    k /= 2;
                } else {
                    doublings += 1;
                }
            }
            arr.iter_mut().for_each(|v| *v *= k);
            steps.push(printed(
                format!("arr = arr * {k}; print(np.sum(arr))"),
                arr.iter().sum::<i64>().to_string(),
            ));
        } else {
            let mean = arr.iter().map(|&v| v as f64).sum::<f64>() / arr.len() as f64;
            steps.push(printed("print(np.mean(arr))".into(), python_float(mean)));
        }
    }
    steps.truncate(requests);
    steps
}

/// `str(float)` as Python prints it, for magnitudes below 1e16.
pub fn python_float(value: f64) -> String {
    let text = format!("{value}");
    if text.contains('.') || text.contains("inf") || text.contains("NaN") {
        text
    } else {
        format!("{text}.0")
    }
}

fn silent(code: String) -> Step {
    Step {
        code,
        expect: String::new(),
    }
}

fn printed(code: String, value: String) -> Step {
    Step {
        code,
        expect: format!("{value}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_repeat_for_a_seed_and_have_the_requested_shape() {
        let a = plan(Scenario::Mixed, 4, 10, (0.1, 0.5), 7);
        let b = plan(Scenario::Mixed, 4, 10, (0.1, 0.5), 7);
        assert_eq!(a.len(), 4);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.steps.len(), 10);
            assert_eq!(x.think_ms.len(), 9);
            assert_eq!(x.steps[3].code, y.steps[3].code);
            assert!(x.think_ms.iter().all(|&t| (100.0..500.0).contains(&t)));
        }
        assert_eq!(a[0].scenario, Scenario::Arithmetic);
        assert_eq!(a[1].scenario, Scenario::List);
        assert_eq!(a[2].scenario, Scenario::Numpy);
    }

    #[test]
    fn arithmetic_expectations_follow_the_code() {
        let steps = arithmetic(&mut Rng::new(1), 3);
        let x: i64 = steps[0].code.strip_prefix("x = ").unwrap().parse().unwrap();
        let k1: i64 = steps[1].code[5..]
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(steps[0].expect, "");
        assert_eq!(steps[1].expect, format!("{}\n", x + k1));
    }

    #[test]
    fn numpy_values_stay_exact() {
        for seed in 0..20 {
            for step in numpy(&mut Rng::new(seed), 200) {
                assert!(!step.expect.contains('e'), "{step:?}");
            }
        }
    }

    #[test]
    fn floats_print_like_python() {
        assert_eq!(python_float(2.0), "2.0");
        assert_eq!(python_float(3.4), "3.4");
        assert_eq!(python_float(-0.5), "-0.5");
        assert_eq!(python_float(1125899906842624.0), "1125899906842624.0");
    }

    #[test]
    fn no_think_time_means_zero_pauses() {
        let p = plan(Scenario::List, 2, 5, (0.0, 0.0), 3);
        assert!(p.iter().all(|u| u.think_ms.iter().all(|&t| t == 0.0)));
    }
}
