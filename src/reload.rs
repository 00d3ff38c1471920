//! What a reload (SIGHUP) does to the list of execution clients, as a pure function of the old
//! and new lists: which ELs stay (keeping their connections and ordered backlog, perhaps at a
//! new place in the list), which are new (they start empty) and which are removed.
//!
//! An EL is the same EL when its normalized URL (`http://host:port/path`) is the same, so
//! `localhost:8551` and `http://localhost:8551/` name one EL. The event loop applies the plan;
//! this file knows no sockets and no queues.

/// Where each EL of the new list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The EL at this index of the old list, with its connections and backlog.
    Kept(usize),
    /// An EL that was not in the old list: it starts empty.
    Added,
}

/// The change from one list to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One entry per EL of the new list, in its order (the first is the primary).
    pub order: Vec<Origin>,
    /// Indices into the old list of the ELs that are gone, ascending.
    pub removed: Vec<usize>,
}

impl Plan {
    /// Whether the list is the same, in the same order.
    pub fn unchanged(&self) -> bool {
        self.removed.is_empty() && self.order.iter().enumerate().all(|(i, o)| *o == Origin::Kept(i))
    }

    pub fn added(&self) -> usize {
        self.order.iter().filter(|o| **o == Origin::Added).count()
    }
}

/// Matches the new list against the old one by URL. An old EL is kept at most once: a URL
/// listed twice in the new list keeps the old EL for its first place and adds a new one for
/// the second (as `--builders` would at start-up).
pub fn plan(old: &[&str], new: &[&str]) -> Plan {
    let mut used = vec![false; old.len()];
    let order = new
        .iter()
        .map(|url| match old.iter().enumerate().position(|(i, o)| !used[i] && o == url) {
            Some(i) => {
                used[i] = true;
                Origin::Kept(i)
            }
            None => Origin::Added,
        })
        .collect();
    let removed = used.iter().enumerate().filter(|(_, u)| !**u).map(|(i, _)| i).collect();
    Plan { order, removed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Origin::{Added, Kept};

    const A: &str = "http://a:8551/";
    const B: &str = "http://b:8551/";
    const C: &str = "http://c:8551/";
    const D: &str = "http://d:8551/";

    /// Old list, new list, the expected order and removals.
    type Case = (&'static [&'static str], &'static [&'static str], &'static [Origin], &'static [usize]);

    #[test]
    fn reload_plans_keep_add_and_remove() {
        let cases: [Case; 7] = [
            // The same list: nothing changes.
            (&[A, B], &[A, B], &[Kept(0), Kept(1)], &[]),
            // One added at the end, one removed in the middle.
            (&[A, B, C], &[A, C, D], &[Kept(0), Kept(2), Added], &[1]),
            // A new primary: the old one stays, second.
            (&[A, B], &[B, A], &[Kept(1), Kept(0)], &[]),
            // Everything replaced.
            (&[A, B], &[C, D], &[Added, Added], &[0, 1]),
            // A URL twice: the second place is a new EL.
            (&[A], &[A, A], &[Kept(0), Added], &[]),
            // Twice before, once now: the first is kept.
            (&[A, A, B], &[B, A], &[Kept(2), Kept(0)], &[1]),
            (&[], &[A], &[Added], &[]),
        ];
        for (old, new, order, removed) in cases {
            let p = plan(old, new);
            assert_eq!(p.order, order, "{old:?} -> {new:?}");
            assert_eq!(p.removed, removed, "{old:?} -> {new:?}");
        }
    }

    #[test]
    fn unchanged_means_same_els_in_the_same_order() {
        assert!(plan(&[A, B], &[A, B]).unchanged());
        assert!(!plan(&[A, B], &[B, A]).unchanged());
        assert!(!plan(&[A, B], &[A]).unchanged());
        assert_eq!(plan(&[A], &[A, B, C]).added(), 2);
    }
}
