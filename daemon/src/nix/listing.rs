//! The `.ls` file listing Nix writes beside a NAR (`write-nar-listing=true`) and `nix store ls` reads.

use crate::nix::nar::NarNode;

/// The listing JSON for a NAR tree, as Nix writes it: `{"version":1,"root":{…}}` with `type`, `size`,
/// `executable` (only when true), `narOffset`, `target` and `entries`. Names that are not UTF-8 are
/// written the way Nix writes them.
pub fn listing_json(root: &NarNode) -> serde_json::Value {
    todo!("{root:?}")
}
