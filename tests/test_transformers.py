"""The transformers integration: a small randomly initialised Llama (from a config, nothing
downloaded) generating with ``attn_implementation="psparse"`` against dense attention under the
spec's reference mask (``Spec.mask``), with the retention cache, left padding and per-layer specs."""
import copy
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

import patterndsl  # noqa: E402
from patterndsl.errors import PsparseUsageError  # noqa: E402
from patterndsl.integrations.transformers import PsparseCache, register, registered  # noqa: E402

SPEC = "causal & (sink(4) | local(16))\nkv = auto"
BOUND = 4 + 17          # sinks + the window of 16 and the query's own key
PROMPT, NEW = 24, 40
NEG = torch.finfo(torch.float32).min
# Later transformers 5 releases renamed generate()'s past_key_values= to cache=.
CACHE = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters \
    else "past_key_values"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The model's tensors are tiny: on a shared 2-core box, torch's thread pool only adds waits.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _config(**over):
    cfg = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               pad_token_id=0, bos_token_id=1, eos_token_id=None, initializer_range=0.1)
    cfg.update(over)
    return LlamaConfig(**cfg)


def _model(attn_implementation, config=None, seed=0):
    torch.manual_seed(seed)
    config = copy.deepcopy(config or _config())
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()


def _twin(model, attn_implementation):
    """The same weights under another attention implementation."""
    other = AutoModelForCausalLM.from_config(copy.deepcopy(model.config),
                                             attn_implementation=attn_implementation).eval()
    other.load_state_dict(model.state_dict())
    return other


def _prompts(lengths, seed=1, pad_id=0):
    """Left-padded prompts: ids and the 2D attention mask."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, 128, (len(lengths), width), generator=g)
    am = torch.ones_like(ids)
    for b, n in enumerate(lengths):
        am[b, : width - n] = 0
        if pad_id is not None:
            ids[b, : width - n] = pad_id
    return ids, am


def _generate(model, ids, am, steps, cache=None):
    kw = {} if cache is None else {CACHE: cache}
    out = model.generate(input_ids=ids, attention_mask=am, max_new_tokens=steps, do_sample=False,
                         return_dict_in_generate=True, output_logits=True, **kw)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, 1)


def _dense_greedy(model, ids, am, steps, mask_of_length):
    """Greedy decoding without a cache, each step a full forward of transformers' eager attention
    with a 4D mask: element b's real tokens (positions counted from its first real token) under
    ``mask_of_length(L)`` [L, L], pads masked."""
    seq, mask, tokens, logits = ids, am, [], []
    for _ in range(steps):
        B, N = seq.shape
        full = torch.full((B, 1, N, N), NEG)
        for b in range(B):
            real = mask[b].bool().nonzero().flatten()
            allowed = mask_of_length(real.numel())
            full[b, 0, real[:, None], real[None, :]] = torch.where(allowed, 0.0, NEG)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            lg = model(input_ids=seq, attention_mask=full, position_ids=pos, use_cache=False).logits[:, -1]
        nxt = lg.argmax(-1, keepdim=True)
        tokens.append(nxt)
        logits.append(lg)
        seq = torch.cat([seq, nxt], 1)
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype)], 1)
    return torch.cat(tokens, 1), torch.stack(logits, 1)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def streaming():
    integration = register(SPEC)
    eager = _model("eager")
    return integration, eager, _twin(eager, "psparse")


def _kept_rule(n):
    """What `kv = auto` must hold for causal & (sink(4) | local(16)) once n positions were
    appended: every key the query at n - 1 or a later one may attend."""
    return [k for k in range(n) if k < 4 or k >= n - 1 - 16]


def test_generate_matches_dense_eager_and_stays_at_the_bound(streaming):
    integration, eager, model = streaming
    spec = patterndsl.parse(SPEC)
    ids, am = _prompts([PROMPT])
    ref_tokens, ref_logits = _dense_greedy(eager, ids, am, NEW, spec.mask)
    # The pattern matters for this model: plain causal attention picks other tokens.
    causal_tokens, _ = _dense_greedy(eager, ids, am, NEW, patterndsl.parse("causal").mask)
    assert not torch.equal(causal_tokens, ref_tokens)

    cache = integration.cache()
    tokens, logits = _generate(model, ids, am, NEW, cache=cache)
    assert torch.equal(tokens, ref_tokens)
    assert _rel(logits, ref_logits) < 1e-5
    n = PROMPT + NEW - 1      # the last generated token is never fed back
    for layer in range(2):
        kv, index = cache.kv(layer)
        assert kv.bounded and kv.capacity == BOUND
        assert cache.held(layer) == [BOUND, BOUND]
        assert kv.lengths(index).tolist() == [n]
        for h in range(2):
            assert kv.positions(index, h).tolist() == _kept_rule(n)
    assert cache.get_seq_length() == n

    # Without a PsparseCache (transformers' own cache holds every key) the kernel runs over all.
    tokens2, logits2 = _generate(model, ids, am, NEW)
    assert torch.equal(tokens2, ref_tokens)
    assert _rel(logits2, ref_logits) < 1e-5


def test_left_padded_batch(streaming):
    integration, eager, model = streaming
    spec = patterndsl.parse(SPEC)
    lengths = [PROMPT, 15]
    ids, am = _prompts(lengths)
    ref_tokens, ref_logits = _dense_greedy(eager, ids, am, NEW, spec.mask)
    cache = PsparseCache(integration)
    tokens, logits = _generate(model, ids, am, NEW, cache=cache)
    assert torch.equal(tokens, ref_tokens)
    assert _rel(logits, ref_logits) < 1e-5
    kv, index = cache.kv(1)
    ns = [n + NEW - 1 for n in lengths]
    assert kv.lengths(index).tolist() == ns            # pads are not positions
    for b, n in enumerate(ns):
        assert kv.positions(index, 0, b).tolist() == _kept_rule(n)

    # Pads are never attended: other pad tokens change nothing for the real ones.
    ids2, _ = _prompts(lengths, pad_id=None)
    assert not torch.equal(ids2, ids)
    tokens2, logits2 = _generate(model, ids2, am, NEW, cache=PsparseCache("psparse"))
    assert torch.equal(tokens2, ref_tokens)
    assert _rel(logits2, ref_logits) < 1e-5

    # transformers' own cache: the kernel over every key, the pads moved out of the way.
    tokens3, logits3 = _generate(model, ids, am, 12)
    assert torch.equal(tokens3, ref_tokens[:, :12])
    assert _rel(logits3, ref_logits[:, :12]) < 1e-5


LAYER_SPECS = ["causal & local(5)\nkv = auto", "causal & (sink(2) | local(9))\nkv = auto"]
LAYERED = ("pattern = causal & (sink(2) | local(9))\nlayers 0 = causal & local(5)\nkv = auto")


def _dense_per_layer(name, specs, valid_of):
    """A test-only attention: dense float64 softmax under layer l's ``Spec.mask`` at each
    element's real length, pads masked (``valid_of()`` is the current [B, N] padding mask)."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        spec = specs[module.layer_idx]
        g = query.shape[1] // key.shape[1]
        k = key.double().repeat_interleave(g, 1)
        v = value.double().repeat_interleave(g, 1)
        logits = scaling * query.double() @ k.transpose(-1, -2)
        valid = valid_of()
        B, _, N, _ = logits.shape
        allowed = torch.zeros((B, N, N), dtype=torch.bool)
        for b in range(B):
            real = valid[b].nonzero().flatten()
            allowed[b, real[:, None], real[None, :]] = spec.mask(real.numel())
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
        p = torch.softmax(logits, -1).nan_to_num(0.0)
        return (p @ v).to(query.dtype).transpose(1, 2).contiguous(), None

    AttentionInterface.register(name, attention)


def _greedy_no_cache(model, ids, am, steps, state):
    seq, mask, tokens, logits = ids, am, [], []
    for _ in range(steps):
        state["valid"] = mask.bool()
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            lg = model(input_ids=seq, position_ids=pos, use_cache=False).logits[:, -1]
        nxt = lg.argmax(-1, keepdim=True)
        tokens.append(nxt)
        logits.append(lg)
        seq = torch.cat([seq, nxt], 1)
        mask = torch.cat([mask, torch.ones((seq.shape[0], 1), dtype=mask.dtype)], 1)
    return torch.cat(tokens, 1), torch.stack(logits, 1)


def test_per_layer_specs():
    specs = [patterndsl.parse(s) for s in LAYER_SPECS]
    state = {}
    _dense_per_layer("psparse_test_dense", specs, lambda: state["valid"])
    by_list = register(LAYER_SPECS, name="psparse_layers")
    by_lines = register(LAYERED, name="psparse_layered")
    eager = _model("eager", seed=3)
    ref_model = _twin(eager, "psparse_test_dense")
    ids, am = _prompts([20, 13], seed=4)
    steps = 24
    ref_tokens, ref_logits = _greedy_no_cache(ref_model, ids, am, steps, state)
    bounds = [6, 2 + 10]
    for integration in (by_list, by_lines):
        model = _twin(eager, integration.name)
        cache = integration.cache()
        tokens, logits = _generate(model, ids, am, steps, cache=cache)
        assert torch.equal(tokens, ref_tokens), integration
        assert _rel(logits, ref_logits) < 1e-5
        for layer, bound in enumerate(bounds):
            assert cache.held(layer) == [bound, bound]
    # Different patterns per layer do matter here: one pattern everywhere decodes otherwise.
    _dense_per_layer("psparse_test_dense_same", [specs[1], specs[1]], lambda: state["valid"])
    same_tokens, _ = _greedy_no_cache(_twin(eager, "psparse_test_dense_same"), ids, am, steps, state)
    assert not torch.equal(same_tokens, ref_tokens)


def test_bad_use():
    with pytest.raises(PsparseUsageError, match="document"):
        register("causal & document", name="psparse_doc")
    with pytest.raises(PsparseUsageError, match="layers"):
        register(["causal", "pattern = causal\nlayers 1 = causal & local(3)"], name="psparse_x")
    with pytest.raises(PsparseUsageError, match="transformers' own"):
        register("causal", name="sdpa")
    three = register(["causal", "causal", "causal"], name="psparse_three")
    eager = _model("eager")
    ids, am = _prompts([8])
    with pytest.raises(PsparseUsageError, match="3 specs were registered for a model with 2"):
        _twin(eager, three.name).generate(input_ids=ids, attention_mask=am, max_new_tokens=2)
    # A PsparseCache under a model whose attention is not psparse's keeps nothing: refused.
    integration = register(SPEC, name="psparse_bad")
    with pytest.raises(PsparseUsageError, match="attn_implementation='psparse_bad'"):
        eager.generate(input_ids=ids, attention_mask=am, max_new_tokens=3, do_sample=False,
                       **{CACHE: integration.cache()})
    model = _twin(eager, "psparse_bad")
    with pytest.raises(PsparseUsageError, match="beam search"):
        model.generate(input_ids=ids, attention_mask=am, max_new_tokens=3, num_beams=2,
                       **{CACHE: integration.cache()})
    # A cache made for one registration refuses another's attention.
    other = register(SPEC, name="psparse_other")
    with pytest.raises(PsparseUsageError, match="another registration"):
        model.generate(input_ids=ids, attention_mask=am, max_new_tokens=2, **{CACHE: other.cache()})
    model.train()
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    with pytest.raises(PsparseUsageError, match="dropout"):
        model(input_ids=ids, attention_mask=am)


def test_prefill_of_a_length_dependent_pattern():
    """A pattern whose pairs depend on n (negative indices): each element of a padded batch is
    resolved at its own real length, in one forward without a cache."""
    text = "causal & (local(3) | rows([-3:]) | cols([-5]))"
    spec = patterndsl.parse(text)
    state = {}
    _dense_per_layer("psparse_test_dense_n", [spec, spec], lambda: state["valid"])
    register(text, name="psparse_n")
    eager = _model("eager", seed=5)
    ids, am = _prompts([17, 11, 17], seed=6)
    state["valid"] = am.bool()
    with torch.no_grad():
        ref = _twin(eager, "psparse_test_dense_n")(input_ids=ids, attention_mask=am,
                                                   use_cache=False).logits
        got = _twin(eager, "psparse_n")(input_ids=ids, attention_mask=am, use_cache=False).logits
    real = am.bool()
    assert _rel(got[real], ref[real]) < 1e-5


def test_prefill_through_the_triton_kernels_interpreted(streaming):
    """The generated Triton kernels (Triton's interpreter on the CPU) in a padded prefill."""
    _, eager, _ = streaming
    register(SPEC, name="psparse_interpret", backend="interpret")
    ids, am = _prompts([PROMPT, 15], seed=7)
    with torch.no_grad():
        got = _twin(eager, "psparse_interpret")(input_ids=ids, attention_mask=am,
                                                use_cache=False).logits
    state = {"valid": am.bool()}
    spec = patterndsl.parse(SPEC)
    _dense_per_layer("psparse_test_dense_streaming", [spec, spec], lambda: state["valid"])
    with torch.no_grad():
        ref = _twin(eager, "psparse_test_dense_streaming")(input_ids=ids, attention_mask=am,
                                                           use_cache=False).logits
    real = am.bool()
    assert _rel(got[real], ref[real]) < 1e-5


def test_score_policies_stay_within_their_bound():
    """heavy (fed by the prompt's queries and every decode step) and snap (at the prompt's end)
    through generate() on a left-padded batch: the cache holds at most the policy's keys."""
    eager = _model("eager", seed=8)
    ids, am = _prompts([PROMPT, 15], seed=9)
    for name, text, bound in (
            ("psparse_heavy", "causal & (sink(4) | local(16))\nkv = sink(2) + recent(6) + heavy(5)",
             2 + 6 + 5),
            ("psparse_snap", "causal\nkv = snap(4, window=3, pool=3)", None)):
        integration = register(text, name=name)
        cache = integration.cache()
        tokens, _ = _generate(_twin(eager, name), ids, am, 12, cache=cache)
        assert tokens.shape == (2, 12)
        kv, index = cache.kv(0)
        lengths = kv.lengths(index).tolist()
        assert lengths == [PROMPT + 11, 15 + 11]
        for b, n in enumerate(lengths):
            kept = kv.positions(index, 0, b).tolist()
            if bound is not None:
                assert len(kept) <= bound and {0, 1} <= set(kept) and n - 1 in kept
            else:
                # snap keeps 4 + the window of 3 prompt keys, then every generated key.
                prompt = n - 11
                assert len([p for p in kept if p < prompt]) == 4 + 3
                assert [p for p in kept if p >= prompt] == list(range(prompt, n))


def test_a_cache_that_drops_keys_is_refused():
    """transformers' sliding-window cache layers drop old keys, which would shift every
    position the pattern sees: refused (a PsparseCache applies the spec's own policy)."""
    from transformers import MistralConfig
    register("causal & local(4)", name="psparse_sliding")
    config = MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           sliding_window=8, pad_token_id=0, eos_token_id=None)
    model = _model("psparse_sliding", config)
    ids, am = _prompts([12])
    with pytest.raises(PsparseUsageError, match="dropped keys"):
        model.generate(input_ids=ids, attention_mask=am, max_new_tokens=3, do_sample=False)
    tokens, _ = _generate(model, ids, am, 3, cache=registered("psparse_sliding").cache())
    assert tokens.shape == (1, 3)
