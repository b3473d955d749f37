//! The upload pipeline: spool drainer and uploader. For each output: its closure from the local store,
//! one DB query for what the cache lacks, then per missing path (dependencies first) NAR → sha256 check
//! against Nix's NarHash → zstd → store, then the signed narinfo; plus listing, build log, realisations
//! and `nix-cache-info`. Never touches HTTP.
