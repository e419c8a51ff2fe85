"""The model runner: a BLOOM forward pass with our own per-sequence KV cache and batched LoRA.

Why our own forward instead of `model(...)` / `generate`: continuous batching needs a KV cache
whose rows (sequences) join and leave between decode steps, each row at its own length, and one
forward pass that applies a *different* LoRA adapter to each row. HF's BLOOM forward builds the
ALiBi bias and masks from a 2-D attention mask every step and PEFT's mixed-adapter path loops over
adapters per module; both cost more than the maths at the sizes we serve on CPU (see
docs/performance.md). The weights are the HF model's own modules, so numerics match HF (tested).

Layout: the cache of a batch is one tensor per layer `[B, H, capacity, D]`, right-padded: row b
holds its positions 0..len_b-1 and ALiBi uses the absolute key index, exactly as an unpadded
single-sequence run would. LoRA weights of every loaded adapter live in a stacked *bank* per target
module (`A [S, R, in]`, `B [S, out, R]` with the scaling folded in, slot 0 = zeros = base model);
a batch gathers its rows' slots and does two `bmm`s per module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_LORA_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
CACHE_CHUNK = 64  # grow the cache's length capacity in steps of this many positions


class AdapterFormatError(ValueError):
    """An adapter directory this runner cannot serve (unsupported PEFT type, targets, shapes)."""


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes, the same as transformers' BLOOM `_get_alibi_slopes`."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != num_heads:
        extra_base = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        n_extra = min(closest, num_heads - closest)
        slopes += [extra_base ** (2 * i + 1) for i in range(n_extra)]
    return torch.tensor(slopes, dtype=torch.float32)


@dataclass
class LoadedAdapter:
    """An adapter's tensors, ready to be installed in a runner slot (built off the decode thread)."""

    method: str  # "lora" | "prompt_tuning"
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # module -> (A, B*scale)
    prompt_embeddings: torch.Tensor | None = None  # [n_virtual, hidden]


def read_peft_adapter(path: Path, hidden_size: int, module_shapes: dict[str, tuple[int, int]]) -> LoadedAdapter:
    """Read a PEFT LoRA or prompt-tuning directory into plain tensors, validating every shape."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not cfg_file.is_file() or not weights_file.is_file():
        raise AdapterFormatError(f"{path} is not a PEFT adapter (adapter_config.json / adapter_model.safetensors missing)")
    cfg = json.loads(cfg_file.read_text())
    weights = load_file(str(weights_file))
    peft_type = cfg.get("peft_type")
    if peft_type == "PROMPT_TUNING":
        emb = weights.get("prompt_embeddings")
        if emb is None or emb.ndim != 2 or emb.shape[1] != hidden_size:
            raise AdapterFormatError(f"prompt-tuning adapter at {path} has no prompt_embeddings of width {hidden_size}")
        return LoadedAdapter(method="prompt_tuning", prompt_embeddings=emb.float())
    if peft_type != "LORA":
        raise AdapterFormatError(f"unsupported PEFT type {peft_type!r} (served: LORA, PROMPT_TUNING)")
    if cfg.get("use_dora") or cfg.get("modules_to_save") or cfg.get("fan_in_fan_out"):
        raise AdapterFormatError("DoRA, modules_to_save and fan_in_fan_out LoRA adapters are not served")
    r_default, alpha_default = cfg["r"], cfg["lora_alpha"]
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    out = LoadedAdapter(method="lora")
    for key, a in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = weights.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise AdapterFormatError(f"{key}: lora_B missing")
        if module not in module_shapes:
            raise AdapterFormatError(f"LoRA target {module!r} is not a servable module ({', '.join(SUPPORTED_LORA_TARGETS)})")
        out_f, in_f = module_shapes[module]
        if a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
            raise AdapterFormatError(f"{module}: LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit the base model")
        r = next((v for k, v in rank_pattern.items() if module.endswith(k)), r_default)
        alpha = next((v for k, v in alpha_pattern.items() if module.endswith(k)), alpha_default)
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out.lora[module] = (a.float(), b.float() * scale)
    if not out.lora:
        raise AdapterFormatError(f"LoRA adapter at {path} has no lora_A/lora_B weights")
    return out


class LoraBank:
    """All loaded adapters' LoRA factors for one Linear module, stacked by slot (slot 0 = none)."""

    def __init__(self, in_features: int, out_features: int, slots: int, dtype: torch.dtype, device: torch.device):
        self.A = torch.zeros(slots, 1, in_features, dtype=dtype, device=device)
        self.B = torch.zeros(slots, out_features, 1, dtype=dtype, device=device)

    def grow(self, slots: int, rank: int) -> None:
        """Make room for `slots` slots of rank up to `rank` (zero padding is exact: it adds nothing)."""
        s, r, i = self.A.shape
        o = self.B.shape[1]
        if slots <= s and rank <= r:
            return
        s2, r2 = max(s, slots), max(r, rank)
        A = torch.zeros(s2, r2, i, dtype=self.A.dtype, device=self.A.device)
        B = torch.zeros(s2, o, r2, dtype=self.B.dtype, device=self.B.device)
        A[:s, :r], B[:s, :, :r] = self.A, self.B
        self.A, self.B = A, B

    def set(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        self.A[slot].zero_()
        self.B[slot].zero_()
        if a is not None:
            self.grow(slot + 1, a.shape[0])
            self.A[slot, : a.shape[0]] = a
            self.B[slot, :, : b.shape[1]] = b


@dataclass
class BatchCache:
    """KV cache of the running batch: per layer `[B, H, capacity, D]`, plus each row's length."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    lens: torch.Tensor  # [B] int64

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @property
    def size(self) -> int:
        return self.lens.shape[0]


class BloomRunner:
    """Runs prefill and decode steps of a BLOOM-architecture model over a ragged batch."""

    def __init__(self, model: nn.Module):
        cfg = model.config
        if getattr(cfg, "model_type", None) != "bloom":
            raise ValueError(f"the batched runner serves BLOOM-architecture models, not {cfg.model_type!r}")
        self.model = model.eval()
        tr = model.transformer
        self.emb, self.emb_ln, self.blocks, self.ln_f = tr.word_embeddings, tr.word_embeddings_layernorm, tr.h, tr.ln_f
        self.lm_head = model.lm_head
        self.n_head = cfg.n_head
        self.hidden = cfg.hidden_size
        self.head_dim = self.hidden // self.n_head
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.post_ln_residual = cfg.apply_residual_connection_post_layernorm
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        # fp32, like transformers' `build_alibi_tensor`: in bf16 `slope * position` would round positions > 256
        self.slopes = alibi_slopes(self.n_head).to(self.device)
        self.module_shapes: dict[str, tuple[int, int]] = {}
        for i, block in enumerate(self.blocks):
            for name, lin in (
                ("self_attention.query_key_value", block.self_attention.query_key_value),
                ("self_attention.dense", block.self_attention.dense),
                ("mlp.dense_h_to_4h", block.mlp.dense_h_to_4h),
                ("mlp.dense_4h_to_h", block.mlp.dense_4h_to_h),
            ):
                self.module_shapes[f"transformer.h.{i}.{name}"] = (lin.out_features, lin.in_features)
        self.banks: dict[str, LoraBank] = {}
        self.n_slots = 1
        self.prompt_embeddings: dict[int, torch.Tensor] = {}

    # ---- adapters -------------------------------------------------------------------------------
    def read_adapter(self, path: Path) -> LoadedAdapter:
        return read_peft_adapter(path, self.hidden, self.module_shapes)

    def install(self, slot: int, adapter: LoadedAdapter) -> None:
        """Put an adapter's tensors in `slot` (called on the decode thread, between steps)."""
        self.n_slots = max(self.n_slots, slot + 1)
        for bank in self.banks.values():
            bank.grow(self.n_slots, 1)
        if adapter.method == "prompt_tuning":
            self.prompt_embeddings[slot] = adapter.prompt_embeddings.to(self.device, self.dtype)
            return
        for module, (a, b) in adapter.lora.items():
            if module not in self.banks:
                out_f, in_f = self.module_shapes[module]
                self.banks[module] = LoraBank(in_f, out_f, self.n_slots, self.dtype, self.device)
            bank = self.banks[module]
            bank.grow(self.n_slots, a.shape[0])
            bank.set(slot, a.to(self.device, self.dtype), b.to(self.device, self.dtype))

    def uninstall(self, slot: int) -> None:
        self.prompt_embeddings.pop(slot, None)
        for bank in self.banks.values():
            if slot < bank.A.shape[0]:
                bank.set(slot, None, None)

    # ---- forward --------------------------------------------------------------------------------
    def _linear(self, name: str, lin: nn.Linear, x: torch.Tensor, lora: dict | None) -> torch.Tensor:
        """Decode-step projection: base Linear plus each row's own LoRA (two `bmm`s)."""
        y = lin(x)
        if lora is not None and name in lora:
            A, B = lora[name]  # [B, R, in], [B, out, R] gathered for this batch
            y = y + torch.bmm(torch.bmm(x, A.transpose(1, 2)), B.transpose(1, 2))
        return y

    def _gather_lora(self, slots: torch.Tensor) -> dict | None:
        """Per-module (A, B) for this batch's rows; None when no row uses a LoRA slot."""
        if not self.banks or bool((slots == 0).all()):
            return None
        out = {}
        uniform = bool((slots == slots[0]).all())
        for name, bank in self.banks.items():
            if slots.max() >= bank.A.shape[0]:
                continue
            if uniform:  # one adapter for the whole batch: broadcast views instead of copies
                s = int(slots[0])
                out[name] = (bank.A[s : s + 1].expand(len(slots), -1, -1), bank.B[s : s + 1].expand(len(slots), -1, -1))
            else:
                out[name] = (bank.A[slots], bank.B[slots])
        return out

    def _packed_linear(self, groups: list[tuple[int, torch.Tensor | None]]):
        """Prefill projection over packed tokens `[1, N, in]`: LoRA added per adapter slot's token group.

        `groups` is [(slot, token index or None for all tokens)]; slot 0 (the bare base) is skipped.
        Why groups, not per-token gathers: a prompt has many tokens but a prefill has few distinct
        adapters, so one pair of matmuls per adapter beats gathering `[N, R, in]` factor copies.
        """
        def linear(name: str, lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
            y = lin(x)
            bank = self.banks.get(name)
            if bank is None:
                return y
            for slot, idx in groups:
                if slot == 0 or slot >= bank.A.shape[0]:
                    continue
                A, B = bank.A[slot], bank.B[slot]  # [R, in], [out, R]
                if idx is None:
                    y = y + (x @ A.T) @ B.T
                else:
                    y.index_add_(1, idx, (x[:, idx] @ A.T) @ B.T)
            return y

        return linear

    def _blocks(self, h: torch.Tensor, linear, attend) -> torch.Tensor:
        """Run every block. `linear(name, module, x)` adds LoRA; `attend(layer, q, k, v)` writes the
        cache and returns the attention context `[B, T, hidden]` (prefill and decode differ only there)."""
        B, T, _ = h.shape
        for li, block in enumerate(self.blocks):
            ln = block.input_layernorm(h)
            residual = ln if self.post_ln_residual else h
            pre = f"transformer.h.{li}."
            qkv = linear(pre + "self_attention.query_key_value", block.self_attention.query_key_value, ln)
            qkv = qkv.view(B, T, self.n_head, 3, self.head_dim)
            q, k, v = (qkv[..., j, :].transpose(1, 2) for j in range(3))
            ctx = attend(li, q, k, v)
            out = linear(pre + "self_attention.dense", block.self_attention.dense, ctx) + residual
            ln2 = block.post_attention_layernorm(out)
            residual = ln2 if self.post_ln_residual else out
            mid = block.mlp.gelu_impl(linear(pre + "mlp.dense_h_to_4h", block.mlp.dense_h_to_4h, ln2))
            h = linear(pre + "mlp.dense_4h_to_h", block.mlp.dense_4h_to_h, mid) + residual
        return h

    def kv_bytes_per_token(self) -> int:
        """Cache bytes one position of one sequence holds (K and V, every layer)."""
        return 2 * len(self.blocks) * self.hidden * (torch.finfo(self.dtype).bits // 8)

    def new_cache(self, batch: int, capacity: int) -> BatchCache:
        capacity = CACHE_CHUNK * math.ceil(max(capacity, 1) / CACHE_CHUNK)
        shape = (batch, self.n_head, capacity, self.head_dim)
        L = len(self.blocks)
        return BatchCache(
            k=[torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(L)],
            v=[torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(L)],
            lens=torch.zeros(batch, dtype=torch.long, device=self.device),
        )

    def _causal_alibi(self, length: int) -> torch.Tensor:
        """`[H, L, L]` bias of one unpadded sequence: `slope_h * j`, -inf where j > t (as HF's BLOOM)."""
        pos = torch.arange(length, device=self.device)
        bias = (self.slopes[:, None, None] * pos[None, None, :].float()).to(self.dtype)
        return bias.expand(-1, length, -1).masked_fill(pos[None, :] > pos[:, None], torch.finfo(self.dtype).min)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], slots: list[int], reserve: int) -> tuple[torch.Tensor, BatchCache]:
        """Encode fresh prompts, *packed*: no padding positions (a prompt-tuning slot prepends its virtual tokens).

        The prompts are concatenated into one `[1, N, hidden]` sequence, so every projection (the bulk
        of the cost at real sizes) runs on exactly the N real tokens; attention runs per prompt on its
        own segment (its own causal ALiBi bias), writing that row of the cache. The old right-padded
        prefill computed `B * max_len` positions: 4 prompts of 7/40/130/300 tokens cost 1200
        positions instead of 477 (docs/performance.md).

        Returns last-position logits `[B, V]` and a cache with room for `reserve` more tokens.
        """
        embeds = []
        for ids, slot in zip(prompts, slots, strict=True):
            e = self.emb(torch.tensor(ids, dtype=torch.long, device=self.device))
            if slot in self.prompt_embeddings:
                e = torch.cat([self.prompt_embeddings[slot], e], dim=0)
            embeds.append(e)
        lens = [e.shape[0] for e in embeds]
        starts = [0]
        for n in lens:
            starts.append(starts[-1] + n)
        B, T = len(embeds), max(lens)
        h = self.emb_ln(torch.cat(embeds)[None])  # [1, N, hidden]
        cache = self.new_cache(B, T + reserve)
        biases = {n: self._causal_alibi(n) for n in set(lens)}

        def attend(li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            ctx = torch.empty(1, self.n_head, starts[-1], self.head_dim, dtype=q.dtype, device=q.device)
            for b in range(B):
                s, e = starts[b], starts[b + 1]
                kb, vb = k[:, :, s:e], v[:, :, s:e]
                cache.k[li][b, :, : e - s] = kb[0]
                cache.v[li][b, :, : e - s] = vb[0]
                ctx[:, :, s:e] = F.scaled_dot_product_attention(q[:, :, s:e], kb, vb, attn_mask=biases[e - s],
                                                                 scale=self.scale)
            return ctx.transpose(1, 2).reshape(1, starts[-1], self.hidden)

        # prompt-tuning rows run on the base weights (their adapter is the prefix, not LoRA)
        lora_slots = [0 if s in self.prompt_embeddings else s for s in slots]
        groups: list[tuple[int, torch.Tensor | None]] = []
        if len(set(lora_slots)) == 1:
            groups = [(lora_slots[0], None)]
        else:
            for slot in sorted(set(lora_slots) - {0}):
                idx = torch.cat([torch.arange(starts[b], starts[b + 1]) for b in range(B) if lora_slots[b] == slot])
                groups.append((slot, idx.to(self.device)))
        h = self._blocks(h, self._packed_linear(groups), attend)
        cache.lens = torch.tensor(lens, dtype=torch.long, device=self.device)
        last = self.ln_f(h[0, torch.tensor(starts[1:], device=self.device) - 1])
        return self.lm_head(last).float(), cache

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, cache: BatchCache, slots: torch.Tensor) -> torch.Tensor:
        """One decode step: `tokens [B]` appended at each row's length; returns logits `[B, V]`."""
        tokens, slots = tokens.to(self.device), slots.to(self.device)
        B = tokens.shape[0]
        need = int(cache.lens.max()) + 1
        if need > cache.capacity:
            self.grow(cache, need)
        h = self.emb_ln(self.emb(tokens[:, None]))
        key_len = need
        pos = torch.arange(key_len, device=self.device)
        bias = (self.slopes[None, :, None, None] * pos.float()).to(self.dtype).expand(B, -1, 1, -1)
        bias = bias.masked_fill((pos[None, :] > cache.lens[:, None])[:, None, None, :], torch.finfo(self.dtype).min)
        lora = self._gather_lora(slots)
        rows, write_pos = torch.arange(B, device=self.device), cache.lens

        def attend(li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            cache.k[li][rows, :, write_pos] = k[:, :, 0]  # one new position per row, each at its own length
            cache.v[li][rows, :, write_pos] = v[:, :, 0]
            keys, values = cache.k[li][:, :, :key_len], cache.v[li][:, :, :key_len]
            ctx = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=self.scale)
            return ctx.transpose(1, 2).reshape(B, 1, self.hidden)

        h = self._blocks(h, lambda name, lin, x: self._linear(name, lin, x, lora), attend)
        cache.lens = cache.lens + 1
        return self.lm_head(self.ln_f(h[:, 0])).float()

    # ---- cache surgery (between steps) ----------------------------------------------------------
    def grow(self, cache: BatchCache, need: int) -> None:
        cap = CACHE_CHUNK * math.ceil(need / CACHE_CHUNK)
        pad = cap - cache.capacity
        cache.k = [F.pad(t, (0, 0, 0, pad)) for t in cache.k]
        cache.v = [F.pad(t, (0, 0, 0, pad)) for t in cache.v]

    def merge(self, a: BatchCache | None, b: BatchCache) -> BatchCache:
        """Append the rows of `b` (freshly prefilled) to the running cache `a`."""
        if a is None or a.size == 0:
            return b
        cap = max(a.capacity, b.capacity)
        for c in (a, b):
            if c.capacity < cap:
                self.grow(c, cap)
        return BatchCache(
            k=[torch.cat([x, y]) for x, y in zip(a.k, b.k, strict=True)],
            v=[torch.cat([x, y]) for x, y in zip(a.v, b.v, strict=True)],
            lens=torch.cat([a.lens, b.lens]),
        )

    def keep(self, cache: BatchCache, rows: list[int]) -> BatchCache | None:
        """Keep only `rows` (finished sequences leave); trims capacity no row needs any more."""
        if not rows:
            return None
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        lens = cache.lens[idx]
        cap = min(cache.capacity, CACHE_CHUNK * math.ceil((int(lens.max()) + 1) / CACHE_CHUNK))
        return BatchCache(
            k=[t[idx, :, :cap] for t in cache.k], v=[t[idx, :, :cap] for t in cache.v], lens=lens
        )

    def repeat_rows(self, cache: BatchCache, counts: list[int]) -> BatchCache:
        """Duplicate row i `counts[i]` times (n completions share one prefill)."""
        idx = torch.repeat_interleave(torch.arange(cache.size, device=self.device),
                                      torch.tensor(counts, device=self.device))
        return BatchCache(k=[t[idx] for t in cache.k], v=[t[idx] for t in cache.v], lens=cache.lens[idx])
