-- A tenant's own limit of clients connected at once (tenants.*.max_client_conn).
ALTER TABLE pgtenant.tenants
    ADD COLUMN max_client_conn integer CHECK (max_client_conn > 0);
