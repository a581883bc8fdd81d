//! The topic index: who is subscribed to what. Exact topics live in a `DashMap` (one lookup per
//! event); wildcard patterns in a trie by segment (one walk per event, visiting only the
//! branches the topic can reach).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use parking_lot::RwLock;
use scopecast_protocol::{Pattern, Segment, Topic};

use super::Subscriber;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    any: Option<Box<Node>>,
    /// Patterns that end at this node.
    here: Vec<Arc<Subscriber>>,
    /// Patterns that end with `>` after this node.
    tail: Vec<Arc<Subscriber>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.any.is_none()
            && self.here.is_empty()
            && self.tail.is_empty()
    }

    fn walk(&self, segs: &[&str], f: &mut impl FnMut(&Arc<Subscriber>)) {
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
    fn remove(&mut self, segs: &[Segment<'_>], sub: &Arc<Subscriber>) -> bool {
        let drop_from = |v: &mut Vec<Arc<Subscriber>>| v.retain(|s| !Arc::ptr_eq(s, sub));
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
pub struct TopicIndex {
    exact: DashMap<Topic, Vec<Arc<Subscriber>>>,
    wild: RwLock<Node>,
    wild_count: AtomicUsize,
}

impl TopicIndex {
    /// Adds `sub` under `pattern`. The caller makes sure a session adds a pattern once.
    pub fn insert(&self, pattern: &Pattern, sub: &Arc<Subscriber>) {
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
    pub fn remove(&self, pattern: &Pattern, sub: &Arc<Subscriber>) {
        if let Some(topic) = pattern.as_topic() {
            if let dashmap::Entry::Occupied(mut e) = self.exact.entry(topic) {
                e.get_mut().retain(|s| !Arc::ptr_eq(s, sub));
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
    pub fn for_each_match(&self, topic: &Topic, mut f: impl FnMut(&Arc<Subscriber>)) {
        if let Some(list) = self.exact.get(topic.as_str()) {
            list.iter().for_each(&mut f);
        }
        if self.wild_count.load(Ordering::Relaxed) > 0 {
            let segs: Vec<&str> = topic.segments().collect();
            self.wild.read().walk(&segs, &mut f);
        }
    }

    /// Number of exact topics with subscribers, and of wildcard subscriptions.
    pub fn sizes(&self) -> (usize, usize) {
        (self.exact.len(), self.wild_count.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: u64) -> Arc<Subscriber> {
        Arc::new(Subscriber::new(
            id,
            "client".into(),
            1 << 20,
            Arc::default(),
        ))
    }

    fn matches(index: &TopicIndex, topic: &str) -> Vec<u64> {
        let mut v = Vec::new();
        index.for_each_match(&topic.parse().unwrap(), |s| v.push(s.session_id));
        v.sort_unstable();
        v
    }

    #[test]
    fn exact_star_and_tail_match_like_pattern_matches() {
        let index = TopicIndex::default();
        let (a, b, c, d) = (sub(1), sub(2), sub(3), sub(4));
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
        let subs: Vec<_> = (0..patterns.len() as u64).map(sub).collect();
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
