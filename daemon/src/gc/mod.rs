//! Garbage collection: failed uploads → expired closures → mark unreachable → delete after grace, under a
//! PostgreSQL advisory lock, keeping the invariant that every narinfo in the bucket has its NAR and the
//! narinfos of all its references.
