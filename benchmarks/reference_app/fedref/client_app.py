"""fedref: a Flower ClientApp training with Opacus the way Flower's Opacus example does.

Every train message builds the model, wraps it with a NEW ``PrivacyEngine``
(``make_private(noise_multiplier=..., max_grad_norm=..., poisson_sampling=True)``), trains one
local epoch and replies with ``privacy_engine.get_epsilon(delta)`` as the epsilon. That is one
call's epsilon: the engine's accountant starts empty each round, so after R rounds the owner has
really spent the composition of R such calls, which this app never reports. fedmodel keeps each
owner's accountant history across rounds and reports the cumulative epsilon instead. The noise
multiplier is the one fedmodel calibrates for the whole run (passed in ``noise-multipliers``),
so the true cumulative epsilon of both apps is the same.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from fedref.task import Settings, load_data, make_net, test, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train the received model for the local epochs with DP-SGD; reply weights and metrics."""
    settings = Settings.from_run_config(context.run_config)
    data = load_data(settings, int(context.node_config["partition-id"]),
                     int(context.node_config["num-partitions"]))
    net = make_net(settings)
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = torch.optim.SGD(net.parameters(), lr=float(msg.content["config"]["lr"]))
    train_loader = DataLoader(data, batch_size=settings.batch_size, shuffle=True)
    noise_multiplier = settings.noise_multipliers[len(train_loader)]

    privacy_engine = PrivacyEngine(secure_mode=False)
    model, optimizer, train_loader = privacy_engine.make_private(
        module=net, optimizer=optimizer, data_loader=train_loader, noise_multiplier=noise_multiplier,
        max_grad_norm=settings.max_grad_norm, poisson_sampling=True,
    )
    train_loss = train(model, train_loader, optimizer, settings.local_epochs)
    epsilon = privacy_engine.get_epsilon(delta=settings.target_delta)

    metrics = {"train-loss": train_loss, "num-examples": len(data), "epsilon": epsilon}
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this owner's rows."""
    settings = Settings.from_run_config(context.run_config)
    data = load_data(settings, int(context.node_config["partition-id"]),
                     int(context.node_config["num-partitions"]))
    net = make_net(settings)
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, accuracy = test(net, data)
    metrics = {"eval-loss": loss, "eval-acc": accuracy, "num-examples": len(data)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
