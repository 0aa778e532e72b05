-- Matrix presence aggregator (seed 003): one Matrix room maps to at most one city room, and the
-- sync loop's `next_batch` is kept so a restart (or a takeover by another instance) resumes.
create unique index city_rooms_matrix_room_id_key on city_rooms (matrix_room_id) where matrix_room_id is not null;

create table matrix_sync_state (
  account text primary key,            -- the bot's Matrix user id (MATRIX_USER_ID)
  next_batch text not null,
  updated_at timestamptz not null
);
