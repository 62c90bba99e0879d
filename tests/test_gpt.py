"""The small GPT (refdl.models.gpt), the text utilities (refdl.data.text) and the
``refdl train --model gpt`` / ``refdl sample`` commands."""
import copy
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import refdl
from refdl import nn
from refdl.cli import main
from refdl.data.text import (CharVocab, bigram_baseline, eval_windows, load_text,
                             random_windows, split_ids)
from refdl.gradcheck import check_module
from refdl.models import available_models, get_model
from refdl.models.gpt import GPT, train_gpt


def tiny(tie=True, dropout=0.0, seed=0, **kw):
    refdl.manual_seed(seed)
    cfg = dict(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=4, dropout=dropout,
               tie_weights=tie)
    cfg.update(kw)
    return GPT(**cfg)


def ids(shape, seed=1, V=7):
    return np.random.default_rng(seed).integers(0, V, shape)


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("tie", [True, False])
def test_gpt_gradcheck_every_parameter(tie):
    m = tiny(tie=tie, dropout=0.1)
    # weights large enough that attention and the head are not nearly constant
    for p in m.parameters():
        if p.data.ndim >= 2:
            p.data *= 20
    res = check_module(m, ids((2, 4)), wrt=[])
    names = {t.name for t in res.tensors}
    assert "tok_emb.weight" in names and "pos_emb.weight" in names
    assert ("head.weight" in names) == (not tie)          # tied: one Parameter, listed once
    assert len(res.tensors) == len(list(m.parameters()))


def test_tied_gradient_is_the_sum_of_the_lookup_and_head_gradients():
    untied = tiny(tie=False).to(np.float64)
    untied.head.weight.data[...] = untied.tok_emb.weight.data      # same values, two Parameters
    tied = tiny(tie=True).to(np.float64)
    tied.load_state_dict(untied.state_dict())
    assert tied.head.weight is tied.tok_emb.weight
    x = ids((3, 5), seed=2)
    g = np.random.default_rng(3).standard_normal((3, 5, 7))
    for m in (untied, tied):
        m.zero_grad()
        np.testing.assert_allclose(tied(x) if m is tied else untied(x),
                                   untied(x) if m is tied else tied(x), rtol=1e-12)
        m.discard_saved()
        m(x)
        assert m.backward(g) is None                      # integer input: no gradient
    np.testing.assert_allclose(tied.tok_emb.weight.grad,
                               untied.tok_emb.weight.grad + untied.head.weight.grad,
                               rtol=1e-12, atol=1e-14)
    assert tied.num_parameters() == untied.num_parameters() - 7 * 4


def test_gpt_is_causal():
    m = tiny().to(np.float64)
    x = ids((2, 5), seed=4)
    with refdl.no_grad():
        a = m(x)
        x2 = x.copy()
        x2[:, 3:] = (x2[:, 3:] + 1) % 7
        b = m(x2)
    np.testing.assert_allclose(b[:, :3], a[:, :3], rtol=1e-13)
    assert not np.allclose(b[:, 3:], a[:, 3:])


def test_gpt_block_is_the_decoder_layer_without_cross_attention():
    """GPT's blocks (pre-norm encoder layers with is_causal) follow the decoder's
    conventions: each equals a TransformerDecoderLayer whose cross-attention is silenced."""
    m = tiny().to(np.float64)
    blk = m.blocks[0]
    dec = nn.TransformerDecoderLayer(4, 2, 16, dropout=0.0, activation="gelu",
                                     batch_first=True, norm_first=True).to(np.float64)
    sd = {("norm3" + k[5:] if k.startswith("norm2") else k): v
          for k, v in blk.state_dict().items()}
    dsd = dec.state_dict()
    dsd.update(sd)
    dsd["multihead_attn.out_proj.weight"][...] = 0
    dsd["multihead_attn.out_proj.bias"][...] = 0
    dec.load_state_dict(dsd)
    x = np.random.default_rng(5).standard_normal((2, 5, 4))
    with refdl.no_grad():
        np.testing.assert_allclose(
            dec(x, x, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5)),
            blk(x, is_causal=True), rtol=1e-12)


def test_gpt_state_dict_and_registry():
    m = tiny()
    keys = list(m.state_dict())
    assert keys[:2] == ["tok_emb.weight", "pos_emb.weight"]
    assert "blocks.1.self_attn.in_proj_weight" in keys and keys[-1] == "head.weight"
    assert "gpt" in available_models()
    g = get_model("gpt", vocab_size=11, n_embd=8, n_head=2, n_layer=1, block_size=6)
    assert isinstance(g, GPT) and g(ids((1, 6), V=11)).shape == (1, 6, 11)
    # deep copies keep the tie
    c = copy.deepcopy(m)
    assert c.head.weight is c.tok_emb.weight


def test_gpt_bad_input():
    m = tiny()
    with pytest.raises(TypeError, match="expected integer token ids"):
        m(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="sequence length 6 exceeds block_size 5"):
        m(ids((1, 6)))
    with pytest.raises(ValueError, match=r"expected token ids of shape \(N, T\)"):
        m(ids((6,)))
    with pytest.raises(ValueError, match="n_embd must be divisible by n_head"):
        GPT(5, n_embd=6, n_head=4)
    with pytest.raises(nn.CacheError, match="GPT"):
        tiny().backward(np.zeros((1, 2, 7), np.float32))


# ----------------------------------------------------------------------------- sampling
def test_generate_top_k_1_is_greedy_and_crops_the_context():
    m = tiny().to(np.float64)
    start = ids((2, 3), seed=6)
    out = m.generate(start, 6, top_k=1)
    assert out.shape == (2, 9) and np.array_equal(out[:, :3], start)
    ref = start.copy()
    with refdl.no_grad():
        for _ in range(6):
            logits = m.eval()(ref[:, -5:])[:, -1]
            ref = np.concatenate([ref, logits.argmax(-1)[:, None]], axis=1)
    m.train()
    np.testing.assert_array_equal(out, ref)
    a = m.generate(start, 5, temperature=0.7, generator=np.random.default_rng(1))
    b = m.generate(start, 5, temperature=0.7, generator=np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert m.training and all(mm.num_saved == 0 for mm in m.modules())


def test_generate_samples_from_the_softmax():
    """With a 1-token vocabulary context, the next-token frequencies match softmax(logits/T)."""
    m = tiny(n_layer=1).to(np.float64)
    start = np.array([[3]])
    with refdl.no_grad():
        logits = m.eval()(start)[0, -1]
    m.train()
    p = np.exp(logits / 0.5 - (logits / 0.5).max())
    p /= p.sum()
    rng = np.random.default_rng(0)
    draws = np.array([m.generate(start, 1, temperature=0.5, generator=rng)[0, -1]
                      for _ in range(3000)])
    freq = np.bincount(draws, minlength=7) / 3000
    assert np.abs(freq - p).max() < 4 * math.sqrt(0.25 / 3000)


# --------------------------------------------------------------------------------- text
def test_bigram_baseline_equals_the_counting_formula():
    tr = np.array([0, 1, 0, 1, 1, 2, 0])
    va = np.array([1, 0, 2, 2])
    loss, alpha = bigram_baseline(tr, va, 3, alphas=(0.5,))
    counts = {}
    for a, b in zip(tr[:-1], tr[1:]):
        counts[(a, b)] = counts.get((a, b), 0) + 1
    terms = []
    for a, b in zip(va[:-1], va[1:]):
        row = sum(counts.get((a, c), 0) for c in range(3))
        terms.append(-math.log((counts.get((a, b), 0) + 0.5) / (row + 0.5 * 3)))
    assert alpha == 0.5 and loss == pytest.approx(np.mean(terms), rel=1e-12)


def test_text_windows_vocab_and_bundled_corpus():
    text = load_text()
    assert len(text) > 20000 and "iris" in text.lower()
    v = CharVocab.from_text("hello world")
    assert v.decode(v.encode("hold")) == "hold" and len(v) == 8
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v.encode("xyz")
    tr, va = split_ids(np.arange(100), 0.1)
    assert len(tr) == 90 and va[0] == 90
    x, y = random_windows(np.arange(50), 8, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(y, x + 1)
    x, y = eval_windows(np.arange(50), 8, 5)
    assert x.shape == (5, 8) and x[0, 0] == 0 and y[-1, -1] == 49


def test_gpt_loss_goes_below_the_bigram_baseline_on_a_tiny_text():
    """A text where the previous character does not decide the next one (after ' ' comes
    any of four words), but the two before it do ('x a ' ends every 'ax', ...): a bigram
    model cannot know which word follows; the GPT, with context, can. Fixed seed."""
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "owl", "eel"]
    pairs = {"cat": "dog", "dog": "eel", "owl": "cat", "eel": "owl"}
    w, parts = "cat", []
    for _ in range(700):
        parts.append(w)
        w = pairs[w] if rng.random() < 0.9 else words[rng.integers(4)]
    text = " ".join(parts)
    v = CharVocab.from_text(text)
    tr, va = split_ids(v.encode(text), 0.1)
    baseline, _ = bigram_baseline(tr, va, len(v))
    refdl.manual_seed(0)
    m = GPT(len(v), block_size=16, n_layer=1, n_head=2, n_embd=32)
    with threadpool_limits(1):
        hist = train_gpt(m, tr, va, steps=150, batch_size=16, lr=1e-2, eval_interval=50,
                         seed=0)
    assert hist["val_loss"][0] > baseline                 # untrained: worse than bigram
    assert hist["val_loss"][-1] < baseline - 0.2, (hist["val_loss"], baseline)


def test_train_gpt_steps_lr_schedule_and_a_diverging_loss(monkeypatch):
    """train_gpt runs on refdl.train.run_steps: the history counts the steps, the learning
    rate follows the warm-up then the cosine (closed form), and a NaN loss at step 2 stops
    it with the house's NonFiniteLossError naming step 2, before that step's update."""
    import math

    import refdl.models.gpt as gpt_module
    from refdl.train import NonFiniteLossError
    ids = np.arange(400) % 7
    refdl.manual_seed(0)
    m = GPT(7, block_size=8, n_layer=1, n_head=1, n_embd=8)
    hist = train_gpt(m, ids, ids, steps=6, batch_size=2, lr=1.0, warmup=2, eval_interval=3)
    assert hist["steps_done"] == 6 and len(hist["loss"]) == 6 and hist["step"] == [0, 3, 6]
    cosine = [0.1 + 0.45 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(3, 7)]
    np.testing.assert_allclose(hist["lr"], [0.5, 1.0] + cosine, rtol=1e-12)

    real, seen = gpt_module.lm_loss, []

    def nan_at_step_2(model, loss_fn, x, y):
        loss, shape = real(model, loss_fn, x, y)
        seen.append([p.data.copy() for p in model.parameters()])
        return (float("nan") if len(seen) == 2 else loss), shape

    monkeypatch.setattr(gpt_module, "lm_loss", nan_at_step_2)
    with pytest.raises(NonFiniteLossError, match="at step 2;") as e:
        train_gpt(m, ids, ids, steps=4, batch_size=2, eval_interval=10)
    assert e.value.step == 2
    for p, before in zip(m.parameters(), seen[1]):     # step 2 did not update
        np.testing.assert_array_equal(p.data, before)
    m.discard_saved()


# ---------------------------------------------------------------------------------- CLI
@pytest.fixture
def tiny_text(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("the quick brown fox jumps over the lazy dog.\n" * 30, encoding="utf-8")
    return p


def test_cli_train_gpt_then_sample(tmp_path, tiny_text, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "gpt", "--text", str(tiny_text), "--steps", "12",
               "--eval-interval", "6", "--block-size", "16", "--n-embd", "16", "--n-layer",
               "1", "--out", str(out), "--no-plots", "--batch-size", "8"])
    o = capsys.readouterr().out
    assert rc == 0, o
    assert "bigram baseline" in o and "validation loss" in o
    assert (out / "checkpoint.npz").exists() and (out / "sample.txt").exists()
    args = ["sample", str(out / "checkpoint.npz"), "--prompt", "the ", "--chars", "20",
            "--temperature", "0.8", "--top-k", "3", "--seed", "5"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ") and len(first) == len("the ") + 20 + 1
    assert set(first[:-1]) <= set("the quick brown fox jumps over the lazy dog.\n")
    assert main(args) == 0 and capsys.readouterr().out == first       # seeded
    # mistakes: one line on stderr, exit status 2
    assert main(["sample", str(out / "checkpoint.npz"), "--prompt", "Z"]) == 2
    assert "not in the model's vocabulary: 'Z'" in capsys.readouterr().err
    assert main(["train", "--model", "gpt", "--text", str(tiny_text), "--out", str(out)]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(["train", "--model", "gpt", "--text", str(tmp_path / "none.txt")]) == 2
    assert "no such text file" in capsys.readouterr().err


def test_cli_sample_refuses_a_classifier_checkpoint(tmp_path, capsys):
    from refdl.checkpoint import save_checkpoint
    ck = save_checkpoint(tmp_path / "c.npz", nn.Linear(2, 2))
    assert main(["sample", str(ck)]) == 2
    assert "not a text model's checkpoint" in capsys.readouterr().err
