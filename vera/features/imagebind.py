"""ImageBind-huge's vision branch on current PyTorch, and the views LAVAD fed it.

The official ImageBind package pins torch 1.13, so this module re-implements
the one branch Step 2 needs (a ViT-H/14 over 2-frame clips) and loads the
vision weights of the official ``imagebind_huge.pth`` under their original
names. It also builds the segment views of LAVAD's recipe, from which the
VERA features came:

1. the segment window ``[max(c - 150, 0), min(c + 150, length))`` keeps 10
   frames at ``np.linspace(0, t - 1, 10, dtype=int)`` (all of them if t <= 10);
2. those frames form a frame-video at pytorchvideo ``FrameVideo``'s default
   30 fps, from which a constant-clips-per-video sampler takes 5 clips of 2 s;
3. each clip is subsampled uniformly to 2 frames, scaled to [0, 1], its short
   side resized to 224 (bilinear), normalised with CLIP's mean and std, and
   cut into 3 spatial crops of 224: 15 views of shape (3, 2, 224, 224);
4. the mean of the 15 L2-normalised embeddings is the segment's feature.

Ten frames last 1/3 s at 30 fps, shorter than one 2 s clip, so all 5 clips
start at 0 and hold the same frames: the 15 views are 3 distinct views, each
counted 5 times (the first and last frame of the window, in 3 crops). We
embed every distinct view once and weight it by how often it occurs, which
gives the same mean at a fifth of the cost.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vera.errors import VeraError
from vera.data.segments import segment_window
from vera.constants import HALF_WINDOW

# --- the view recipe (LAVAD's ImageBind video loader over frame files) ---
FRAMES_PER_SEGMENT = 10
FRAME_VIDEO_FPS = 30.0  # pytorchvideo FrameVideo.from_frame_paths' default
CLIP_DURATION = Fraction(2)  # seconds
CLIPS_PER_VIDEO = 5
FRAMES_PER_CLIP = 2
VIEW_SIZE = 224
NUM_CROPS = 3
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"


@dataclass(frozen=True)
class VisionConfig:
    """Shape of the vision transformer; ``HUGE`` is ImageBind-huge's."""

    name: str
    width: int
    depth: int
    heads: int
    out_dim: int
    mlp_ratio: int = 4
    image_size: int = VIEW_SIZE
    patch_size: int = 14
    frames: int = FRAMES_PER_CLIP  # the patch embedding's temporal kernel

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


HUGE = VisionConfig("huge", width=1280, depth=32, heads=16, out_dim=1024)
TINY = VisionConfig("tiny", width=64, depth=2, heads=4, out_dim=32)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout, run by SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (ImageBind's ``BlockWithMasking`` without masking or drop-path)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, width * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


class VisionEncoder(nn.Module):
    """ImageBind's vision branch: images (B, 3, H, W) or clips (B, 3, T, H, W) → unit vectors (B, out_dim)."""

    def __init__(self, config: VisionConfig = HUGE) -> None:
        super().__init__()
        self.config = config
        kernel = (config.frames, config.patch_size, config.patch_size)
        self.patch_embed = nn.Conv3d(3, config.width, kernel_size=kernel, stride=kernel, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, config.width))
        self.pre_norm = nn.LayerNorm(config.width, eps=1e-6)
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.head_norm = nn.LayerNorm(config.width, eps=1e-6)
        self.head_proj = nn.Linear(config.width, config.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) or clips (B, 3, T, H, W), got {tuple(x.shape)}")
        if x.shape[2] == 1:  # an image is a clip of one frame repeated, as in ImageBind's PadIm2Video
            x = x.expand(-1, -1, self.config.frames, -1, -1)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        if tokens.shape[1] != self.config.num_patches:
            raise ValueError(
                f"input {tuple(x.shape)} gives {tokens.shape[1]} patches, the model takes {self.config.num_patches}"
            )
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        tokens = self.pre_norm(tokens)
        for block in self.blocks:
            tokens = block(tokens)
        embedding = self.head_proj(self.head_norm(tokens[:, 0]))
        return F.normalize(embedding.float(), dim=-1)


# --- weights ---

# Official name prefix → ours. The vision entries of imagebind_huge.pth are the
# only ones read; the stem's Conv3d is entry 1 of a Sequential after PadIm2Video.
_OFFICIAL_NAMES = (
    ("modality_preprocessors.vision.rgbt_stem.proj.1.", "patch_embed."),
    ("modality_preprocessors.vision.cls_token", "cls_token"),
    ("modality_preprocessors.vision.pos_embedding_helper.pos_embed", "pos_embed"),
    ("modality_trunks.vision.pre_transformer_layer.0.", "pre_norm."),
    ("modality_trunks.vision.blocks.", "blocks."),
    ("modality_heads.vision.0.", "head_norm."),
    ("modality_heads.vision.2.", "head_proj."),
)
VISION_PREFIXES = (
    "modality_preprocessors.vision.",
    "modality_trunks.vision.",
    "modality_heads.vision.",
    "modality_postprocessors.vision.",
)


def official_vision_state(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The vision entries of an official ImageBind state dict, renamed to this module's names."""
    renamed: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        if not name.startswith(VISION_PREFIXES):
            continue
        for official, ours in _OFFICIAL_NAMES:
            if name.startswith(official):
                renamed[ours + name[len(official):]] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise VeraError(f"{source}: unexpected vision weights {', '.join(sorted(unknown)[:5])}")
    if not renamed:
        raise VeraError(f"{source} holds no ImageBind vision weights (keys starting with {VISION_PREFIXES[1]!r})")
    return renamed


def load_official_weights(encoder: VisionEncoder, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load official ImageBind vision weights strictly: every weight present, none extra, shapes equal."""
    renamed = official_vision_state(state, source)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(renamed))
    extra = sorted(set(renamed) - set(expected))
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} vision weights (e.g. {', '.join(missing[:3])})")
        if extra:
            problems.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
        raise VeraError(f"{source} does not fit ImageBind-{encoder.config.name}: {'; '.join(problems)}")
    wrong = [f"{name} {tuple(renamed[name].shape)} (want {tuple(value.shape)})"
             for name, value in expected.items() if renamed[name].shape != value.shape]
    if wrong:
        raise VeraError(f"{source} does not fit ImageBind-{encoder.config.name}: shape of {'; '.join(wrong[:3])}")
    # An encoder built on the meta device takes the checkpoint's tensors as they are, with no init or copy.
    encoder.load_state_dict(renamed, strict=True, assign=any(p.is_meta for p in encoder.parameters()))


def read_checkpoint(path: Path) -> Mapping[str, torch.Tensor]:
    """Read a state dict saved by ``torch.save`` (tensors only, memory-mapped where the format allows)."""
    path = Path(path)
    if not path.is_file():
        raise VeraError(f"checkpoint not found: {path} (download imagebind_huge.pth from {CHECKPOINT_URL})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise VeraError(f"cannot read checkpoint {path}: {error}") from None
        # Files in torch's legacy (pre-zip) format cannot be memory-mapped.
        state = _load_without_mmap(path)
    except (pickle.UnpicklingError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise VeraError(f"cannot read checkpoint {path}: {error}") from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise VeraError(f"checkpoint {path} is not a state dict of tensors")
    return state


def _load_without_mmap(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as error:
        raise VeraError(f"cannot read checkpoint {path}: {error}") from None


def randomly_initialised(config: VisionConfig, seed: int = 0) -> VisionEncoder:
    """An encoder with seeded random weights (ImageBind's init scheme), for tests and smoke runs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = VisionEncoder(config)
        scale = config.width ** -0.5
        with torch.no_grad():
            encoder.cls_token.normal_().mul_(scale)
            encoder.pos_embed.normal_().mul_(scale)
            for module in encoder.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, Attention):
                    nn.init.xavier_uniform_(module.in_proj_weight)
    return encoder


def load_vision_encoder(
    checkpoint: Path | None = None,
    *,
    random_init: bool = False,
    tiny: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> VisionEncoder:
    """The encoder in eval mode on ``device``/``dtype``: official weights, or seeded random ones."""
    if (checkpoint is None) == (not random_init):
        raise VeraError("give exactly one of --checkpoint imagebind_huge.pth or --random-init")
    if tiny and not random_init:
        raise VeraError("--tiny is a random-weight configuration: use it with --random-init")
    if random_init:
        encoder = randomly_initialised(TINY if tiny else HUGE, seed)
    else:
        state = read_checkpoint(checkpoint)
        with torch.device("meta"):
            encoder = VisionEncoder(HUGE)
        load_official_weights(encoder, state, f"checkpoint {checkpoint}")
    return encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


# --- views ---


@dataclass(frozen=True)
class Clip:
    """One distinct temporal clip of a segment: absolute frame indices and how many of the 5 clips it stands for."""

    frames: tuple[int, ...]
    count: int


def window_sample(start: int, end: int, num_samples: int = FRAMES_PER_SEGMENT) -> np.ndarray:
    """The frames LAVAD kept of a window: ``linspace(0, t - 1, num_samples, dtype=int)``, all if ``t <= num_samples``."""
    t = end - start
    if t <= 0:
        raise ValueError(f"empty window [{start}, {end})")
    if t <= num_samples:
        return np.arange(start, end, dtype=np.int64)
    return start + np.linspace(0, t - 1, num_samples, dtype=np.int64)


def clip_positions(num_frames: int) -> list[list[int]]:
    """Positions (within a frame-video of ``num_frames``) of each of the 5 clips' 2 frames.

    The arithmetic of pytorchvideo's ``ConstantClipsPerVideoSampler``,
    ``FrameVideo.get_clip`` and ``UniformTemporalSubsample``, kept exactly
    (the sampler in fractions, the video's duration in float). The sampler's
    early stop (a clip start past the last possible one) never fires: its
    starts are ``k / 5`` of the last possible start for k < 5, in exact fractions.
    """
    duration = num_frames / FRAME_VIDEO_FPS
    max_start = Fraction(max(duration - CLIP_DURATION, 0))
    step = max_start / CLIPS_PER_VIDEO
    clips = []
    for index in range(CLIPS_PER_VIDEO):
        start_sec = step * index
        end_sec = min(start_sec + CLIP_DURATION, duration)
        first = math.ceil(FRAME_VIDEO_FPS * start_sec)
        last = min(math.ceil(FRAME_VIDEO_FPS * end_sec), num_frames)
        if last <= first:
            raise ValueError(f"clip {index} of a {num_frames}-frame video is empty")
        subsample = torch.linspace(0, last - first - 1, FRAMES_PER_CLIP).clamp(0, last - first - 1).long()
        clips.append((first + subsample).tolist())
    return clips


def segment_clips(centre: int, length: int, half_window: int = HALF_WINDOW) -> list[Clip]:
    """The distinct clips of the segment centred on ``centre``, with their multiplicity."""
    kept = window_sample(*segment_window(centre, length, half_window))
    counts = Counter(tuple(int(kept[p]) for p in positions) for positions in clip_positions(len(kept)))
    return [Clip(frames, count) for frames, count in counts.items()]


def crop_offsets(height: int, width: int, size: int = VIEW_SIZE) -> list[tuple[int, int]]:
    """(y, x) of the 3 spatial crops (start, centre, end along the long side), as ImageBind's ``uniform_crop``."""
    y_centre, x_centre = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    if height > width:
        return [(0, x_centre), (y_centre, x_centre), (height - size, x_centre)]
    return [(y_centre, 0), (y_centre, x_centre), (y_centre, width - size)]


def short_side_size(height: int, width: int, size: int = VIEW_SIZE) -> tuple[int, int]:
    """Output (height, width) of pytorchvideo's ``short_side_scale``."""
    if width < height:
        return int(math.floor(height / width * size)), size
    return size, int(math.floor(width / height * size))


def prepare_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB frames (N, H, W, 3) → float (N, 3, H', W'): [0, 1], short side 224 (bilinear), CLIP-normalised."""
    x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    x = F.interpolate(x, size=short_side_size(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def crop_views(prepared: torch.Tensor, clips: torch.Tensor, size: int = VIEW_SIZE) -> tuple[torch.Tensor, np.ndarray]:
    """Views (V * K, 3, T, size, size) of clips (V, T) of rows of ``prepared``, in K distinct crops, and each crop's count.

    Views are ordered clip-major (all crops of clip 0, then of clip 1, …), as
    ImageBind's ``SpatialCrop``. Coinciding crops (square frames) are kept once.
    """
    offsets = Counter(crop_offsets(prepared.shape[2], prepared.shape[3], size))
    video = prepared[clips].transpose(1, 2)  # (V, 3, T, H', W')
    views = torch.stack([video[..., y:y + size, x:x + size] for y, x in offsets], dim=1)
    return views.flatten(0, 1), np.array(list(offsets.values()), dtype=np.int64)
