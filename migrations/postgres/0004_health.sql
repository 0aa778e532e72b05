-- Readiness write probe: /readyz writes this one row, so a store that answers reads but cannot
-- write (disk full, read-only) is reported as not ready.
create table city_health (
  id integer primary key check (id = 1),
  probed_at timestamptz not null
);
