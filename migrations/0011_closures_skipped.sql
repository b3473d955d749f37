-- The size policy (`--max-nar-size`, docs/configuration.md): store paths a push left out because their NAR
-- was over the limit. Their referrers were published and name them, so such a closure is incomplete in the
-- cache: a client substitutes or builds the skipped paths elsewhere. Empty for a complete closure.
ALTER TABLE closures ADD COLUMN skipped TEXT[] NOT NULL DEFAULT '{}';
