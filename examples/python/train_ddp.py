"""Data-parallel training with torch's own DistributedDataParallel and torchrun, quest inside.

    torchrun --standalone --nproc-per-node 2 examples/python/train_ddp.py --out runs/ddp
    python examples/python/train_ddp.py --out runs/one            # the same run in one process

A small sequence classifier (token embedding -> quest.MultiheadAttention -> mean pool -> linear) on
a synthetic task (is the most frequent token of the sequence odd?), fixed seeds throughout. Each rank
trains its contiguous shard of every global batch; DDP (gloo) averages the gradients, so with equal
shards every step applies the one-process gradient and the loss curve equals one process's up to
float32 reduction order. Rank 0 writes losses.json and an atomic checkpoint (model.pt: the plain
module's state_dict, loadable in one process without DDP). --compile wraps the model in
torch.compile (DDP's optimizer splits the graph at its gradient buckets).
"""
import argparse
import json
import os

import torch
import torch.distributed as dist
from torch import nn

import quest


class Classifier(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, kind: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.attn = quest.MultiheadAttention(dim, heads, batch_first=True, kind=kind)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(self.norm(x + y).mean(1))


def dataset(n: int, length: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(vocab, (n, length), generator=g)
    labels = (tokens.mode(1).values % 2).long()
    return tokens, labels


def save_atomic(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory for losses.json and model.pt (rank 0)")
    p.add_argument("--kind", default="quest", choices=quest.KINDS)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32, help="global batch (split over the ranks)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = p.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the {world} ranks (equal shards)")
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    torch.set_num_threads(1)
    model = Classifier(vocab=16, dim=32, heads=4, kind=args.kind)
    trained = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if args.compile:
        trained = torch.compile(trained)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    tokens, labels = dataset(args.steps * args.batch, 12, 16, seed=1)
    shard = args.batch // world
    losses = []
    for step in range(args.steps):
        lo = step * args.batch + rank * shard
        x, y = tokens[lo:lo + shard], labels[lo:lo + shard]
        loss = nn.functional.cross_entropy(trained(x), y)
        optimizer.zero_grad()
        loss.backward()  # DDP: gradients averaged over the ranks, bucket by bucket during backward
        optimizer.step()
        global_loss = loss.detach().clone()
        if world > 1:
            dist.all_reduce(global_loss)
            global_loss /= world
        losses.append(global_loss.item())
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        save_atomic(model.state_dict(), os.path.join(args.out, "model.pt"))
        with torch.no_grad():
            eval_tokens, eval_labels = dataset(256, 12, 16, seed=2)
            accuracy = (model(eval_tokens).argmax(1) == eval_labels).float().mean().item()
        with open(os.path.join(args.out, "losses.json"), "w") as f:
            json.dump({"world": world, "kind": args.kind, "compile": args.compile, "losses": losses,
                       "eval_accuracy": accuracy}, f)
        print(f"world {world}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, eval accuracy {accuracy:.3f}")
    if world > 1:
        # every rank leaves together: a rank that tore down its gloo pairs while rank 0 was still
        # saving and evaluating could abort ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
