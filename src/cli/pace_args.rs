//! The pace flags every probing command takes (`run`, `probe`, `smoke`, `bench`): how many source
//! pods probe at once, how many new connections may be in flight, and how many may start per
//! second. The defaults are `run::pace`'s: safe for an enforcer that judges first packets in a
//! userspace queue of about a thousand.

use clap::Args;
use polygraph::run::pace::{MAX_INFLIGHT, MAX_INFLIGHT_PER_NODE};
use polygraph::run::{PaceOptions, Pacer};

#[derive(Debug, Clone, Args)]
pub struct PaceArgs {
    /// How many source pods probe at once.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
    /// New connections in flight at once, over the whole cluster (each probe target is one until
    /// it is answered or its silence confirmed).
    #[arg(long, value_name = "N", default_value_t = MAX_INFLIGHT)]
    pub max_inflight: usize,
    /// New connections in flight at once to the pods of one node (an enforcer's queue is per
    /// node).
    #[arg(long, value_name = "N", default_value_t = MAX_INFLIGHT_PER_NODE)]
    pub max_inflight_per_node: usize,
    /// New connections started per second, e.g. `5000/s`; `none` for no bound.
    #[arg(long, value_name = "N/s", default_value = "5000/s", value_parser = parse_rate)]
    pub rate: Rate,
}

/// `--rate`: new connections per second, or none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub Option<f64>);

/// `5000/s`, `5000` or `none`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(Rate(None));
    }
    let number = text.strip_suffix("/s").unwrap_or(text).trim();
    match number.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Rate(Some(rate))),
        _ => Err(format!(
            "{text:?}: a rate of new connections per second above 0, e.g. 5000/s, or none"
        )),
    }
}

impl PaceArgs {
    pub fn options(&self) -> Result<PaceOptions, String> {
        if self.parallel == 0 || self.max_inflight == 0 || self.max_inflight_per_node == 0 {
            return Err(
                "--parallel, --max-inflight and --max-inflight-per-node must be at least 1".into(),
            );
        }
        Ok(PaceOptions {
            max_inflight: self.max_inflight,
            max_inflight_per_node: self.max_inflight_per_node,
            rate: self.rate.0,
            sources: self.parallel,
        })
    }

    pub fn pacer(&self) -> Result<Pacer, super::CliError> {
        self.options()
            .map(Pacer::new)
            .map_err(super::CliError::Usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("5000/s"), Ok(Rate(Some(5000.0))));
        assert_eq!(parse_rate("250"), Ok(Rate(Some(250.0))));
        assert_eq!(parse_rate("none"), Ok(Rate(None)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        // The flag's default is the library's.
        assert_eq!(
            parse_rate("5000/s"),
            Ok(Rate(Some(polygraph::run::pace::RATE)))
        );
    }
}
