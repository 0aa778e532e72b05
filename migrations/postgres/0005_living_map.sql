-- Living Map (seed 004 §5, with the columns seed 002 lists): the event log and periodic snapshots
-- of the scene. `seq` orders the log (paging and stream replay); `stream_seq` is the JetStream
-- sequence of an event that came through the durable consumer, so storing it twice is a no-op.
create table living_map_history (
  id uuid primary key,
  seq bigserial not null unique,
  timestamp timestamptz not null default now(),
  event_type text not null,
  payload jsonb not null,
  source text not null,                -- jetstream | nats | local
  entity_id text null,                 -- node:gpu-1, agent:sofia, …
  entity_type text null,               -- node | agent | dao | microdao | channel | city
  stream_seq bigint null unique
);
create index idx_living_map_history_timestamp on living_map_history (timestamp desc);
create index idx_living_map_history_event_type on living_map_history (event_type);
create index idx_living_map_history_entity on living_map_history (entity_type, entity_id);

create table living_map_snapshots (
  id bigserial primary key,
  created_at timestamptz not null default now(),
  last_event_seq bigint not null,      -- the scene includes every logged event up to this seq
  last_stream_seq bigint null,         -- and, with JetStream, up to this stream sequence
  scene jsonb not null
);
create index idx_living_map_snapshots_created on living_map_snapshots (created_at desc);
