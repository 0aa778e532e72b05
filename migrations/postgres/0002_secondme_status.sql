-- Second Me: whether a prompt was answered (issue: failure is never a fake reply; the history
-- shows a prompt that went unanswered), and why not.
alter table secondme_messages add column status text null check (status in ('pending','answered','unanswered'));
alter table secondme_messages add column error text null;
