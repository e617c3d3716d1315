"""Downstream classifiers over sets of objects (paper section 5.3; spec section 9).

A downstream model is a **front end** that turns an image into a set of objects, each a vector
``z`` of ``A`` numbers plus a presence flag, followed by a **classifier** over that set:

    image ──front end──▶ objects (B, N, A), mask (B, N) ──classifier──▶ logits (B, n_classes)

**Classifiers** (:class:`ObjectSetClassifier`, spec 9). Every object first goes through the input
network ``MLP([100, 100]) → 50`` and is given its presence flag: the per-object input is
``[mask, MLP(z)]`` (51 numbers). Then, by ``kind``:

- ``"recurrent"`` (the paper's classifier): the present objects are packed at the front in their
  order (raster order of the cells for SPAIR), an LSTM (128 units for addition, 256 for SET) runs
  over them, its output at the last present object goes through ``MLP([100, 100])`` to the
  logits. An image without objects gives the LSTM's zero output.
- ``"mlp"``: the first ``n_slots`` (7) present objects, zero-padded, flattened → ``MLP([256] * 5)``.
- ``"obj"`` (object network): per object ``MLP([256, 256]) → 256``, one residual block
  ``x ← LayerNorm(x + MLP([256, 256, 256])(x))``, max-pooling over the present objects, output
  ``MLP([256, 256, 256])``.
- ``"arn1"``, ``"arn3"`` (attentional relation network, Zambaldi et al. 2018): the same embedding,
  then 1 or 3 attention blocks (one head, d = 256): ``q, k, v = LayerNorm(MLP([256, 256])(x))``,
  ``a = softmax(q kᵀ / √d) v`` over the present objects, ``x ← LayerNorm(x + a)``,
  ``x ← LayerNorm(x + MLP([256, 256, 256])(x))``; then max-pooling and the output MLP. Unlike the
  authors' code, absent objects are masked out of the attention too, not only out of the pooling.

``MLP([h1, h2])`` means hidden layers of ``h1`` and ``h2`` units with ReLU and a linear output
layer of the size the next part needs (the convention of :class:`spair.models.networks.MLP`).

**Front ends** (the methods of Figure 4 and Table 1):

- ``"truebb"`` (TrueBB): 14×14 glimpses at the ground-truth boxes → ``MLP([512, 256]) → A``,
  trained from scratch.
- ``"conncomp"`` (ConnComp): the same, with 21×21 glimpses at the boxes of the connected
  components (τ = 0.02 for addition, given the true background).
- ``"convnet"`` (ConvNet): SPAIR's backbone architecture (:class:`~spair.models.networks.Backbone`)
  trained from scratch, its last layer giving 2A numbers per cell; every cell of the grid is an
  object (always present) and its first A numbers (the "mean" part) are its vector.
- ``"spair"``: a trained SPAIR model run deterministically (``sample="mean"``: Gaussian means,
  ``z_pres = 1[α > 0]``); the objects are the cells that are on, their vector the mean of
  ``z_what``. ``mode="fixed"``: nothing of SPAIR trains. ``mode="unfixed"``: the object encoder
  (glimpse → z_what) is trained by the task loss; everything else stays frozen.
- ``"air"``: a trained AIR model with ``air_steps`` steps (z_pres = 1, so every step is an
  object), same two modes.

**The authors' "noisy = False" stage 2** used means for every Gaussian but kept ``z_pres`` a
rounded sample of the relaxed Bernoulli. Here ``z_pres`` is deterministic, ``1[α > 0]``: that is
the rounded relaxed sample at the median noise (u = ½), so the set of objects of an image does not
change from one step to the next. Documented in ``docs/downstream.md``.

**Unfixed and the detections.** SPAIR's boxes and presence are computed once per image by the
frozen model (:meth:`FrontEnd.prepare`); in ``unfixed`` mode the trainable copy of the object
encoder reads glimpses at those boxes. In the authors' graph the fine-tuned encoder's ``z_what``
also reached the lateral context of later cells and the depth and presence networks, so boxes
and presence could drift during stage 2; ``reencode=True`` reproduces that (the whole encoder runs
at every step: 0.081 instead of 0.023 CPU-seconds per step of batch 32 on one core). For AIR the
two are the same: AIR's recurrent core never sees ``z_what``, so its boxes do not depend on the
object encoder.

**Preparation.** What does not change during stage 2 is computed once per dataset by
:meth:`FrontEnd.prepare` (boxes, presence, and in fixed mode the object vectors themselves) and
handed back to :meth:`FrontEnd.forward` batch by batch, so a fixed SPAIR front end costs nothing
per training step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import param
from ..errors import ConfigError, DataError
from ..ops.render import extract_glimpses
from .networks import MLP, Backbone

ClassifierKind = Literal["recurrent", "mlp", "obj", "arn1", "arn3"]
FrontEndKind = Literal["truebb", "conncomp", "convnet", "spair", "air"]
CLASSIFIER_KINDS: tuple[str, ...] = ("recurrent", "mlp", "obj", "arn1", "arn3")
FRONT_END_KINDS: tuple[str, ...] = ("truebb", "conncomp", "convnet", "spair", "air")
STAGE1_PREFIX = "front_end.stage1."
"""State-dict prefix of a frozen stage-1 model: never saved with a downstream checkpoint (it is
read from the stage-1 checkpoint instead)."""

Prepared = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Configs


@dataclass
class ClassifierConfig:
    """The classifier over a set of objects (module docstring; defaults: the addition classifier)."""

    kind: ClassifierKind = param("recurrent", help="recurrent (LSTM), mlp, obj (object network), arn1, arn3")
    n_classes: int = param(46, lo=2, hi=100000, help="number of classes (46 for sums of 5 digits, 2 for SET)")
    input_hidden: tuple[int, ...] = param((100, 100), lo=1, help="hidden layers of the per-object input network")
    input_dim: int = param(50, lo=1, hi=4096, help="output size of the per-object input network")
    lstm_units: int = param(128, lo=1, hi=8192, help="recurrent: LSTM units (128 for addition, 256 for SET)")
    output_hidden: tuple[int, ...] = param((100, 100), lo=1, help="recurrent: hidden layers of the output network")
    n_slots: int = param(7, lo=1, hi=4096, help="mlp: objects kept (zero-padded), the authors' 7")
    mlp_hidden: tuple[int, ...] = param((256,) * 5, lo=1, help="mlp: hidden layers")
    d_model: int = param(256, lo=1, hi=8192, help="obj / arn: size of an object's embedding")
    embed_hidden: tuple[int, ...] = param((256, 256), lo=1, help="obj / arn: hidden layers of the embedding")
    block_hidden: tuple[int, ...] = param((256, 256, 256), lo=1, help="obj / arn: hidden layers of the residual MLP")
    qkv_hidden: tuple[int, ...] = param((256, 256), lo=1, help="arn: hidden layers of the query, key, value networks")
    head_hidden: tuple[int, ...] = param((256, 256, 256), lo=1, help="obj / arn: hidden layers of the output network")


@dataclass
class FrontEndConfig:
    """Where the objects come from (module docstring)."""

    kind: FrontEndKind = param("spair", help="truebb, conncomp, convnet, spair or air")
    mode: Literal["fixed", "unfixed"] = param("fixed", help="spair / air: 'fixed' (frozen) or 'unfixed' "
                                              "(object encoder trained by the task loss)")
    checkpoint: str = param("", help="spair / air: the stage-1 checkpoint (best.pt of an unsupervised run)")
    reencode: bool = param(False, help="spair unfixed: run the whole encoder every step (boxes and presence "
                                       "may drift) instead of reading glimpses at the stage-1 boxes")
    A: int = param(50, lo=1, hi=4096, help="truebb / conncomp / convnet: size of an object's vector")
    glimpse_shape: tuple[int, int] = param((14, 14), lo=2, hi=128, help="truebb / conncomp: glimpse size (14; 21 "
                                                                       "for conncomp in the paper)")
    encoder_hidden: tuple[int, ...] = param((512, 256), lo=1, help="truebb / conncomp: hidden layers of the "
                                                                   "glimpse encoder")
    max_objects: int = param(16, lo=1, hi=4096, help="truebb / conncomp: most boxes per image (in raster order)")
    conncomp_tau: float = param(0.02, lo=0.0, help="conncomp: threshold τ of the difference map")
    cell_size: int = param(12, lo=2, hi=256, help="convnet: cell size; truebb / conncomp: cells of the raster order")
    backbone_channels: int = param(128, lo=1, hi=4096, help="convnet: channels of the hidden conv layers")
    n_final_layers: int = param(3, lo=1, hi=16, help="convnet: stride-1 conv layers after the strided ones")
    kernel_size: int = param(1, lo=1, hi=7, help="convnet: kernel of the stride-1 layers")
    air_steps: int = param(5, lo=1, hi=1000, help="air: steps (objects) per image")
    prepare_batch_size: int = param(200, lo=1, help="images per batch when running a stage-1 model over a dataset")


# --------------------------------------------------------------------------------------------
# Classifiers


def pack_objects(objects: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the present objects to the front, keeping their order: (B, N, D), (B, N) → same shapes."""
    B, N = mask.shape
    key = (~mask).to(torch.long) * N + torch.arange(N, device=mask.device)
    order = torch.argsort(key, dim=1)
    packed = objects.gather(1, order[..., None].expand(-1, -1, objects.shape[-1]))
    return packed, mask.gather(1, order)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the present objects (B, N, D) → (B, D); zeros for an image without objects."""
    filled = x.masked_fill(~mask[..., None], float("-inf"))
    pooled = filled.amax(1) if x.shape[1] else x.new_full((x.shape[0], x.shape[2]), float("-inf"))
    return torch.where(mask.any(1, keepdim=True), pooled, torch.zeros_like(pooled))


class AttentionBlock(nn.Module):
    """One head of self-attention over the present objects with residual MLP (Zambaldi et al. 2018)."""

    def __init__(self, d: int, qkv_hidden: Sequence[int], block_hidden: Sequence[int]):
        super().__init__()
        self.q, self.k, self.v = (MLP(d, qkv_hidden, d) for _ in range(3))
        self.ln_q, self.ln_k, self.ln_v = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.ln_att, self.ln_out = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = MLP(d, block_hidden, d)
        self.scale = 1.0 / math.sqrt(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.ln_q(self.q(x)), self.ln_k(self.k(x)), self.ln_v(self.v(x))
        scores = (q @ k.transpose(1, 2)) * self.scale                           # (B, N, N)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        att = torch.softmax(scores, -1)
        att = torch.nan_to_num(att, nan=0.0)                                    # images without objects
        x = self.ln_att(x + att @ v)
        return self.ln_out(x + self.mlp(x))


class ObjectSetClassifier(nn.Module):
    """Logits (B, n_classes) from objects (B, N, object_dim) and their presence (B, N) (module docstring)."""

    def __init__(self, cfg: ClassifierConfig, object_dim: int):
        super().__init__()
        if cfg.kind not in CLASSIFIER_KINDS:
            raise ConfigError(f"classifier.kind: unknown '{cfg.kind}' (use {', '.join(CLASSIFIER_KINDS)})")
        self.cfg = cfg
        self.object_dim = object_dim
        self.input_net = MLP(object_dim, cfg.input_hidden, cfg.input_dim)
        d_in = cfg.input_dim + 1
        if cfg.kind == "recurrent":
            self.lstm = nn.LSTM(d_in, cfg.lstm_units, batch_first=True)
            with torch.no_grad():  # forget-gate bias 1, as TensorFlow's LSTM cells
                H = cfg.lstm_units
                self.lstm.bias_ih_l0[H:2 * H].fill_(1.0)
                self.lstm.bias_hh_l0.zero_()
            self.head = MLP(cfg.lstm_units, cfg.output_hidden, cfg.n_classes)
        elif cfg.kind == "mlp":
            self.head = MLP(cfg.n_slots * d_in, cfg.mlp_hidden, cfg.n_classes)
        else:
            self.embed = MLP(d_in, cfg.embed_hidden, cfg.d_model)
            if cfg.kind == "obj":
                self.block = MLP(cfg.d_model, cfg.block_hidden, cfg.d_model)
                self.block_norm = nn.LayerNorm(cfg.d_model)
            else:
                repeats = 1 if cfg.kind == "arn1" else 3
                self.blocks = nn.ModuleList(AttentionBlock(cfg.d_model, cfg.qkv_hidden, cfg.block_hidden)
                                            for _ in range(repeats))
            self.head = MLP(cfg.d_model, cfg.head_hidden, cfg.n_classes)

    def object_inputs(self, objects: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[mask, input_net(z)] per object, zero for absent objects: (B, N, input_dim + 1)."""
        m = mask[..., None].to(objects.dtype)
        return torch.cat([m, self.input_net(objects)], -1) * m

    def forward(self, objects: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if objects.ndim != 3 or objects.shape[-1] != self.object_dim or mask.shape != objects.shape[:2]:
            raise ValueError(f"classifier: expected objects (B, N, {self.object_dim}) and mask (B, N), got "
                             f"{tuple(objects.shape)} and {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        kind = self.cfg.kind
        if kind in ("recurrent", "mlp"):
            objects, mask = pack_objects(objects, mask)
        h = self.object_inputs(objects, mask)
        if kind == "recurrent":
            out, _ = self.lstm(h)                                               # causal: padding after is harmless
            lengths = mask.sum(1)
            idx = (lengths - 1).clamp(min=0)[:, None, None].expand(-1, 1, out.shape[-1])
            last = out.gather(1, idx).squeeze(1)
            last = torch.where(lengths[:, None] > 0, last, torch.zeros_like(last))
            return self.head(last)
        if kind == "mlp":
            k = self.cfg.n_slots
            if h.shape[1] < k:
                h = F.pad(h, (0, 0, 0, k - h.shape[1]))
            return self.head(h[:, :k].flatten(1))
        x = self.embed(h)
        if kind == "obj":
            x = self.block_norm(x + self.block(x))
        else:
            for block in self.blocks:
                x = block(x, mask)
        return self.head(masked_max(x, mask))


# --------------------------------------------------------------------------------------------
# Front ends


def images_to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) → float32 (B, 3, H, W) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def raster_order(boxes: np.ndarray, cell_size: int) -> np.ndarray:
    """Indices sorting pixel boxes (k, 4) in the raster order of the cells holding their centres
    (rows of ``cell_size`` px top to bottom, left to right inside a row; ties by centre y, then x)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return np.lexsort((cx, cy, np.floor(cx / cell_size), np.floor(cy / cell_size)))


def pad_boxes(boxes: Sequence[np.ndarray], image_hw: tuple[int, int], max_objects: int, cell_size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged pixel boxes → normalized (y_top, x_left, height, width) (N, K, 4) in raster order and
    their mask (N, K); K = the most boxes of an image (at least 1), capped at ``max_objects``."""
    H, W = image_hw
    K = max(1, min(max_objects, max((len(b) for b in boxes), default=0)))
    out = np.zeros((len(boxes), K, 4), np.float32)
    mask = np.zeros((len(boxes), K), bool)
    for i, b in enumerate(boxes):
        b = np.asarray(b, np.float32).reshape(-1, 4)
        b = b[raster_order(b, cell_size)][:K]
        out[i, :len(b)] = np.stack([b[:, 1] / H, b[:, 0] / W, (b[:, 3] - b[:, 1]) / H, (b[:, 2] - b[:, 0]) / W], -1)
        mask[i, :len(b)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


class FrontEnd(nn.Module):
    """Images → a set of objects. Subclasses set ``object_dim`` and ``uses_images``."""

    object_dim: int
    uses_images: bool = True
    """Whether :meth:`forward` reads the images (False: the prepared tensors are enough)."""

    def prepare(self, images: np.ndarray, boxes: Sequence[np.ndarray] | None = None,
                backgrounds: np.ndarray | None = None) -> Prepared:
        """Per-image tensors (first dimension = images) computed once for a dataset; default none."""
        return {}

    def forward(self, x: torch.Tensor | None, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """Objects (B, N, object_dim) and their presence mask (B, N) for a batch: images ``x``
        (B, 3, H, W) in [0, 1] (None when not :attr:`uses_images`) and the batch's prepared tensors."""
        raise NotImplementedError


class GlimpseFrontEnd(FrontEnd):
    """TrueBB (ground-truth boxes) or ConnComp (connected components): glimpses at given boxes →
    a glimpse encoder ``MLP(encoder_hidden) → A`` trained from scratch."""

    def __init__(self, source: Literal["truth", "conncomp"], glimpse_shape: tuple[int, int] = (14, 14),
                 A: int = 50, encoder_hidden: Sequence[int] = (512, 256), max_objects: int = 16,
                 tau: float = 0.02, cell_size: int = 12):
        super().__init__()
        if source not in ("truth", "conncomp"):
            raise ConfigError(f"glimpse front end: unknown box source '{source}'")
        self.source, self.glimpse_shape = source, tuple(glimpse_shape)
        self.max_objects, self.tau, self.cell_size = max_objects, tau, cell_size
        self.object_dim = A
        gh, gw = self.glimpse_shape
        self.encoder = MLP(3 * gh * gw, encoder_hidden, A)

    def prepare(self, images: np.ndarray, boxes: Sequence[np.ndarray] | None = None,
                backgrounds: np.ndarray | None = None) -> Prepared:
        if self.source == "truth":
            if boxes is None:
                raise DataError("TrueBB needs the ground-truth boxes of every image")
            if len(boxes) != len(images):
                raise DataError(f"TrueBB: {len(images)} images but {len(boxes)} box sets")
        else:
            from .conncomp import ConnCompDetector

            detector = ConnCompDetector(tau=self.tau)
            boxes = []
            for start in range(0, len(images), 512):
                bgs = None if backgrounds is None else backgrounds[start:start + 512]
                boxes += [d.boxes for d in detector.detect(images[start:start + 512], backgrounds=bgs)]
        b, m = pad_boxes(boxes, tuple(images.shape[1:3]), self.max_objects, self.cell_size)
        return {"boxes": b, "mask": m}

    def forward(self, x: torch.Tensor | None, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        glimpses = extract_glimpses(x, prepared["boxes"], self.glimpse_shape)   # (B, K, 3, gh, gw)
        return self.encoder(glimpses.flatten(2)), prepared["mask"]


class ConvNetFrontEnd(FrontEnd):
    """ConvNet: SPAIR's backbone from scratch with 2A outputs per cell; every cell is an object
    whose vector is the first A outputs (the mean part)."""

    def __init__(self, A: int = 50, cell_size: int = 12, channels: int = 128, n_final_layers: int = 3,
                 kernel_size: int = 1):
        super().__init__()
        self.object_dim = A
        self.backbone = Backbone(cell_size, channels, 2 * A, n_final_layers, kernel_size)

    def forward(self, x: torch.Tensor | None, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.backbone(x)[:, :self.object_dim]                            # (B, A, H, W)
        objects = feat.flatten(2).transpose(1, 2)                               # (B, H·W, A) raster order
        return objects, torch.ones(objects.shape[:2], dtype=torch.bool, device=objects.device)


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class SpairFrontEnd(FrontEnd):
    """A trained SPAIR model as the front end (module docstring: fixed / unfixed / reencode)."""

    def __init__(self, model: Any, mode: Literal["fixed", "unfixed"] = "fixed", reencode: bool = False,
                 batch_size: int = 200):
        super().__init__()
        if mode not in ("fixed", "unfixed"):
            raise ConfigError(f"front_end.mode: unknown '{mode}' (use 'fixed' or 'unfixed')")
        if reencode and mode != "unfixed":
            raise ConfigError("front_end.reencode only applies to mode 'unfixed'")
        self.stage1 = model.eval()
        _freeze(self.stage1)
        self.mode, self.reencode, self.batch_size = mode, reencode, batch_size
        self.object_dim = model.cfg.A
        self.uses_images = mode == "unfixed"
        if mode == "unfixed":
            self.encoder = copy.deepcopy(model.obj_encoder)
            for p in self.encoder.parameters():
                p.requires_grad_(True)
            if reencode:
                self.stage1.obj_encoder = self.encoder   # the whole encoder runs with the trainable copy

    def _encode(self, x: torch.Tensor) -> Any:
        from .spair import SpairNoise

        B = x.shape[0]
        H, W = self.stage1.grid_shape(*x.shape[-2:])
        A = self.stage1.cfg.A
        zeros = SpairNoise(x.new_zeros(B, H * W, 4), x.new_zeros(B, H * W, A), x.new_zeros(B, H * W, 1),
                           x.new_full((B, H * W, 1), 0.5), x.new_zeros(B, 3))
        return self.stage1.encode(x, zeros, sample="mean")

    @torch.no_grad()
    def prepare(self, images: np.ndarray, boxes: Sequence[np.ndarray] | None = None,
                backgrounds: np.ndarray | None = None) -> Prepared:
        device = next(self.stage1.parameters()).device
        parts: dict[str, list[torch.Tensor]] = {"boxes": [], "mask": [], "what": []}
        for start in range(0, len(images), self.batch_size):
            out = self._encode(images_to_tensor(images[start:start + self.batch_size], device))
            parts["boxes"].append(out.boxes.cpu())
            parts["mask"].append((out.z_pres.squeeze(-1) > 0.5).cpu())
            parts["what"].append(out.params["what_mean"].cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def forward(self, x: torch.Tensor | None, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "fixed":
            return prepared["what"], prepared["mask"]
        if self.reencode:
            out = self._encode(x)
            return out.params["what_mean"], out.z_pres.squeeze(-1) > 0.5
        glimpses = extract_glimpses(x, prepared["boxes"], self.stage1.cfg.object_shape)
        return self.encoder(glimpses.flatten(2))[..., :self.object_dim], prepared["mask"]


class AirFrontEnd(FrontEnd):
    """A trained AIR model as the front end: ``n_steps`` objects per image (fixed / unfixed)."""

    def __init__(self, model: Any, mode: Literal["fixed", "unfixed"] = "fixed", n_steps: int = 5,
                 batch_size: int = 200):
        super().__init__()
        if mode not in ("fixed", "unfixed"):
            raise ConfigError(f"front_end.mode: unknown '{mode}' (use 'fixed' or 'unfixed')")
        self.stage1 = model.eval()
        _freeze(self.stage1)
        self.mode, self.n_steps, self.batch_size = mode, n_steps, batch_size
        self.object_dim = model.cfg.A
        self.uses_images = mode == "unfixed"
        if mode == "unfixed":
            self.encoder = copy.deepcopy(model.obj_encoder)
            for p in self.encoder.parameters():
                p.requires_grad_(True)

    @torch.no_grad()
    def prepare(self, images: np.ndarray, boxes: Sequence[np.ndarray] | None = None,
                backgrounds: np.ndarray | None = None) -> Prepared:
        device = next(self.stage1.parameters()).device
        parts: dict[str, list[torch.Tensor]] = {"boxes": [], "mask": [], "what": []}
        for start in range(0, len(images), self.batch_size):
            x = images_to_tensor(images[start:start + self.batch_size], device)
            out = self.stage1(x, self.n_steps, sample="mean")
            parts["boxes"].append(out.boxes.cpu())
            parts["mask"].append(out.on.cpu())
            parts["what"].append(out.params["what_mean"].cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def forward(self, x: torch.Tensor | None, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "fixed":
            return prepared["what"], prepared["mask"]
        glimpses = extract_glimpses(x, prepared["boxes"], self.stage1.cfg.object_shape)
        return self.encoder(glimpses.flatten(2))[..., :self.object_dim], prepared["mask"]


def build_front_end(cfg: FrontEndConfig, device: str | torch.device = "cpu") -> FrontEnd:
    """The front end ``cfg`` describes; SPAIR and AIR are read from ``cfg.checkpoint``."""
    if cfg.kind == "truebb":
        return GlimpseFrontEnd("truth", cfg.glimpse_shape, cfg.A, cfg.encoder_hidden, cfg.max_objects,
                               cfg.conncomp_tau, cfg.cell_size)
    if cfg.kind == "conncomp":
        return GlimpseFrontEnd("conncomp", cfg.glimpse_shape, cfg.A, cfg.encoder_hidden, cfg.max_objects,
                               cfg.conncomp_tau, cfg.cell_size)
    if cfg.kind == "convnet":
        return ConvNetFrontEnd(cfg.A, cfg.cell_size, cfg.backbone_channels, cfg.n_final_layers, cfg.kernel_size)
    if cfg.kind in ("spair", "air"):
        if not cfg.checkpoint:
            raise ConfigError(f"front_end.checkpoint: the '{cfg.kind}' front end needs a stage-1 checkpoint")
        if cfg.kind == "spair":
            from .io import load_model

            return SpairFrontEnd(load_model(cfg.checkpoint, device), cfg.mode, cfg.reencode, cfg.prepare_batch_size)
        from .air import load_air_model

        return AirFrontEnd(load_air_model(cfg.checkpoint, device), cfg.mode, cfg.air_steps, cfg.prepare_batch_size)
    raise ConfigError(f"front_end.kind: unknown '{cfg.kind}' (use {', '.join(FRONT_END_KINDS)})")


# --------------------------------------------------------------------------------------------
# The whole model


class DownstreamModel(nn.Module):
    """A front end followed by an :class:`ObjectSetClassifier`."""

    def __init__(self, front_end: FrontEnd, classifier: ObjectSetClassifier):
        super().__init__()
        if classifier.object_dim != front_end.object_dim:
            raise ConfigError(f"the front end gives {front_end.object_dim}-d objects, the classifier expects "
                              f"{classifier.object_dim}")
        self.front_end, self.classifier = front_end, classifier

    def forward(self, x: torch.Tensor | None, prepared: Prepared) -> torch.Tensor:
        objects, mask = self.front_end(x, prepared)
        return self.classifier(objects, mask)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state except the frozen stage-1 model's (see :data:`STAGE1_PREFIX`)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith(STAGE1_PREFIX)}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        """Load what :meth:`trainable_state_dict` gave; CheckpointError when the keys or shapes differ."""
        from ..errors import CheckpointError

        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                      else f"shape mismatch in {wrong[:3]}")
            raise CheckpointError(f"{where} does not fit this downstream model ({detail})")
        self.load_state_dict(state, strict=False)


def build_downstream_model(front_end: FrontEndConfig, classifier: ClassifierConfig,
                           device: str | torch.device = "cpu") -> DownstreamModel:
    """Front end + classifier; the classifier's initialization draws from torch's global generator
    (seed it, or use :func:`torch.random.fork_rng`, for reproducible weights)."""
    fe = build_front_end(front_end, device)
    return DownstreamModel(fe, ObjectSetClassifier(classifier, fe.object_dim)).to(device)


__all__ = ["AirFrontEnd", "AttentionBlock", "CLASSIFIER_KINDS", "ClassifierConfig", "ConvNetFrontEnd",
           "DownstreamModel", "FRONT_END_KINDS", "FrontEnd", "FrontEndConfig", "GlimpseFrontEnd",
           "ObjectSetClassifier", "SpairFrontEnd", "build_downstream_model", "build_front_end", "images_to_tensor",
           "masked_max", "pack_objects", "pad_boxes", "raster_order"]
