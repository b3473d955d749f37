-- Pins get a command (`niks3 pin add|remove|list`) and a place in the audit trail: the trail accepts the
-- actions `pin` and `unpin`, and a pin keeps the store path it was made for and who made it (for
-- `niks3 pin list` and the trail; the narinfo key in `root` is what GC follows). Both are NULL on pins made
-- before this version, which had no command.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_action_check
    CHECK (action IN ('push', 'gc', 'token-create', 'token-revoke', 'pin', 'unpin'));
ALTER TABLE pins ADD COLUMN store_path TEXT;
ALTER TABLE pins ADD COLUMN created_by TEXT;
