"""Per-head attention diagnostics from Python: quest.HeadDiagnostics and quest.record_diagnostics."""
from dataclasses import dataclass
from typing import Dict, Iterator, Tuple

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class HeadDiagnostics:
    """One attention call's per-head statistics, each a float64 tensor of shape (H,): norms of the
    raw q and k rows (before any normalisation; keys: the non-padded ones), the largest |logit|
    over visible pairs, the mean attention entropy over rows that see at least one key, and the
    largest signed logit over visible pairs (-inf where a head sees none; what QK-clip reads)."""
    q_norm_mean: Tensor
    q_norm_max: Tensor
    k_norm_mean: Tensor
    k_norm_max: Tensor
    logit_abs_max: Tensor
    entropy_mean: Tensor
    logit_max: Tensor

    # The rows of the operators' (7, H) diagnostics tensor, in order.
    FIELDS = ("q_norm_mean", "q_norm_max", "k_norm_mean", "k_norm_max", "logit_abs_max",
              "entropy_mean", "logit_max")

    @classmethod
    def from_tensor(cls, t: Tensor) -> "HeadDiagnostics":
        if t.dim() != 2 or t.size(0) != len(cls.FIELDS):
            raise ValueError(f"quest: a diagnostics tensor has shape ({len(cls.FIELDS)}, H), got {tuple(t.shape)}")
        return cls(*t.unbind(0))

    def __str__(self) -> str:
        lines = ["head " + " ".join(f"{f:>13}" for f in self.FIELDS)]
        rows = torch.stack([getattr(self, f) for f in self.FIELDS], 1)
        for h, row in enumerate(rows.tolist()):
            lines.append(f"{h:>4} " + " ".join(f"{x:>13.4g}" for x in row))
        return "\n".join(lines)


class record_diagnostics:
    """Records per-head diagnostics of every quest.MultiheadAttention inside `model` while active:

        with quest.record_diagnostics(model) as rec:
            model(x)
        for name, d in rec.items():      # module name -> HeadDiagnostics of its latest call
            print(name, d.logit_abs_max.max())

    Diagnostics are computed inside the attention pass (no N x N buffer); recording is turned off
    again on exit, and what was recorded stays readable."""

    def __init__(self, model: nn.Module):
        from .nn import MultiheadAttention  # here: nn imports this module
        self._modules = [(name, m) for name, m in model.named_modules()
                         if isinstance(m, MultiheadAttention)]
        if not self._modules:
            raise ValueError("quest.record_diagnostics: the model has no quest.MultiheadAttention "
                             "(quest.convert replaces torch.nn.MultiheadAttention)")
        self._snapshot: Dict[str, HeadDiagnostics] = {}
        self._active = False

    def __enter__(self) -> "record_diagnostics":
        self._previous = [m.record_diagnostics for _, m in self._modules]
        for _, m in self._modules:
            m.record_diagnostics = True
            m.last_diagnostics = None
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._snapshot = self._read()
        for (_, m), previous in zip(self._modules, self._previous):
            m.record_diagnostics = previous
        self._active = False

    def _read(self) -> Dict[str, HeadDiagnostics]:
        return {name: HeadDiagnostics.from_tensor(m.last_diagnostics)
                for name, m in self._modules if m.last_diagnostics is not None}

    def items(self) -> Iterator[Tuple[str, HeadDiagnostics]]:
        return iter((self._read() if self._active else self._snapshot).items())

    def __getitem__(self, name: str) -> HeadDiagnostics:
        return dict(self.items())[name]
