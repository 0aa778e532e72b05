-- Readiness write probe (see the postgres twin).
create table city_health (
  id integer primary key check (id = 1),
  probed_at text not null
);
