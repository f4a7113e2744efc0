"""psparse inside Hugging Face transformers (the optional ``transformers`` extra).

``register(spec)`` adds an attention function to transformers' ``AttentionInterface`` and a mask
function to its ``AttentionMaskInterface`` under one name (default ``"psparse"``), so a model
loaded with ``attn_implementation="psparse"`` runs every layer's attention under the spec:

* Prefill (and any call without a :class:`PsparseCache`) runs ``patterndsl.compile(spec)``'s
  sparse kernels with the layer's index (``layers`` lines), the module's ``scaling`` and grouped
  query heads as they are (no repeated KV heads).
* With a :class:`PsparseCache` as ``generate()``'s cache, each layer's keys and values go into a
  :class:`patterndsl.retention.cache.KVCache` that stores only what the spec's ``kv = ...`` policy
  retains, and every step after the prompt decodes over those keys.

Padding: the mask function hands the attention the 2D padding mask itself (``[batch, keys]``,
True = a real token), not a dense 4D mask: the pattern comes from the spec.  Pads are never
attended and never stored, and positions count real tokens only (a left-padded prompt's first
token is position 0, as in transformers' own ``position_ids``).  The model's own mask pattern
(causal, sliding window, extra overlays) is replaced by the spec's.
"""
from __future__ import annotations

import inspect
import weakref

import torch
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

from ..attention import CompiledPattern, _depends_on_n, compile as _compile
from ..errors import PsparseUsageError
from ..spec import Spec, parse

__all__ = ["register", "registered", "PsparseCache", "PsparseAttention"]

# name -> PsparseAttention: what register() installed under each attn_implementation name.
_REGISTERED: dict[str, "PsparseAttention"] = {}


def register(spec_or_specs, name: str = "psparse", backend: str | None = None) -> "PsparseAttention":
    """Register psparse attention with transformers under ``name`` (the value to pass as
    ``attn_implementation``) and return it.

    ``spec_or_specs``: one spec (text or :class:`~patterndsl.spec.Spec`; ``layers`` lines give
    per-layer patterns) or a list with one spec per decoder layer.  ``backend``: as in
    :func:`patterndsl.compile` (default: Triton on CUDA, the torch backend on the CPU).
    Registering a name again replaces what it ran."""
    if not isinstance(name, str) or not name or name in _RESERVED:
        raise PsparseUsageError(
            f"name={name!r}: expected a new attention name, not one of transformers' own "
            f"({', '.join(sorted(_RESERVED))})")
    integration = PsparseAttention(spec_or_specs, name=name, backend=backend)
    AttentionInterface.register(name, integration.attention)
    AttentionMaskInterface.register(name, integration.mask)
    _REGISTERED[name] = integration
    return integration


def registered(name: str = "psparse") -> "PsparseAttention":
    """What :func:`register` installed under ``name``."""
    try:
        return _REGISTERED[name]
    except KeyError:
        raise PsparseUsageError(f"nothing is registered under {name!r}: call "
                                "patterndsl.integrations.transformers.register(spec) first") from None


_RESERVED = frozenset({"eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3",
                       "flash_attention_4", "paged|eager"})


def _as_spec(spec) -> Spec:
    return spec if isinstance(spec, Spec) else parse(spec)


class PsparseAttention:
    """The attention and mask functions one :func:`register` call installs, and the factory of
    the caches that go with them (:meth:`cache`)."""

    def __init__(self, spec_or_specs, *, name: str = "psparse", backend: str | None = None):
        if isinstance(spec_or_specs, (list, tuple)):
            if not spec_or_specs:
                raise PsparseUsageError("an empty list of specs: give one spec per layer")
            specs = [_as_spec(s) for s in spec_or_specs]
            for i, s in enumerate(specs):
                if s.has_layers:
                    raise PsparseUsageError(
                        f"spec {i} of the list has `layers` lines: a list already gives one spec "
                        "per layer; use either a list or one spec with `layers` lines")
            self.per_layer = True
        else:
            specs = [_as_spec(spec_or_specs)]
            self.per_layer = False
        for s in specs:
            if s.needs_doc_ids:
                raise PsparseUsageError(
                    "this spec uses `document`, whose ids transformers does not pass to attention")
        self.specs = specs
        self.name = name
        self.backend = backend
        # Compiling validates the backend now rather than at the first forward.
        self._compiled: dict[tuple[int, int], CompiledPattern] = {}
        for s in specs:
            _compile(s, backend=backend)

    def __repr__(self) -> str:
        texts = [s.canonical() for s in self.specs]
        return f"PsparseAttention({texts if self.per_layer else texts[0]!r}, name={self.name!r})"

    def cache(self, *, max_len: int | None = None, rows: int = 1) -> "PsparseCache":
        """A :class:`PsparseCache` for a model running this attention."""
        return PsparseCache(self, max_len=max_len, rows=rows)

    # -- which pattern runs a layer --------------------------------------------
    def pattern(self, layer: int, num_layers: int) -> tuple[CompiledPattern, int]:
        """The compiled pattern of decoder layer ``layer`` and the layer index to call it with."""
        if self.per_layer:
            if len(self.specs) != num_layers:
                raise PsparseUsageError(
                    f"{len(self.specs)} specs were registered for a model with {num_layers} "
                    "layers: give one spec per layer")
            key, spec, index = (layer, 1), self.specs[layer], 0
        else:
            key, spec, index = (-1, num_layers), self.specs[0], layer
        attn = self._compiled.get(key)
        if attn is None:
            attn = _compile(spec, backend=self.backend, num_layers=1 if self.per_layer else num_layers)
            self._compiled[key] = attn
        return attn, index

    # -- AttentionMaskInterface ------------------------------------------------
    def mask(self, batch_size: int, q_length=None, kv_length: int = 0, q_offset=0,
             kv_offset: int = 0, mask_function=None, attention_mask=None, **kwargs):
        """The padding mask ``[batch, kv_length]`` (True = a real token), or None without padding.
        ``mask_function`` (the model's own pattern) is not used: the spec is the pattern.  (Early
        transformers 5 releases pass ``cache_position`` instead of ``q_length``/``q_offset``:
        neither is needed.)"""
        if int(kv_offset):
            # Positions would count from the first key the cache still holds, not from 0.
            raise PsparseUsageError(
                "the model's cache has dropped keys (a sliding-window or chunked layer): psparse "
                "attention needs every key or a PsparseCache, which applies the spec's own kv policy")
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2:
            raise PsparseUsageError(
                f"psparse attention reads a 2D padding mask [batch, keys]; got one of shape "
                f"{list(attention_mask.shape)}")
        m = attention_mask.to(torch.bool)
        need = kv_offset + kv_length
        if m.shape[1] < need:  # slots past the mask (a preallocated cache) hold no token
            m = torch.nn.functional.pad(m, (0, need - m.shape[1]), value=False)
        m = m[:, kv_offset:need]
        return None if bool(m.all()) else m

    # -- AttentionInterface ----------------------------------------------------
    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                  **kwargs):
        """``query [B, Hq, Nq, D]``, ``key``/``value [B, Hkv, Nk, D]`` -> ``([B, Nq, Hq, Dv], None)``."""
        if dropout:
            raise PsparseUsageError("psparse attention has no attention dropout: set the model's "
                                    "attention_dropout to 0 (or call model.eval())")
        layer = getattr(module, "layer_idx", None)
        if not isinstance(layer, int):
            raise PsparseUsageError("psparse attention needs the attention module's layer_idx")
        config = getattr(module, "config", None)
        num_layers = getattr(config, "num_hidden_layers", None) if config is not None else None
        if not isinstance(num_layers, int):
            raise PsparseUsageError("psparse attention needs config.num_hidden_layers on the "
                                    "attention module")
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() != 2:
            raise PsparseUsageError(
                f"psparse attention got a {attention_mask.dim()}D attention mask: it reads the 2D "
                "padding mask its own mask function makes (load the model with "
                f"attn_implementation={self.name!r} and pass a 2D attention_mask)")
        attn, index = self.pattern(layer, num_layers)
        scale = None if scaling is None else float(scaling)
        link = getattr(key, "_psparse_link", None)
        Nk = key.shape[2]
        if link is None:
            # Keys and values are the whole sequence (no cache, or transformers' own cache).
            if attention_mask is not None and attention_mask.shape[1] != Nk:
                raise PsparseUsageError(
                    f"the padding mask covers {attention_mask.shape[1]} keys but attention got "
                    f"{Nk}: a psparse attention runs with a PsparseCache or a cache that returns "
                    "every key")
            out = _sparse(attn, query, key, value, attention_mask, layer=index, scale=scale)
        else:
            cache = link[0]()
            if cache is None or cache.attention is not self:
                raise PsparseUsageError(
                    f"this PsparseCache was made for another registration than {self.name!r}: "
                    "make it with registered(name).cache()")
            out = cache._attend(link, module, attn, index, query, key, value, attention_mask, scale)
        return out.transpose(1, 2).contiguous(), None


def _sparse(attn, q, k, v, valid, *, layer: int, scale):
    """Attention of the last ``Nq`` of ``Nk`` slots over the ``Nk`` keys under the pattern, where
    ``valid [B, Nk]`` (None: all) marks real tokens: each element's real tokens are moved to the
    front so the pattern's positions count them only, and the rows are moved back (pad rows get 0).
    """
    B, Hq, Nq, _ = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    if valid is None:
        return attn(q, k, v, scale=scale, layer=layer)
    valid = valid.to(device=k.device, dtype=torch.bool)
    rank = valid.cumsum(1) - 1                       # position of each real key in its element
    lens = valid.sum(1).tolist()
    qvalid = valid[:, Nk - Nq:]
    by_n = any(_depends_on_n(r.expr) for r in attn.spec.canonical_ir.rules)
    groups: dict[tuple, list] = {}
    for b in range(B):
        rows = qvalid[b].nonzero().flatten()
        if rows.numel() == 0:
            continue
        pos = rank[b, Nk - Nq + rows]
        if bool((pos != pos[0] + torch.arange(pos.numel(), device=pos.device)).any()):
            raise PsparseUsageError("padding between the new tokens of a batch element: psparse "
                                    "supports left or right padding only")
        start = int(pos[0])
        # Elements of different real lengths share a call through kv_lens unless the pattern's
        # pairs depend on the length (negative indices, random, blockwise).
        groups.setdefault((start, lens[b] if by_n else None), []).append((b, rows))
    out = q.new_zeros((B, Hq, Nq, Dv))
    for (start, _), members in groups.items():
        n = max(lens[b] for b, _ in members)
        r = max(rows.numel() for _, rows in members)
        qc = q.new_zeros((len(members), Hq, r, q.shape[3]))
        kc = k.new_zeros((len(members), Hkv, n, k.shape[3]))
        vc = v.new_zeros((len(members), Hkv, n, Dv))
        for i, (b, rows) in enumerate(members):
            keys = valid[b].nonzero().flatten()
            kc[i, :, : keys.numel()] = k[b][:, keys]
            vc[i, :, : keys.numel()] = v[b][:, keys]
            qc[i, :, : rows.numel()] = q[b][:, rows]
        kl = [lens[b] for b, _ in members]
        kv_lens = None if len(set(kl)) == 1 else torch.tensor(kl, device=k.device)
        o = attn(qc, kc, vc, scale=scale, layer=layer, q_offset=start, kv_lens=kv_lens)
        for i, (b, rows) in enumerate(members):
            out[b][:, rows] = o[i, :, : rows.numel()]
    return out


def _takes_queries(kv) -> bool:
    return "q" in inspect.signature(kv.update).parameters


class _PsparseLayer(CacheLayerMixin):
    """transformers' view of one layer of a :class:`PsparseCache`: how many slots (pads included)
    it has seen.  The keys themselves live in the psparse KVCache."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self):
        super().__init__()
        self.is_initialized = False   # not set by the mixin before transformers 5
        self.seen = 0
        self.pending = False   # an update whose keys no psparse attention has taken yet

    def lazy_initialization(self, key_states, value_states=None) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen += key_states.shape[2]
        return key_states, value_states

    def get_mask_sizes(self, query_length) -> tuple[int, int]:
        # Early transformers 5 releases pass the queries' cache_position tensor instead.
        if isinstance(query_length, torch.Tensor):
            query_length = query_length.shape[0]
        return self.seen + int(query_length), 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    get_max_cache_shape = get_max_length   # its name in early transformers 5 releases

    def reset(self) -> None:
        self.seen = 0
        self.pending = False

    def _unsupported(self, *args, **kwargs):
        raise PsparseUsageError("a PsparseCache cannot be reordered, cropped or repeated "
                                "(beam search, assisted or contrastive decoding): use greedy "
                                "decoding or sampling")

    reorder_cache = crop = batch_repeat_interleave = batch_select_indices = _unsupported


class PsparseCache(Cache):
    """A transformers ``Cache`` whose layers store only the keys the spec's ``kv = ...`` policy
    retains, in a :class:`patterndsl.retention.cache.KVCache` (made by
    ``CompiledPattern.kv_cache`` at the first forward, from the keys' batch, heads, dtype and
    device).  Pass it as ``generate(..., cache=...)`` (``past_key_values=`` in older
    transformers) to a model loaded with the registered ``attn_implementation``.

    ``max_len``: the most keys a layer whose policy has no bound may grow to; ``rows``: the most
    tokens one forward after the prompt may bring (the KVCache's lookback; greedy decoding and
    sampling bring one)."""

    def __init__(self, attention: PsparseAttention | str = "psparse", *, max_len: int | None = None,
                 rows: int = 1):
        if isinstance(attention, str):
            attention = registered(attention)
        if not isinstance(attention, PsparseAttention):
            raise PsparseUsageError("PsparseCache(attention): expected what register() returned "
                                    "or its name")
        super().__init__(layer_class_to_replicate=_PsparseLayer)
        self.attention = attention
        self.max_len = max_len
        self.rows = rows
        self._kv: dict[int, tuple] = {}   # layer -> (KVCache, its layer index)
        self._shared = None               # one spec: one KVCache for every layer

    def __repr__(self) -> str:
        return f"PsparseCache({self.attention!r}, layers={len(self.layers)})"

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(_PsparseLayer())
        layer = self.layers[layer_idx]
        if layer.pending:
            raise PsparseUsageError(
                f"layer {layer_idx}'s last keys were never taken by psparse attention: a "
                f"PsparseCache needs a model loaded with attn_implementation={self.attention.name!r}")
        past = layer.seen
        keys, values = layer.update(key_states, value_states)
        layer.pending = True
        # The attention function finds this cache through the very key tensor it is handed;
        # a weak reference, so a tensor kept by the caller does not keep the cache alive.
        keys._psparse_link = (weakref.ref(self), layer_idx, past)
        return keys, values

    def reset(self):
        super().reset()
        self._kv.clear()
        self._shared = None

    # -- the psparse KV caches ---------------------------------------------------
    def kv(self, layer: int):
        """``(KVCache, index)``: the psparse cache holding ``layer`` and the layer index in it
        (``None`` before the layer's first forward)."""
        return self._kv.get(layer)

    def _kv_for(self, layer, num_layers, attn, q, k):
        got = self._kv.get(layer)
        if got is not None:
            return got
        if self.attention.per_layer:
            got = (self._make(attn, 1, q, k), 0)
        else:
            if self._shared is None:
                self._shared = self._make(attn, num_layers, q, k)
            got = (self._shared, layer)
        self._kv[layer] = got
        return got

    def _make(self, attn, num_layers, q, k):
        B, Hq, _, D = q.shape
        options = {}
        takes = inspect.signature(attn.kv_cache).parameters
        # The decode backend follows register()'s; KVCache picks one by device otherwise.
        if self.attention.backend is not None and "backend" in takes:
            options["backend"] = self.attention.backend
        if self.rows != 1:
            if "rows" not in takes:
                raise PsparseUsageError("this psparse's KV cache decodes one row at a time: rows=1")
            options["rows"] = self.rows
        return attn.kv_cache(num_layers, B, k.shape[1], D, num_heads=Hq, dtype=k.dtype,
                             device=k.device, max_len=self.max_len, **options)

    def _attend(self, link, module, attn, index, q, k, v, valid, scale):
        _, layer_idx, past = link
        layer = self.layers[layer_idx]
        layer.pending = False
        kv, i = self._kv_for(layer_idx, module.config.num_hidden_layers, attn, q, k)
        t = k.shape[2]
        new_valid = None if valid is None else valid[:, -t:].to(device=k.device, dtype=torch.bool)
        if new_valid is not None and bool(new_valid.all()):
            new_valid = None
        extra = {} if new_valid is None else {"valid": new_valid}
        if past == 0:
            # The prompt: the sparse kernel over its own keys, then keep what the policy retains
            # (score terms such as snap read the prompt's queries, where the cache takes them).
            out = _sparse(attn, q, k, v, new_valid, layer=index, scale=scale)
            if _takes_queries(kv):
                extra.update(q=q, scale=scale)
            kv.update(i, k, v, **extra)
            return out
        if new_valid is not None:
            raise PsparseUsageError("padding among tokens after the prompt: a PsparseCache "
                                    "decodes real tokens only")
        kv.update(i, k, v, **extra)
        return kv.decode(i, q, scale=scale)

    # -- what it holds ---------------------------------------------------------------
    def held(self, layer: int) -> list[int]:
        """Keys stored now for each KV head of ``layer`` (the most over batch elements)."""
        got = self._kv.get(layer)
        return [] if got is None else got[0].held(got[1])

    def nbytes(self) -> int:
        """Bytes of the tensors the psparse KV caches hold now (keys, values, positions and any
        per-key scores)."""
        seen, total = set(), 0
        for c, _ in self._kv.values():
            if id(c) in seen:
                continue
            seen.add(id(c))
            for value in vars(c).values():
                items = value if isinstance(value, (list, tuple)) else [value]
                total += sum(t.numel() * t.element_size() for t in items if isinstance(t, torch.Tensor))
        return total
