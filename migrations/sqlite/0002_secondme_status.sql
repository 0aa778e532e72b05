-- Second Me: whether a prompt was answered, and why not (see the postgres twin).
alter table secondme_messages add column status text null check (status in ('pending','answered','unanswered'));
alter table secondme_messages add column error text null;
