"""The owner's side of central (client-level) DP: clip the update before it leaves (Flower's mods).

With ``central-dp = fixed`` or ``adaptive`` in the run config, every train reply passes through
Flower's ``fixedclipping_mod`` or ``adaptiveclipping_mod``: the update (new weights minus the global
model received) is scaled down to the clipping norm the coordinator's wrapper put into the message
(``adaptive`` also reports whether it had to clip, as the ``norm_bit`` metric). The mod is chosen by
the run config the owner parsed, not by what the message carries: a train message of a central-DP
run without a clipping norm is refused (an error reply), never answered unclipped. Clipping works on
the result of DP-SGD, so the owner's sample-level guarantee is unchanged. Clipping draws nothing
random at the owner (central DP's noise is the coordinator's, :mod:`fedmodel.server.central_dp`), so there is
no owner-side draw here to take from the OS (:mod:`fedmodel.privacy.randomness`).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable


def central_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this owner's train update for central DP when the run asks for it; otherwise pass through."""
    mode = context.run_config.get("central-dp", "none")
    if mode == "fixed":
        return fixedclipping_mod(msg, context, call_next)
    if mode == "adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    return call_next(msg, context)  # none (or an invalid value, which the train function reports)
