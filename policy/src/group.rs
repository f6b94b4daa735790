//! Groups: named selectors over node labels.
//!
//! A node's labels are its configured labels plus `node` (its peer id),
//! `site` and `platform`. A selector matches when every one of its
//! `key = value` pairs is among the node's labels; an empty selector
//! matches every node.
//!
//! Precedence, when several groups with a setting match one node: the most
//! specific wins. A selector naming `node` beats any that does not (a host
//! beats a site or a region); then more keys beat fewer (`site` + `rack`
//! beats `site`); then the group declared first.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Labels of one node.
pub type Labels = BTreeMap<String, String>;

/// A named selector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Its name, as windows, pins and waves refer to it.
    pub name: String,
    /// Labels a node must have, all of them.
    pub selector: Labels,
}

impl Group {
    /// True if `labels` has every pair of the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.selector
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }

    /// How specific the selector is; larger wins.
    pub fn specificity(&self) -> (bool, usize) {
        (self.selector.contains_key("node"), self.selector.len())
    }
}

/// Of `candidates` (indices into `groups`, in declaration order) that
/// match, the most specific; ties go to the one declared first.
pub fn most_specific<'a>(
    groups: &'a [Group],
    labels: &Labels,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a Group> {
    let mut best: Option<&Group> = None;
    for name in candidates {
        let Some(g) = groups.iter().find(|g| g.name == name) else {
            continue;
        };
        if g.matches(labels) && best.is_none_or(|b| g.specificity() > b.specificity()) {
            best = Some(g);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn group(name: &str, pairs: &[(&str, &str)]) -> Group {
        Group {
            name: name.into(),
            selector: labels(pairs),
        }
    }

    #[test]
    fn host_beats_site_beats_region_and_ties_go_first() {
        let groups = vec![
            group("all", &[]),
            group("eu", &[("region", "eu")]),
            group("berlin", &[("site", "ber1")]),
            group("berlin-rack", &[("site", "ber1"), ("rack", "r2")]),
            group("one-host", &[("node", "12D3KooWabc")]),
            group("eu-too", &[("region", "eu")]),
        ];
        let names = || groups.iter().map(|g| g.name.as_str());
        let node = labels(&[
            ("node", "12D3KooWabc"),
            ("site", "ber1"),
            ("region", "eu"),
            ("rack", "r2"),
        ]);
        assert_eq!(
            most_specific(&groups, &node, names()).map(|g| &*g.name),
            Some("one-host")
        );
        let other = labels(&[
            ("node", "12D3KooWxyz"),
            ("site", "ber1"),
            ("region", "eu"),
            ("rack", "r2"),
        ]);
        assert_eq!(
            most_specific(&groups, &other, names()).map(|g| &*g.name),
            Some("berlin-rack")
        );
        let paris = labels(&[("node", "n3"), ("site", "par1"), ("region", "eu")]);
        assert_eq!(
            most_specific(&groups, &paris, names()).map(|g| &*g.name),
            Some("eu")
        );
        let us = labels(&[("node", "n4"), ("site", "nyc1"), ("region", "us")]);
        assert_eq!(
            most_specific(&groups, &us, names()).map(|g| &*g.name),
            Some("all")
        );
        assert!(most_specific(&groups, &us, ["eu", "berlin"]).is_none());
    }
}
