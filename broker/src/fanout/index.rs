//! The topic index: who is subscribed to what. Exact topics live in a `DashMap` (one lookup per
//! event); wildcard patterns in a trie by segment (one walk per event, visiting only the
//! branches the topic can reach).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use parking_lot::RwLock;
use scopecast_protocol::{Pattern, Segment, Topic};

use super::Deliver;

/// A subscriber in the index.
type Sub = Arc<dyn Deliver>;

/// The same subscriber (by the address of its data, whatever the vtable pointer).
fn same(a: &Sub, b: &Sub) -> bool {
    std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    any: Option<Box<Node>>,
    /// Patterns that end at this node.
    here: Vec<Sub>,
    /// Patterns that end with `>` after this node.
    tail: Vec<Sub>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.any.is_none()
            && self.here.is_empty()
            && self.tail.is_empty()
    }

    fn all(&self, f: &mut impl FnMut(&Sub)) {
        self.here.iter().for_each(&mut *f);
        self.tail.iter().for_each(&mut *f);
        for child in self.children.values() {
            child.all(f);
        }
        if let Some(any) = &self.any {
            any.all(f);
        }
    }

    fn walk(&self, segs: &[&str], f: &mut impl FnMut(&Sub)) {
        let Some((first, rest)) = segs.split_first() else {
            self.here.iter().for_each(&mut *f);
            return;
        };
        self.tail.iter().for_each(&mut *f);
        if let Some(child) = self.children.get(*first) {
            child.walk(rest, f);
        }
        if let Some(any) = &self.any {
            any.walk(rest, f);
        }
    }

    /// Removes `sub` under `segs`; returns true when this node became empty.
    fn remove(&mut self, segs: &[Segment<'_>], sub: &Sub) -> bool {
        let drop_from = |v: &mut Vec<Sub>| v.retain(|s| !same(s, sub));
        match segs.split_first() {
            None => drop_from(&mut self.here),
            Some((Segment::Tail, _)) => drop_from(&mut self.tail),
            Some((Segment::Any, rest)) => {
                if let Some(any) = &mut self.any
                    && any.remove(rest, sub)
                {
                    self.any = None;
                }
            }
            Some((Segment::Literal(l), rest)) => {
                if let Some(child) = self.children.get_mut(*l)
                    && child.remove(rest, sub)
                {
                    self.children.remove(*l);
                }
            }
        }
        self.is_empty()
    }
}

/// Subscriptions by topic and pattern.
#[derive(Default)]
pub(crate) struct TopicIndex {
    exact: DashMap<Topic, Vec<Sub>>,
    wild: RwLock<Node>,
    wild_count: AtomicUsize,
}

impl TopicIndex {
    /// Adds `sub` under `pattern`. The caller makes sure a session adds a pattern once.
    pub(crate) fn insert(&self, pattern: &Pattern, sub: &Sub) {
        if let Some(topic) = pattern.as_topic() {
            self.exact.entry(topic).or_default().push(sub.clone());
            return;
        }
        let mut node = &mut *self.wild.write();
        for seg in pattern.segments() {
            node = match seg {
                Segment::Literal(l) => node.children.entry(l.into()).or_default(),
                Segment::Any => node.any.get_or_insert_with(Box::default),
                Segment::Tail => {
                    node.tail.push(sub.clone());
                    self.wild_count.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
        }
        node.here.push(sub.clone());
        self.wild_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes `sub` from under `pattern`, pruning emptied branches.
    pub(crate) fn remove(&self, pattern: &Pattern, sub: &Sub) {
        if let Some(topic) = pattern.as_topic() {
            if let dashmap::Entry::Occupied(mut e) = self.exact.entry(topic) {
                e.get_mut().retain(|s| !same(s, sub));
                if e.get().is_empty() {
                    e.remove();
                }
            }
            return;
        }
        let segs: Vec<Segment<'_>> = pattern.segments().collect();
        self.wild.write().remove(&segs, sub);
        self.wild_count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Calls `f` for each subscription that matches `topic` (a session with overlapping
    /// subscriptions is visited once per subscription; the caller deduplicates by `seq`).
    pub(crate) fn for_each_match(&self, topic: &Topic, mut f: impl FnMut(&Sub)) {
        if let Some(list) = self.exact.get(topic.as_str()) {
            list.iter().for_each(&mut f);
        }
        if self.wild_count.load(Ordering::Relaxed) > 0 {
            let segs: Vec<&str> = topic.segments().collect();
            self.wild.read().walk(&segs, &mut f);
        }
    }

    /// Calls `f` for every subscription (a subscriber with several is visited once per
    /// subscription).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Sub)) {
        for list in self.exact.iter() {
            list.value().iter().for_each(&mut f);
        }
        self.wild.read().all(&mut f);
    }

    /// Number of exact topics with subscribers, and of wildcard subscriptions (tests).
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.exact.len(), self.wild_count.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU64, Ordering};

    /// A subscriber that remembers the last `seq` offered to it.
    struct Probe {
        seen: AtomicU64,
    }

    impl Deliver for Probe {
        fn offer(&self, e: &Arc<crate::log::StoredEvent>, _: &crate::log::Encodings) -> bool {
            self.seen.store(e.seq, Ordering::Relaxed);
            true
        }
        fn gap(&self, _: u64, _: u64) {}
    }

    fn sub() -> Sub {
        Arc::new(Probe {
            seen: AtomicU64::new(0),
        })
    }

    /// The ids of the subscribers matching `topic`.
    fn matches(index: &TopicIndex, topic: &str) -> Vec<u64> {
        let e = Arc::new(crate::log::StoredEvent::new(
            7,
            topic.parse().unwrap(),
            scopecast_protocol::EventId::new("x").unwrap(),
            scopecast_protocol::Timestamp::now(),
            scopecast_protocol::RawJson::from_string("1".into()).unwrap(),
        ));
        let mut hit = Vec::new();
        index.for_each_match(&e.topic, |s| {
            s.offer(&e, &crate::log::Encodings::default());
            hit.push(Arc::as_ptr(s) as *const () as usize);
        });
        let mut v: Vec<u64> = PROBES.with(|p| {
            p.borrow()
                .iter()
                .filter(|(addr, _)| hit.contains(addr))
                .map(|(_, id)| *id)
                .collect()
        });
        v.sort_unstable();
        v
    }

    thread_local! {
        /// Address of each probe made in this test thread, with its id.
        static PROBES: std::cell::RefCell<Vec<(usize, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn probe(id: u64) -> Sub {
        let s = sub();
        PROBES.with(|p| {
            p.borrow_mut()
                .push((Arc::as_ptr(&s) as *const () as usize, id))
        });
        s
    }

    #[test]
    fn exact_star_and_tail_match_like_pattern_matches() {
        let index = TopicIndex::default();
        let (a, b, c, d) = (probe(1), probe(2), probe(3), probe(4));
        index.insert(&"adt.patient.admitted".parse().unwrap(), &a);
        index.insert(&"adt.*.admitted".parse().unwrap(), &b);
        index.insert(&"adt.>".parse().unwrap(), &c);
        index.insert(&">".parse().unwrap(), &d);
        assert_eq!(matches(&index, "adt.patient.admitted"), [1, 2, 3, 4]);
        assert_eq!(matches(&index, "adt.x"), [3, 4]);
        assert_eq!(matches(&index, "adt"), [4]);
        assert_eq!(matches(&index, "lab.result"), [4]);
        index.remove(&"adt.>".parse().unwrap(), &c);
        index.remove(&">".parse().unwrap(), &d);
        assert_eq!(matches(&index, "adt.x"), Vec::<u64>::new());
        index.remove(&"adt.*.admitted".parse().unwrap(), &b);
        index.remove(&"adt.patient.admitted".parse().unwrap(), &a);
        assert_eq!(index.sizes(), (0, 0));
        assert!(index.wild.read().is_empty(), "emptied branches are pruned");
    }

    #[test]
    fn agrees_with_pattern_matches_on_many_pairs() {
        let patterns = [
            "a", "a.b", "a.*", "*.b", "a.>", "*.>", ">", "a.*.c", "*.*", "b.>",
        ];
        let topics = ["a", "b", "a.b", "a.c", "b.b", "a.b.c", "a.x.c", "b.c.d"];
        let index = TopicIndex::default();
        let subs: Vec<_> = (0..patterns.len() as u64).map(probe).collect();
        for (p, s) in patterns.iter().zip(&subs) {
            index.insert(&p.parse().unwrap(), s);
        }
        for t in topics {
            let topic: Topic = t.parse().unwrap();
            let want: Vec<u64> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| p.parse::<Pattern>().unwrap().matches(&topic))
                .map(|(i, _)| i as u64)
                .collect();
            assert_eq!(matches(&index, t), want, "{t}");
        }
    }
}
