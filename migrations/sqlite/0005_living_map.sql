-- Living Map (see the postgres twin): timestamps are ISO-8601 text, JSON is text, and `seq` is
-- the rowid (assigned in insertion order).
create table living_map_history (
  seq integer primary key autoincrement,
  id text not null unique,
  timestamp text not null,
  event_type text not null,
  payload text not null,
  source text not null,
  entity_id text null,
  entity_type text null,
  stream_seq integer null unique
);
create index idx_living_map_history_timestamp on living_map_history (timestamp desc);
create index idx_living_map_history_event_type on living_map_history (event_type);
create index idx_living_map_history_entity on living_map_history (entity_type, entity_id);

create table living_map_snapshots (
  id integer primary key autoincrement,
  created_at text not null,
  last_event_seq integer not null,
  last_stream_seq integer null,
  scene text not null
);
create index idx_living_map_snapshots_created on living_map_snapshots (created_at desc);
