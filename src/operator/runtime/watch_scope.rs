//! Where the operator watches: the whole cluster, or a list of namespaces (`--namespace a,b`,
//! chart `operator.watchNamespaces`) so that it needs a Role in each and no cluster-wide access.
//!
//! Several namespaces mean one watch per namespace, but every kind keeps **one** cache (the
//! controllers read one store). A reflector's store cannot simply be fed the merged watches: the
//! end of a watch's listing (`InitDone`) replaces the whole store with that listing, so each
//! namespace's (re)list would drop every other namespace's objects. [`Merge`] turns the
//! namespaces' watches into the events of one cluster-like watch: one listing of every
//! namespace at the start, and a namespace's later re-list (after a lost watch) as the
//! changes it brings — `Apply` for what it lists, `Delete` for what the cache holds of that
//! namespace and the listing no longer has.

use std::collections::{BTreeMap, BTreeSet};

use futures::{Stream, StreamExt};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

/// Which namespaces the operator watches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WatchScope {
    #[default]
    Cluster,
    /// At least one namespace, each once, in order.
    Namespaces(Vec<String>),
}

impl WatchScope {
    /// The scope of `--namespace` values (none: the cluster). Blank entries and repeats are
    /// ignored.
    pub fn of(namespaces: &[String]) -> Self {
        let mut seen = BTreeSet::new();
        let list: Vec<String> = namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty() && seen.insert(n.clone()))
            .collect();
        if list.is_empty() {
            Self::Cluster
        } else {
            Self::Namespaces(list)
        }
    }

    /// One `Api` per watched namespace (one for the whole cluster).
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    {
        match self {
            Self::Cluster => vec![Api::all(client.clone())],
            Self::Namespaces(list) => list
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }

    /// The watch of kind `K` in this scope, as one stream of watcher events (each namespace's
    /// watch backs off on its own errors). `cache` is the store these events fill: a
    /// namespace's re-list removes what it holds of that namespace and no longer exists.
    pub fn watch<K>(
        &self,
        client: &Client,
        config: watcher::Config,
        cache: Store<K>,
    ) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
    where
        K: crate::operator::NamespacedObject,
    {
        let apis = self.apis::<K>(client);
        let namespaces = match self {
            Self::Cluster => Vec::new(),
            Self::Namespaces(list) => list.clone(),
        };
        let watches = apis.into_iter().enumerate().map(move |(index, api)| {
            watcher(api, config.clone())
                .default_backoff()
                .map(move |event| (index, event))
                .boxed()
        });
        futures::stream::select_all(watches)
            .scan(Merge::new(namespaces), move |merge, (index, event)| {
                let events = match event {
                    Ok(event) => merge
                        .step(index, event, |namespace| in_namespace(&cache, namespace))
                        .into_iter()
                        .map(Ok)
                        .collect(),
                    Err(e) => vec![Err(e)],
                };
                std::future::ready(Some(futures::stream::iter(events)))
            })
            .flatten()
    }
}

/// What `cache` holds of `namespace`.
fn in_namespace<K>(cache: &Store<K>, namespace: &str) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    cache
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .map(|o| (*o).clone())
        .collect()
}

/// Merges the event streams of one watch per namespace into the events of one watch. A
/// single watch passes through unchanged.
pub struct Merge<K> {
    /// The namespace of each watch, by position.
    namespaces: Vec<String>,
    /// Until every watch has listed once: the combined first listing, by object.
    first: Option<BTreeMap<(String, String), K>>,
    /// The watches that have listed once.
    listed: BTreeSet<usize>,
    /// A watch's listing in progress (after its `Init`), by watch.
    listing: BTreeMap<usize, Vec<K>>,
}

impl<K: Resource<DynamicType = ()> + Clone> Merge<K> {
    pub fn new(namespaces: Vec<String>) -> Self {
        Self {
            namespaces,
            first: Some(BTreeMap::new()),
            listed: BTreeSet::new(),
            listing: BTreeMap::new(),
        }
    }

    /// The events of the one watch for `event` of watch `index`; `cached(namespace)` is what
    /// the cache now holds of a namespace.
    pub fn step(
        &mut self,
        index: usize,
        event: watcher::Event<K>,
        cached: impl Fn(&str) -> Vec<K>,
    ) -> Vec<watcher::Event<K>> {
        use watcher::Event::*;
        if self.namespaces.len() <= 1 {
            return vec![event];
        }
        match event {
            Init => {
                self.listing.insert(index, Vec::new());
                Vec::new()
            }
            InitApply(object) => {
                self.listing.entry(index).or_default().push(object);
                Vec::new()
            }
            InitDone => {
                let namespace = self.namespaces.get(index).cloned().unwrap_or_default();
                let listed = self.listing.remove(&index).unwrap_or_default();
                self.listed.insert(index);
                match &mut self.first {
                    Some(first) => {
                        // A watch that lists again before the others have listed once: its
                        // namespace's earlier objects are replaced by this listing.
                        first.retain(|(ns, _), _| *ns != namespace);
                        for object in listed {
                            first.insert(key(&object), object);
                        }
                        self.first_listing_done()
                    }
                    None => relisted(listed, &cached(&namespace)),
                }
            }
            Apply(object) => match &mut self.first {
                Some(first) => {
                    first.insert(key(&object), object);
                    Vec::new()
                }
                None => vec![Apply(object)],
            },
            Delete(object) => match &mut self.first {
                Some(first) => {
                    first.remove(&key(&object));
                    Vec::new()
                }
                None => vec![Delete(object)],
            },
        }
    }

    /// Once every watch has listed: the one listing of them all.
    fn first_listing_done(&mut self) -> Vec<watcher::Event<K>> {
        if self.listed.len() < self.namespaces.len() {
            return Vec::new();
        }
        let first = self.first.take().unwrap_or_default();
        let mut events = Vec::with_capacity(first.len() + 2);
        events.push(watcher::Event::Init);
        events.extend(first.into_values().map(watcher::Event::InitApply));
        events.push(watcher::Event::InitDone);
        events
    }
}

/// A namespace listed again (its watch was lost): what it lists is applied, what the cache
/// held of it (`cached`) and it no longer lists is deleted.
fn relisted<K: Resource<DynamicType = ()> + Clone>(
    listed: Vec<K>,
    cached: &[K],
) -> Vec<watcher::Event<K>> {
    let names: BTreeSet<String> = listed.iter().map(|o| o.name_any()).collect();
    let gone = cached
        .iter()
        .filter(|o| !names.contains(&o.name_any()))
        .cloned()
        .map(watcher::Event::Delete);
    listed
        .into_iter()
        .map(watcher::Event::Apply)
        .chain(gone)
        .collect()
}

fn key<K: Resource<DynamicType = ()>>(object: &K) -> (String, String) {
    let reference = ObjectRef::from_obj(object);
    (reference.namespace.unwrap_or_default(), reference.name)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::ObjectMeta;
    use watcher::Event::{self, *};

    use super::*;

    fn secret(namespace: &str, name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    /// What `store` holds, as sorted `namespace/name`.
    fn names_in(store: &Store<Secret>) -> Vec<String> {
        let mut names: Vec<String> = store
            .state()
            .iter()
            .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
        names.sort();
        names
    }

    /// What a reflector's store holds after `events`.
    fn store_after(events: &[Event<Secret>]) -> Vec<String> {
        let (reader, mut writer) = kube::runtime::reflector::store::<Secret>();
        for event in events {
            writer.apply_watcher_event(event);
        }
        names_in(&reader)
    }

    /// Runs `input` (watch index, event) through a merge of `namespaces` into one reflector.
    fn merged(namespaces: &[&str], input: Vec<(usize, Event<Secret>)>) -> Vec<String> {
        let (reader, mut writer) = kube::runtime::reflector::store::<Secret>();
        let mut merge = Merge::new(namespaces.iter().map(|n| n.to_string()).collect());
        for (index, event) in input {
            for out in merge.step(index, event, |ns| in_namespace(&reader, ns)) {
                writer.apply_watcher_event(&out);
            }
        }
        names_in(&reader)
    }

    fn listing(index: usize, namespace: &str, names: &[&str]) -> Vec<(usize, Event<Secret>)> {
        let mut events = vec![(index, Init)];
        events.extend(
            names
                .iter()
                .map(|n| (index, InitApply(secret(namespace, n)))),
        );
        events.push((index, InitDone));
        events
    }

    #[test]
    fn feeding_one_store_from_two_watches_directly_loses_a_namespace() {
        // Why the merge exists: the second listing replaces the first.
        let direct = [
            Init,
            InitApply(secret("a", "x")),
            InitDone,
            Init,
            InitApply(secret("b", "y")),
            InitDone,
        ];
        assert_eq!(store_after(&direct), ["b/y"]);
    }

    #[test]
    fn every_namespace_is_in_the_one_store_after_the_first_listings() {
        let mut input = listing(0, "a", &["x", "z"]);
        // b lists while a's changes arrive: they are kept in the first listing.
        input.push((0, Apply(secret("a", "w"))));
        input.push((0, Delete(secret("a", "z"))));
        input.extend(listing(1, "b", &["y"]));
        assert_eq!(merged(&["a", "b"], input), ["a/w", "a/x", "b/y"]);
    }

    #[test]
    fn the_store_is_ready_only_once_every_namespace_has_listed() {
        let mut merge = Merge::new(vec!["a".into(), "b".into()]);
        let none = |_: &str| Vec::<Secret>::new();
        let mut out = Vec::new();
        for (index, event) in listing(0, "a", &["x"]) {
            out.extend(merge.step(index, event, none));
        }
        assert!(out.is_empty(), "{out:?}");
        for (index, event) in listing(1, "b", &[]) {
            out.extend(merge.step(index, event, none));
        }
        assert!(matches!(out.first(), Some(Init)));
        assert!(matches!(out.last(), Some(InitDone)));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn a_namespace_listed_again_keeps_the_others_and_drops_what_it_no_longer_has() {
        let mut input = listing(0, "a", &["x", "z"]);
        input.extend(listing(1, "b", &["y"]));
        // a's watch is lost: z was deleted meanwhile, v created.
        input.extend(listing(0, "a", &["x", "v"]));
        // b's watch is lost and b is empty now.
        input.extend(listing(1, "b", &[]));
        // Later changes pass through.
        input.push((1, Apply(secret("b", "u"))));
        input.push((0, Delete(secret("a", "x"))));
        assert_eq!(merged(&["a", "b"], input), ["a/v", "b/u"]);
    }

    #[test]
    fn a_namespace_listed_twice_before_the_others_listed_once_counts_once() {
        let mut input = listing(0, "a", &["x", "z"]);
        input.extend(listing(0, "a", &["x"]));
        input.extend(listing(1, "b", &["y"]));
        assert_eq!(merged(&["a", "b"], input), ["a/x", "b/y"]);
    }

    #[test]
    fn one_watch_passes_through() {
        let mut merge = Merge::new(vec!["a".into()]);
        let out = merge.step(0, Init, |_| Vec::<Secret>::new());
        assert!(matches!(out.as_slice(), [Init]));
    }

    #[test]
    fn the_scope_of_the_flag() {
        assert_eq!(WatchScope::of(&[]), WatchScope::Cluster);
        assert_eq!(
            WatchScope::of(&["".into(), " ".into()]),
            WatchScope::Cluster
        );
        assert_eq!(
            WatchScope::of(&["b".into(), " a".into(), "b".into()]),
            WatchScope::Namespaces(vec!["b".into(), "a".into()])
        );
    }
}
