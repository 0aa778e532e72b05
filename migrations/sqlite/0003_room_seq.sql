-- Per-room sequence (see the postgres twin). SQLite has one writer at a time, so advancing
-- `city_rooms.last_seq` inside the insert transaction orders commits the same way.
alter table city_rooms add column last_seq integer not null default 0;
alter table city_room_messages add column seq integer;
update city_room_messages set seq = s.rn
  from (select id, row_number() over (partition by room_id order by id) as rn from city_room_messages) s
  where city_room_messages.id = s.id;
update city_rooms set last_seq = coalesce((select max(m.seq) from city_room_messages m where m.room_id = city_rooms.id), 0);
create unique index ux_city_room_messages_room_seq on city_room_messages(room_id, seq);
drop index ix_city_room_messages_room_id;
