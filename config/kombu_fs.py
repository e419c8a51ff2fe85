"""kombu's filesystem transport (the embedded default broker) with an atomic put.

Why: kombu's own `_put` opens `<id>.<queue>.msg`, then locks and writes it; a consumer polling the folder can
move and read the file in between, get an empty payload and die with `JSONDecodeError` ("Unrecoverable
error") — seen in CI when a test's `inspect ping` broadcast raced a starting worker. Here the message is
written under a name the consumer ignores (`.msg.tmp`) and renamed into place, which is atomic on POSIX.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = final + ".tmp"  # `_get` takes only "<id>.<queue>.msg" names
        try:
            with open(tmp, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(tmp, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    """Make `filesystem://` broker URLs use this transport (in every process that imports the Celery app)."""
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES["filesystem"] = "config.kombu_fs:Transport"
