"""Generated message ids: random version 4 UUIDs as text, unique, never shared with a fork."""

from __future__ import annotations

import os
import uuid

from schemas.model import new_message_id


def test_generated_ids_are_version_4_uuids_as_uuid_prints_them_and_unique():
    ids = [new_message_id() for _ in range(20_000)]  # several refills of the random buffer
    assert len(set(ids)) == len(ids)
    for i in ids:
        u = uuid.UUID(i)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, i)


def test_a_forked_child_does_not_hand_out_its_parents_next_ids():
    new_message_id()  # the buffer is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write, ",".join(new_message_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 10_000).decode().split(",")
    os.waitpid(pid, 0)
    mine = [new_message_id() for _ in range(10)]
    assert len(child) == 10 and not set(child) & set(mine)
