"""VideoLLaMA3 vision encoder (spec A, B): a packed SigLIP "NaViT" with 2D RoPE, then the m x m downsample.

Shape suffixes: P patches (packed over all images and frames), C vision hidden size, H heads, D head dim,
S attention segments (one per frame or image), M merged tokens, K = 3 * patch * patch = 588 pixel values.
Rows of ``pixel_values_PK`` are in merge-block order (spec A), so each merged token's m*m patches are
contiguous; every function here relies on that.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ... import ops, reference
from .config import VisionConfig

ATTENTION_BACKENDS = ("vl3fast", "reference")
DEFAULT_BACKEND = "vl3fast"
# Where frame pruning drops tokens.  "after" (the default) is the released model's semantics: every patch is
# encoded and the pruned merged tokens are dropped after the downsample.  "before" (opt-in): pruned patches
# never enter the encoder, and the kept ones keep their true (row, col) positions.
PRUNING_PLACEMENTS = ("after", "before")
DEFAULT_PRUNING = "after"


def attend(backend: str, q_PHD, k_PHD, v_PHD, cu_seqlens, pos_hw, *, theta: float, max_seqlen: int):
    """The one place the attention backend is chosen: ``"vl3fast"`` is the fused op; ``"reference"`` is the
    fp32-RoPE + per-segment SDPA oracle (it reads cu_seqlens on the host in every call)."""
    if backend == "vl3fast":
        return ops.rope2d_attention(q_PHD, k_PHD, v_PHD, cu_seqlens, pos_hw, theta=theta, max_seqlen=max_seqlen)
    if backend == "reference":
        return reference.rope2d_attention(q_PHD, k_PHD, v_PHD, cu_seqlens, pos_hw, theta=theta)
    raise ValueError(f"unknown attention backend {backend!r}; supported: {list(ATTENTION_BACKENDS)}")


def check_backend(backend: str) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; supported: {list(ATTENTION_BACKENDS)}")
    return backend


def check_pruning(placement: str) -> str:
    if placement not in PRUNING_PLACEMENTS:
        raise ValueError(f"pruning must be one of {list(PRUNING_PLACEMENTS)}, got {placement!r}")
    return placement


def _cpu_half_gemm_is_native(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` matrices natively (AVX512-BF16 / AMX).  Without them oneDNN
    emulates bf16 GEMMs, which measured 4-6x *slower* than fp32 GEMMs on the project's Xeon (AVX-512 only)."""
    probe = {torch.bfloat16: "_is_avx512_bf16_supported", torch.float16: "_is_amx_fp16_supported"}[dtype]
    fn = getattr(torch.cpu, probe, None)
    return bool(fn()) if fn is not None else False


# None: decide per dtype from the CPU (above); True / False force the fp32 GEMM path for bf16/fp16 on or off.
UPCAST_CPU_HALF_GEMM: bool | None = None
_NATIVE: dict[torch.dtype, bool] = {}


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)``, except that a bf16/fp16 GEMM on a CPU without native support for it runs as an fp32 GEMM
    of the upcast operands, rounded back to x's dtype.  Products of bf16 (fp16) values are exact in fp32 and
    the native kernels accumulate in fp32 too, so the result is the same bf16 linear up to summation order
    (the weights are converted per call: < 1% of the GEMM at vision-encoder sizes)."""
    w = layer.weight
    if x.device.type == "cpu" and w.dtype in (torch.bfloat16, torch.float16):
        upcast = UPCAST_CPU_HALF_GEMM
        if upcast is None:
            if w.dtype not in _NATIVE:
                _NATIVE[w.dtype] = _cpu_half_gemm_is_native(w.dtype)
            upcast = not _NATIVE[w.dtype]
        if upcast:
            bias = None if layer.bias is None else layer.bias.float()
            return F.linear(x.float(), w.float(), bias).to(x.dtype)
    return F.linear(x, w, layer.bias)


class Linear(nn.Linear):
    """nn.Linear whose forward is `linear` above.  Every parameterised layer of the encoder is called as a
    module, so wrappers that act in a module's own forward hooks (DeepSpeed ZeRO-3 gathers a module's
    partitioned parameters in its pre-forward hook, not recursively) see the layer run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self)


_QKV = ("q_proj", "k_proj", "v_proj")


class Attention(nn.Module):
    """q, k and v come from one GEMM: ``qkv`` holds ``[Wq; Wk; Wv]`` (``[3C, C]``).  The state dict keeps the
    checkpoint's ``q_proj`` / ``k_proj`` / ``v_proj`` keys: they are views of ``qkv`` (copying into them fills
    it), and ``load_state_dict`` concatenates them, so checkpoints and the key adapter never see ``qkv``."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        c = cfg.hidden_size
        self.num_heads, self.head_dim, self.theta = cfg.num_attention_heads, cfg.head_dim, cfg.rope_theta
        self.qkv = Linear(c, 3 * c)
        self.out_proj = Linear(c, c)
        self.register_state_dict_post_hook(_split_qkv)
        self.register_load_state_dict_pre_hook(_fuse_qkv)

    def forward(self, x_PC, cu_seqlens, pos_hw, max_seqlen: int, backend: str):
        # [P, 3C] -> three strided [P, H, D] views (token stride 3C, last dim contiguous): the op takes them as is.
        q_PHD, k_PHD, v_PHD = self.qkv(x_PC).view(x_PC.shape[0], 3, self.num_heads, self.head_dim).unbind(1)
        o_PHD = attend(backend, q_PHD, k_PHD, v_PHD, cu_seqlens, pos_hw, theta=self.theta, max_seqlen=max_seqlen)
        return self.out_proj(o_PHD.reshape(x_PC.shape))


def _split_qkv(module, state_dict, prefix, local_metadata) -> None:
    for kind in ("weight", "bias"):
        if prefix + "qkv." + kind not in state_dict:  # qkv wrapped (a peft LoRA layer): its own keys, kept as is
            continue
        fused = state_dict.pop(prefix + "qkv." + kind)
        for name, part in zip(_QKV, fused.detach().chunk(3, dim=0)):
            state_dict[f"{prefix}{name}.{kind}"] = part


def _fuse_qkv(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for kind in ("weight", "bias"):
        keys = [f"{prefix}{name}.{kind}" for name in _QKV]
        if all(k in state_dict for k in keys):  # otherwise load_state_dict reports the missing/unexpected keys
            state_dict[f"{prefix}qkv.{kind}"] = torch.cat([state_dict.pop(k) for k in keys])


class MLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x_PC):
        h_PI = self.fc1(x_PC)
        # in place when no gradient is recorded: saves a fresh [P, 4304] buffer (page faults + a write pass)
        if _records_grad(h_PI):
            h_PI = F.gelu(h_PI, approximate="tanh")
        else:
            h_PI = torch.ops.aten.gelu_(h_PI, approximate="tanh")
        return self.fc2(h_PI)


class EncoderLayer(nn.Module):
    """Pre-LN: x + attn(LN1 x), then x + mlp(LN2 x)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = Attention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x_PC, cu_seqlens, pos_hw, max_seqlen: int, backend: str):
        x_PC = _residual(x_PC, self.self_attn(self.layer_norm1(x_PC), cu_seqlens, pos_hw, max_seqlen, backend))
        return _residual(x_PC, self.mlp(self.layer_norm2(x_PC)))


def _records_grad(t: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


def _residual(x_PC: torch.Tensor, y_PC: torch.Tensor) -> torch.Tensor:
    """x + y, written into y (a fresh GEMM output) when no gradient is recorded."""
    return x_PC + y_PC if _records_grad(y_PC) or _records_grad(x_PC) else y_PC.add_(x_PC)


def downsample_blocks(x_PC: torch.Tensor, tokens_per_item, merge_sizes) -> torch.Tensor:
    """m x m downsample of features in merge-block order -> ``[M, C]``, merged tokens in raster order.

    transformers resizes each frame bilinearly by 1/m (align_corners=False).  Output pixel i then samples
    the input at i*m + (m-1)/2: the centre of its own m x m block.  So each merged token is the mean of the
    block's central 1 (odd m) or 2 x 2 (even m) patches: m=1 identity, m=2 the block mean.  Working per block
    keeps the function valid on pruned (compacted) rows, where whole blocks are missing, which is why it takes
    the merged tokens per item (host ints: no sync here) rather than a grid (vl3fast.reference.downsample).
    """
    chunks = x_PC.split([n * m * m for n, m in zip(tokens_per_item, merge_sizes)])
    out = []
    for chunk, m in zip(chunks, merge_sizes):
        if m == 1:
            out.append(chunk)
            continue
        lo, hi = (m - 1) // 2, m // 2 + 1
        blocks = chunk.view(-1, m, m, chunk.shape[-1])[:, lo:hi, lo:hi]
        out.append(blocks.mean(dim=(1, 2)))
    if len(out) == 1:
        return out[0]
    return torch.cat(out) if out else x_PC.new_zeros((0, x_PC.shape[-1]))


class VisionEncoder(nn.Module):
    """Patch embedding (the Conv2d as a Linear over the K-vector) -> N pre-LN layers -> post LN -> downsample."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = Linear(cfg.patch_dim, cfg.hidden_size)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        # recompute each layer in backward instead of keeping its activations (training memory)
        self.gradient_checkpointing = False

    def encode(self, pixel_values_PK, cu_seqlens, pos_hw, max_seqlen: int, backend: str) -> torch.Tensor:
        """Packed patches -> post-LN features ``[P, C]`` (no downsample)."""
        if pixel_values_PK.shape[-1] != self.cfg.patch_dim:
            raise ValueError(f"pixel_values must have {self.cfg.patch_dim} values per patch, "
                             f"got shape {tuple(pixel_values_PK.shape)}")
        x_PC = self.patch_embed(pixel_values_PK.to(self.patch_embed.weight.dtype))
        checkpointed = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if checkpointed:
                x_PC = torch.utils.checkpoint.checkpoint(layer, x_PC, cu_seqlens, pos_hw, max_seqlen, backend,
                                                         use_reentrant=False)
            else:
                x_PC = layer(x_PC, cu_seqlens, pos_hw, max_seqlen, backend)
        return self.post_layernorm(x_PC)

    def forward(self, pixel_values_PK, grid_thw=None, merge_sizes=None, *, backend: str = DEFAULT_BACKEND,
                keep_M: torch.Tensor | None = None, prune: str = DEFAULT_PRUNING,
                grid: ops.PackedGrid | None = None) -> torch.Tensor:
        """Features ``[M, C]`` of the merged tokens of every item, in item order.

        grid_thw, merge_sizes: the batch's grid (validated here), or ``grid``: its `PackedGrid`, built by the
        caller (a training batch's host sizes).
        keep_M: optional ``[M]`` frame-pruning mask (True = keep); only kept tokens are returned, pruned at
        the ``prune`` placement (PRUNING_PLACEMENTS; both use the sync-free compaction ops).
        One host sync at most: the PackedGrid reads grid, merge sizes and keep_M in one ``.tolist()`` (none
        when ``grid`` is given with the mask's counts, ``PackedGrid.with_keep``); its host sizes then size
        every output.
        """
        check_pruning(prune)
        keep_name = "keep mask (video_compression_mask)"
        if grid is None:
            grid = ops.PackedGrid.from_grid(grid_thw, merge_sizes, keep=keep_M, keep_name=keep_name)  # the one sync
        elif keep_M is not None and grid.kept_per_frame is None:
            grid = grid.with_keep(keep_M, keep_name=keep_name)
        if pixel_values_PK.shape[0] != grid.num_patches:
            raise ValueError(f"pixel_values has {pixel_values_PK.shape[0]} patches but the grid describes "
                             f"{grid.num_patches} (sum of t*h*w over {[list(g) for g in grid.grid_thw]})")
        device = pixel_values_PK.device
        if keep_M is not None:
            keep_M = keep_M.reshape(-1).to(device=device, dtype=torch.bool)
        if keep_M is None or prune == "after":
            pos_hw, cu_seqlens = ops.rope2d_position_ids(grid, device=device)
            x_PC = self.encode(pixel_values_PK, cu_seqlens, pos_hw, grid.max_frame_patches, backend)
            x_MC = downsample_blocks(x_PC, grid.tokens_per_item, grid.merge_sizes)
            # pruning after the encoder drops tokens only from the LLM input (spec C)
            return x_MC if keep_M is None else ops.prune_tokens(x_MC, keep_M, grid).features
        kept = ops.prune_patches(pixel_values_PK, keep_M, grid)
        x_PC = self.encode(kept.pixel_values, kept.cu_seqlens, kept.pos_hw, kept.max_seqlen, backend)
        return downsample_blocks(x_PC, grid.kept_per_item, grid.merge_sizes)
