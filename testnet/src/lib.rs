//! The fleetmesh lab: deterministic images, measurements and the local demo
//! that drives real `fleetmesh-seed` processes.

pub mod image;
pub mod lab;
pub mod meshbench;
pub mod netns;
pub mod scenario;
pub mod sim;
pub mod sweep;

/// Parses a size like `1GiB`, `256MiB`, `64KiB` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} must start with a number"))?;
    let mult = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("size {s:?}: unit must be B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// The topology's lower bound on distributing `bytes`: every site must
/// receive them over its WAN link, the seed must send them at least once,
/// the slowest node must download them, and all sites together must
/// receive `sites x bytes` from the seed's and the sites' uplinks. Rates
/// are bytes/s; `None` is unlimited. `None` if nothing bounds it.
pub fn t_min(
    bytes: u64,
    seed_bps: Option<f64>,
    site_wan_bps: &[Option<f64>],
    node_bps: Option<f64>,
) -> Option<f64> {
    let f = bytes as f64;
    let mut terms: Vec<f64> = [seed_bps, node_bps]
        .into_iter()
        .chain(site_wan_bps.iter().copied())
        .flatten()
        .map(|r| f / r)
        .collect();
    if let (Some(seed), Some(wan)) = (seed_bps, site_wan_bps.iter().copied().sum::<Option<f64>>()) {
        terms.push(site_wan_bps.len() as f64 * f / (seed + wan));
    }
    terms.into_iter().reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::{parse_size, t_min};

    #[test]
    fn t_min_is_the_tightest_link() {
        let mb = 1_000_000.0;
        // 3 sites at 20 MB/s, seed 50: each site's WAN bounds it.
        assert_eq!(
            t_min(100_000_000, Some(50.0 * mb), &[Some(20.0 * mb); 3], None),
            Some(5.0)
        );
        // 10 sites at 20 MB/s, seed 10: the seed alone bounds it at 10 s.
        let t = t_min(100_000_000, Some(10.0 * mb), &[Some(20.0 * mb); 10], None);
        assert_eq!(t, Some(10.0));
        // 10 sites, seed 100: each WAN link (the shared uplinks, 1000 MB
        // over 300 MB/s, bind only when uplinks are slower than downlinks).
        let t = t_min(100_000_000, Some(100.0 * mb), &[Some(20.0 * mb); 10], None).unwrap_or(0.0);
        assert!((t - 5.0).abs() < 1e-9, "{t}");
        assert_eq!(t_min(100, None, &[None], None), None);
        assert_eq!(t_min(100, None, &[None], Some(10.0)), Some(10.0));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("1GB").is_err());
        assert!(parse_size("GiB").is_err());
    }
}
