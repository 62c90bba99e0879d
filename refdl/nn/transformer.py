r"""``nn.Transformer`` (PyTorch's encoder-decoder) and its causal mask.

The pieces live in their own files, and every one of them is importable from here too
(``from refdl.nn.transformer import PatchEmbed``), as before the split:

* refdl/nn/transformer_encoder.py: TransformerEncoderLayer, TransformerEncoder, and the
  residual sub-layer plumbing (norm, dropout, feed-forward) the decoder layer shares;
* refdl/nn/transformer_decoder.py: TransformerDecoderLayer, TransformerDecoder;
* refdl/nn/vision_transformer.py: PatchEmbed, patchify, the windowed (Swin-like) encoder.

Every block's backward is the chain rule over its children, written out, with the
gradients of a value that fans out *added* (the residual stream: x feeds both the
sub-layer and the skip connection, so dL/dx = g + sub.backward(g); self-attention uses
x three times, as query, key and value, so its three returned gradients are summed;
cross-attention uses the encoder's output, the memory, twice, as key and value, and a
decoder stack uses it once per layer, so its gradients are summed too).
The children record their own per-call caches; a block records only a small cache of
its own (the output's shape, to check the upstream gradient).
Derivations: docs/derivations/transformer.md (encoder, patches, windows) and
docs/derivations/decoder.md (decoder, nn.Transformer, masks).

Masks follow MultiheadAttention's convention (boolean True = NOT allowed to attend, float
added to the scores): use ``Transformer.generate_square_subsequent_mask(L)`` (float, 0 on
and below the diagonal, -inf above) or ``nn.causal_block_mask(L)`` for a causal mask, or
``is_causal=True`` / ``tgt_is_causal=True`` alone.
"""
import numpy as np

from .. import init
from .validate import check_float, check_grad, layer_name
from .module import Module
from .normalization import LayerNorm
from .transformer_decoder import TransformerDecoder, TransformerDecoderLayer
from .transformer_encoder import BlockCache, TransformerEncoder, TransformerEncoderLayer
from .vision_transformer import (PatchEmbed, PatchMerging, WindowedEncoder,  # noqa: F401
                                 WindowedEncoderLayer, patchify, shifted_window_mask,
                                 unpatchify, window_partition, window_reverse)

__all__ = ["TransformerEncoderLayer", "TransformerEncoder", "TransformerDecoderLayer",
           "TransformerDecoder", "Transformer", "PatchEmbed", "patchify",
           "unpatchify", "window_partition", "window_reverse", "shifted_window_mask",
           "WindowedEncoderLayer", "PatchMerging", "WindowedEncoder"]


class Transformer(Module):
    r"""Encoder-decoder Transformer, ``torch.nn.Transformer``.

    Transformer(d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                dim_feedforward=2048, dropout=0.1, activation='relu', custom_encoder=None,
                custom_decoder=None, layer_norm_eps=1e-5, batch_first=False,
                norm_first=False, bias=True)

    ``encoder`` = TransformerEncoder(layer, num_encoder_layers, norm=LayerNorm(d_model)),
    ``decoder`` = TransformerDecoder(layer, num_decoder_layers, norm=LayerNorm(d_model))
    (PyTorch's keys: ``encoder.layers.0...``, ``encoder.norm.weight``, ``decoder...``).
    Every parameter with more than one dimension is re-initialised Xavier-uniform, as in
    PyTorch.

    forward(src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
            src_key_padding_mask=None, tgt_key_padding_mask=None,
            memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
            memory_is_causal=False)
    src (S, N, E), tgt (T, N, E) ((N, S, E), (N, T, E) with batch_first; unbatched
    (S, E), (T, E)) -> (T, N, E):
        m = encoder(src, src_mask),   y = decoder(tgt, m, tgt_mask, memory_mask)
    backward(grad_out) -> (dsrc, dtgt):
        (dtgt, dm) = decoder.backward(g),   dsrc = encoder.backward(dm)
    A causal tgt_mask: ``Transformer.generate_square_subsequent_mask(T)``.
    Derivation: docs/derivations/decoder.md, section 3.
    """

    def __init__(self, d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                 dim_feedforward=2048, dropout=0.1, activation="relu", custom_encoder=None,
                 custom_decoder=None, layer_norm_eps=1e-5, batch_first=False,
                 norm_first=False, bias=True, dtype=np.float32, generator=None):
        super().__init__()
        kw = dict(dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
                  layer_norm_eps=layer_norm_eps, batch_first=batch_first,
                  norm_first=norm_first, bias=bias, dtype=dtype, generator=generator)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            self.encoder = TransformerEncoder(
                TransformerEncoderLayer(d_model, nhead, **kw), num_encoder_layers,
                LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype))
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            self.decoder = TransformerDecoder(
                TransformerDecoderLayer(d_model, nhead, **kw), num_decoder_layers,
                LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype))
        self.d_model, self.nhead = int(d_model), int(nhead)
        self.batch_first = bool(batch_first)
        for p in self.parameters():
            if p.data.ndim > 1:
                init.xavier_uniform_(p, generator=generator)

    def extra_repr(self):
        return f"d_model={self.d_model}, nhead={self.nhead}, batch_first={self.batch_first}"

    @staticmethod
    def generate_square_subsequent_mask(sz, device=None, dtype=np.float32):
        """The (sz, sz) float causal mask: 0 on and below the diagonal, -inf above.

        Added to the scores, it lets position i attend to j <= i only. A float mask means
        the same to MultiheadAttention and scaled_dot_product_attention, so it cannot be
        read in the wrong boolean convention. ``device`` is accepted and ignored.
        """
        sz = int(sz)
        return np.triu(np.full((sz, sz), -np.inf, dtype=dtype), k=1)

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
                src_key_padding_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                memory_is_causal=False):
        src = check_float(self, src, "src")
        tgt = check_float(self, tgt, "tgt")
        if src.ndim == 3 and tgt.ndim == 3:
            ax = 0 if self.batch_first else 1
            if src.shape[ax] != tgt.shape[ax]:
                raise ValueError(f"{layer_name(self)}: the batch number of src and tgt must "
                                 f"be equal, got src {tuple(src.shape)} and tgt "
                                 f"{tuple(tgt.shape)} (batch axis {ax})")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise ValueError(f"{layer_name(self)}: the feature number of src and tgt must be "
                             f"equal to d_model = {self.d_model}, got src {tuple(src.shape)} "
                             f"and tgt {tuple(tgt.shape)}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                              is_causal=src_is_causal)
        y = self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                         tgt_key_padding_mask=tgt_key_padding_mask,
                         memory_key_padding_mask=memory_key_padding_mask,
                         tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
        if self.recording:
            self.save_for_backward(BlockCache(y_shape=y.shape))
        return y

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y_shape)
        dtgt, dm = self.decoder.backward(g)
        return self.encoder.backward(dm), dtgt
