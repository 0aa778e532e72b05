-- Seed 000 §2 tables for the embedded store. Timestamps are ISO-8601 UTC text with
-- milliseconds (they sort as time), booleans are 0/1, jsonb is JSON text.
create table city_rooms (
  id text primary key,
  slug text not null unique,
  name text not null,
  description text null,
  is_default integer not null default 0,
  created_at text not null,
  created_by text null,
  matrix_room_id text null,
  matrix_room_alias text null
);
create index ix_city_rooms_slug on city_rooms(slug);

create table city_room_messages (
  id text primary key,
  room_id text not null references city_rooms(id) on delete cascade,
  author_user_id text null,
  author_agent_id text null,
  body text not null,
  created_at text not null
);
create index ix_city_room_messages_room_time on city_room_messages(room_id, created_at desc);
create index ix_city_room_messages_room_id on city_room_messages(room_id, id);

create table city_feed_events (
  id text primary key,
  kind text not null,
  room_id text null references city_rooms(id) on delete set null,
  user_id text null,
  agent_id text null,
  payload text not null,
  created_at text not null
);
create index ix_city_feed_time on city_feed_events(created_at desc);

create table secondme_sessions (
  id text primary key,
  user_id text not null,
  created_at text not null
);
create index ix_secondme_sessions_user on secondme_sessions(user_id, id);

create table secondme_messages (
  id text primary key,
  session_id text not null references secondme_sessions(id) on delete cascade,
  user_id text not null,
  role text not null check (role in ('user','assistant')),
  content text not null,
  tokens_used integer null,
  latency_ms integer null,
  created_at text not null
);
create index ix_secondme_messages_session_time on secondme_messages(session_id, created_at desc);
create index ix_secondme_messages_user on secondme_messages(user_id, id);
