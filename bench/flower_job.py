"""The `bench_flower` job in Flower's simulation engine (runs in its own virtualenv).

Not part of FedHealth: bench/bench_flower.py runs this file with the interpreter of
``var/bench-flower-venv`` (torch 2.13.0 and ``flwr[simulation]``), never the project's.
It imports neither FedHealth nor pandas. What it does is what a Flower user writes from
the PyTorch quickstart (a ``ClientApp`` with train/evaluate, a ``ServerApp`` running
``FedAvg.start``, ``run_simulation`` on Ray), with the hyper-parameters FedHealth's
``simulate`` uses for the same job:

* the same data: each site's train and test CSV written by bench_flower.py;
* features standardised with the mean and population std over all sites' training rows
  (what FedHealth's federated normaliser computes from the sites' sufficient statistics);
* HealthNet's architecture (n_features -> 64 -> 32 -> 16 -> 1, ReLU, no dropout), BCE on
  logits, Adam (lr 3e-3, weight decay 1e-4), cosine schedule per local step down to 10 %
  of lr, batch 32, shuffled each epoch, 1 local epoch;
* FedAvg over every site each round, then every site evaluates the new global model on
  its test rows (FedHealth's ``simulate`` does the same each round).

Prints one JSON line: the wall time inside this process (imports included) and the
final global model's accuracy averaged over the sites' test sets.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

STARTED = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

ARGS: argparse.Namespace
SITES: list[str] = []
DATA: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}


class Net(nn.Module):
    def __init__(self, n_features: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        widths = [n_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)


def _read(path: Path, features: list[str], label: str) -> tuple[np.ndarray, np.ndarray]:
    header = path.open().readline().strip().split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    X = table[:, [header.index(f) for f in features]]
    return X, table[:, header.index(label)].astype(np.float32)


def load_data(data_dir: Path, features: list[str], label: str) -> None:
    raw = {}
    for train in sorted(data_dir.glob("*-train.csv")):
        name = train.name.removesuffix("-train.csv")
        raw[name] = (
            *_read(train, features, label),
            *_read(data_dir / f"{name}-test.csv", features, label),
        )
    pooled = np.concatenate([r[0] for r in raw.values()])
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)
    for name, (X_tr, y_tr, X_te, y_te) in raw.items():
        SITES.append(name)
        DATA[name] = (
            torch.from_numpy(((X_tr - mean) / std).astype(np.float32)),
            torch.from_numpy(y_tr),
            torch.from_numpy(((X_te - mean) / std).astype(np.float32)),
            torch.from_numpy(y_te),
        )


def new_net() -> Net:
    return Net(len(ARGS.features.split(",")), tuple(int(h) for h in ARGS.hidden.split(",")))


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    X, y, _, _ = DATA[SITES[int(context.node_config["partition-id"])]]
    net = new_net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = DataLoader(TensorDataset(X, y), batch_size=ARGS.batch_size, shuffle=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=ARGS.lr, weight_decay=1e-4)
    total = len(loader) * ARGS.epochs
    floor = 0.1
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    loss_fn = nn.BCEWithLogitsLoss()
    net.train()
    running = 0.0
    for _ in range(ARGS.epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item() * len(yb)
    content = RecordDict(
        {
            "arrays": ArrayRecord(net.state_dict()),
            "metrics": MetricRecord(
                {"train_loss": running / (len(y) * ARGS.epochs), "num-examples": len(y)}
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def _accuracy(net: Net, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    net.eval()
    with torch.no_grad():
        logits = net(X)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y).item()
        return float(((logits >= 0).float() == y).float().mean()), loss


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    _, _, X, y = DATA[SITES[int(context.node_config["partition-id"])]]
    net = new_net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    accuracy, loss = _accuracy(net, X, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(y)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


server = ServerApp()
RESULT: dict[str, object] = {}


@server.main()
def main(grid: Grid, context: Context) -> None:
    torch.manual_seed(ARGS.seed)
    n = len(SITES)
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=n,
        min_evaluate_nodes=n,
        min_available_nodes=n,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(new_net().state_dict()),
        train_config=ConfigRecord({"lr": ARGS.lr}),
        num_rounds=ARGS.rounds,
    )
    net = new_net()
    net.load_state_dict(result.arrays.to_torch_state_dict())
    RESULT["accuracy"] = float(np.mean([_accuracy(net, DATA[s][2], DATA[s][3])[0] for s in SITES]))


def run() -> None:
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", default="64,32,16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num-cpus", type=float, default=1.0, help="Ray CPUs per client (Flower's default: 1)"
    )
    ARGS = parser.parse_args()
    torch.set_num_threads(1)
    load_data(ARGS.data, ARGS.features.split(","), ARGS.label)
    simulation_started = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=len(SITES),
        backend_config={"client_resources": {"num_cpus": ARGS.num_cpus, "num_gpus": 0.0}},
    )
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "accuracy": RESULT.get("accuracy"),
                "seconds_in_process": done - STARTED,
                "seconds_simulation": done - simulation_started,
            }
        )
    )


if __name__ == "__main__":
    run()
