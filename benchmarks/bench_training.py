"""Our recipe (the bundled model's, as its card records it) against the tutorial's, each trained
for the same wall-clock budget."""
from __future__ import annotations

import json
from pathlib import Path

from scripts.common import FASHION_MNIST_DIR


def add_arguments(p) -> None:
    p.add_argument("--dataset", default=FASHION_MNIST_DIR,
                   help="folder of the Fashion-MNIST idx files")
    p.add_argument("--budget", type=float, default=600, help="training seconds for each (default 600)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe-from", default="models/fashion-mnist", metavar="MODEL",
                   help="train ours with this model card's settings (default: %(default)s)")
    p.add_argument("--out", default="runs/bench-training", help="where the two models are written")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    import sys
    from dataclasses import fields

    from encoder import Embedder
    from encoder.artifact import load_card
    from encoder.datasets import load_fashion_mnist
    from encoder.evaluation import pair_metrics, retrieval_metrics
    from encoder.training import TrainConfig, train
    from scripts.table import format_table

    train_set = load_fashion_mnist(args.dataset, "train")
    test_set = load_fashion_mnist(args.dataset, "test")
    known = {f.name for f in fields(TrainConfig)}
    ours = {k: v for k, v in load_card(args.recipe_from).training["settings"].items() if k in known}
    # The encoders are compared: neither trains a domain check, which would only add time.
    recipes = {"tutorial": TrainConfig(arch="tutorial", epochs=1000, time_budget=args.budget,
                                       patience=1000, seed=args.seed, domain=False),
               "ours": TrainConfig(**{**ours, "epochs": 1000, "time_budget": args.budget,
                                     "patience": 1000, "seed": args.seed, "domain": False})}
    # With --json, stdout carries the JSON alone; training's progress goes to stderr.
    def report(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout)

    results = []
    for name, config in recipes.items():
        report(f"== {name}: {args.budget:.0f} s budget")
        card = train(train_set, config, Path(args.out) / name, report=report)
        embedder = Embedder.load(Path(args.out) / name)
        e = embedder.embed(test_set.images)
        pairs = pair_metrics(e, test_set.labels, embedder.threshold, seed=20261128).metrics
        results.append({"recipe": name, "epochs": card.training["history"][-1]["epoch"],
                        "train_seconds": card.training["train_seconds"],
                        "val_loss": card.validation["contrastive_loss"],
                        "test_loss": pairs["contrastive_loss"], "test_accuracy": pairs["accuracy"],
                        "test_roc_auc": pairs["roc_auc"],
                        "test_recall@1": retrieval_metrics(e, test_set.labels, ks=(1,))["recall@1"]})
    base = results[0]["val_loss"]
    for r in results:
        r["val_loss_vs_tutorial"] = r["val_loss"] / base
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        keys = list(results[0])
        print(format_table(keys, [[r[k] for k in keys] for r in results]))
    return 0
