//! The `.ls` file listing Nix writes beside a NAR (`write-nar-listing=true`) and `nix store ls` reads.

use crate::nar::NarNode;
use serde_json::{Map, Value, json};

/// The listing JSON for a NAR tree, as Nix writes it: `{"version":1,"root":{…}}` with `type`, `size`,
/// `executable` (only when true), `narOffset`, `target` and `entries`. Names that are not UTF-8 are
/// written the way Nix writes them.
///
/// Nix 2.8 copies such name bytes into its JSON verbatim (making the file invalid UTF-8); a JSON value
/// cannot hold them, so they become U+FFFD here — what any UTF-8 JSON reader makes of Nix's file when
/// decoding it lossily. All other names and targets are exact.
///
/// `None` for a tree nested deeper than [`MAX_LISTING_DEPTH`]: building, writing and freeing the JSON
/// recurses once per level, and a tree as deep as the NAR reader allows (2048) overflows the 2 MiB stack
/// of a tokio thread, which aborts the process — a build output could crash the cache. A listing is
/// optional (the NAR and narinfo do not need it), so such a path is cached without one.
pub fn listing_json(root: &NarNode) -> Option<serde_json::Value> {
    (depth(root) <= MAX_LISTING_DEPTH).then(|| json!({ "version": 1, "root": node_json(root) }))
}

/// Deepest directory nesting a listing is made for: what the NAR writer archives
/// ([`crate::nar::MAX_DUMP_DEPTH`]), far deeper than real store paths, and shallow enough for a 2 MiB
/// stack in a debug build. Deeper trees come only from NARs read from elsewhere.
pub const MAX_LISTING_DEPTH: usize = crate::nar::MAX_DUMP_DEPTH;

/// How deeply `root` nests directories (0 for a file), without recursion.
fn depth(root: &NarNode) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(root, 0usize)];
    while let Some((node, d)) = stack.pop() {
        if let NarNode::Directory { entries } = node {
            let d = d + 1;
            deepest = deepest.max(d);
            stack.extend(entries.iter().map(|(_, child)| (child, d)));
        }
    }
    deepest
}

/// One node; recursion depth is bounded by [`MAX_LISTING_DEPTH`].
fn node_json(node: &NarNode) -> Value {
    let mut obj = Map::new();
    match node {
        NarNode::Regular { size, executable, nar_offset } => {
            obj.insert("type".into(), "regular".into());
            obj.insert("size".into(), (*size).into());
            if *executable {
                obj.insert("executable".into(), true.into());
            }
            if *nar_offset != 0 {
                obj.insert("narOffset".into(), (*nar_offset).into());
            }
        }
        NarNode::Symlink { target } => {
            obj.insert("type".into(), "symlink".into());
            obj.insert("target".into(), String::from_utf8_lossy(target).into_owned().into());
        }
        NarNode::Directory { entries } => {
            obj.insert("type".into(), "directory".into());
            let entries: Map<String, Value> = entries
                .iter()
                .map(|(name, child)| (String::from_utf8_lossy(name).into_owned(), node_json(child)))
                .collect();
            obj.insert("entries".into(), Value::Object(entries));
        }
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_nix() {
        let tree = NarNode::Directory {
            entries: vec![
                (
                    b"bin".to_vec(),
                    NarNode::Directory {
                        entries: vec![(b"x".to_vec(), NarNode::Regular { size: 3, executable: true, nar_offset: 400 })],
                    },
                ),
                (b"link".to_vec(), NarNode::Symlink { target: b"bin/x".to_vec() }),
                (b"f".to_vec(), NarNode::Regular { size: 0, executable: false, nar_offset: 96 }),
            ],
        };
        assert_eq!(
            listing_json(&tree).expect("shallow"),
            json!({"version": 1, "root": {"type": "directory", "entries": {
                "bin": {"type": "directory", "entries": {"x": {"type": "regular", "size": 3, "executable": true, "narOffset": 400}}},
                "link": {"type": "symlink", "target": "bin/x"},
                "f": {"type": "regular", "size": 0, "narOffset": 96}
            }}})
        );
    }
}
