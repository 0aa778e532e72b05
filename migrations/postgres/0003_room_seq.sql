-- Per-room sequence (SPEC "HTTP API": each message carries `seq`, its room's number 1, 2, 3, …
-- with no gaps, the same on every instance). `city_rooms.last_seq` is the counter: a write takes
-- the room's row lock to advance it, in the transaction that inserts the messages, so a message
-- with seq n commits only after every message below n has committed.
alter table city_rooms add column last_seq bigint not null default 0;
alter table city_room_messages add column seq bigint;
update city_room_messages m set seq = s.rn
  from (select id, row_number() over (partition by room_id order by id) as rn from city_room_messages) s
  where m.id = s.id;
update city_rooms r set last_seq = coalesce((select max(m.seq) from city_room_messages m where m.room_id = r.id), 0);
alter table city_room_messages alter column seq set not null;
create unique index ux_city_room_messages_room_seq on city_room_messages(room_id, seq);
-- paging and recovery now walk (room_id, seq); a message id is found through the primary key.
drop index ix_city_room_messages_room_id;
