"""``refdl summary MODEL``: a registered model's output shape and parameter count, layer
by layer."""
from .. import models
from ..random import manual_seed
from ..summary import summary
from .common import UserError, parse_shape

# one example's shape for each model layout when --input-shape is not given
DEFAULT_INPUT_SHAPE = {"flat": (64,), "image": (1, 8, 8), "sequence": (8, 8)}


def cmd_summary(args):
    """``refdl summary MODEL``: build the model and print its layer table."""
    avail = models.available_models()
    if args.model not in avail:
        raise UserError(f"unknown model {args.model!r}; available: {', '.join(sorted(avail))}")
    if models.model_layout(args.model) == "text":      # token ids, not arrays of floats
        return _summarise_text_model(args)
    shape = parse_shape(args.input_shape) if args.input_shape else \
        DEFAULT_INPUT_SHAPE.get(models.model_layout(args.model), (64,))
    manual_seed(0)
    try:
        model = models.get_model(args.model, num_classes=args.num_classes, input_shape=shape)
        print(f"{args.model}: input (N, {', '.join(map(str, shape))})")
        summary(model, (args.batch,) + shape)
    except (ValueError, TypeError) as e:
        raise UserError(f"{args.model} with input shape {shape}: {e}") from None
    return 0


def _summarise_text_model(args):
    """A language model's top-level parts (its input is token ids, --num-classes its
    vocabulary size)."""
    manual_seed(0)
    model = models.get_model(args.model, vocab_size=args.num_classes)
    print(f"{args.model} (vocab_size={args.num_classes}): input (N, T) integer ids, "
          f"output (N, T, {args.num_classes}) logits")
    for name, child in model.named_children():
        print(f"  {name:<10} {type(child).__name__:<28} "
              f"{child.num_parameters():>10,} parameters")
    print(f"  total {model.num_parameters():,} trainable parameters (a tied weight "
          "counts once)")
    return 0
