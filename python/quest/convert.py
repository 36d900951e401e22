"""quest.convert: put quest attention into an existing PyTorch model."""
import warnings

from torch import nn

from .nn import MultiheadAttention


def convert(module: nn.Module, kind: str = "quest", **options) -> nn.Module:
    """Replaces every torch.nn.MultiheadAttention inside `module` by a quest.MultiheadAttention
    of `kind` with the same configuration and the same parameters (shared, not copied), and
    returns the model. Children are replaced in place; a `module` that is itself a
    torch.nn.MultiheadAttention comes back as a new module. `options` are quest's keyword-only
    extras (scale, qknorm_init_scale, backend, check_finite, causal).

    kind="standard" keeps the model's function (the same outputs to fp32 rounding); the other
    kinds change it, and the model is then fine-tuned or trained from scratch. qknorm and
    qk_layernorm add parameters (initialised as in quest's own modules): build the optimizer
    after converting.
    """
    if isinstance(module, nn.MultiheadAttention):
        return MultiheadAttention.from_torch(module, kind, **options)
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, MultiheadAttention.from_torch(child, kind, **options))
                replaced += 1
    # torch 2.x's TransformerEncoder decides in __init__, from its first layer's attention, whether
    # eval-mode forwards pack padded batches into nested tensors for its native fast path; that
    # decision was made for torch's attention, and quest's module takes no nested tensors.
    for m in module.modules():
        if isinstance(m, nn.TransformerEncoder) and any(
                isinstance(c, MultiheadAttention) for c in m.modules()):
            m.use_nested_tensor = False
    if replaced == 0:
        warnings.warn("quest.convert: the model has no torch.nn.MultiheadAttention; nothing "
                      "was replaced", stacklevel=2)
    return module
