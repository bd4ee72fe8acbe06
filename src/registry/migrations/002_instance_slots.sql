-- Each live instance holds a slot (1..2047) that its cancel keys carry, so a
-- CancelRequest that lands on another instance can be sent on to the owner.
ALTER TABLE pgtenant.instances
    ADD COLUMN slot integer UNIQUE CHECK (slot BETWEEN 1 AND 2047);
