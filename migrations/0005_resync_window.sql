-- inboxd store, version 5: what an expired delta token (HTTP 410) may resync. start_from_ms is
-- where the mailbox folder began (NULL: all mail); checkpoint_ms is when the last completed
-- round began (NULL: none yet). A resync starts at the later of the two (less a margin for the
-- checkpoint), and delivered keys in that window are kept, so nothing is announced twice.
ALTER TABLE delta_links ADD COLUMN start_from_ms INTEGER;
ALTER TABLE delta_links ADD COLUMN checkpoint_ms INTEGER;
-- Rows from before this version: their last save is the best checkpoint known.
UPDATE delta_links SET checkpoint_ms = CAST(unixepoch(updated_at) AS INTEGER) * 1000;
