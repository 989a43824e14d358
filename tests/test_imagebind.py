"""ImageBind vision branch and view recipe: hand-checked cases, and parity with the reference libraries.

The parity tests load the official code of ``imagebind-packaged`` and
``pytorchvideo`` and skip where they are absent. To run them:

    .venv/bin/pip install --no-deps imagebind-packaged==0.1.2 pytorchvideo==0.1.5 timm==1.0.31 \
        iopath==0.1.10 portalocker==4.4.2 ftfy==6.3.1 wcwidth==0.9.4 einops==0.8.2
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vera.errors import VeraError
from vera.features.feature_extraction import video_features
from vera.data.frames import open_frames
from vera.features.imagebind import (
    CLIP_MEAN,
    CLIP_STD,
    TINY,
    Clip,
    VisionConfig,
    VisionEncoder,
    crop_offsets,
    crop_views,
    load_official_weights,
    load_vision_encoder,
    prepare_frames,
    randomly_initialised,
    read_checkpoint,
    segment_clips,
    short_side_size,
    window_sample,
)
from vera.data.segments import segment_centres, segment_window
from fixtures.videos import decode_to_jpegs

INSTALL = ("pip install --no-deps imagebind-packaged==0.1.2 pytorchvideo==0.1.5 timm==1.0.31 iopath==0.1.10 "
           "portalocker==4.4.2 ftfy==6.3.1 wcwidth==0.9.4 einops==0.8.2")
SMALL = VisionConfig("small", width=64, depth=2, heads=4, out_dim=32)


# --- the recipe, by hand ---


def test_window_sample_keeps_ten_frames_or_all():
    # linspace(0, 149, 10) = 0, 16.6, 33.1, 49.7, 66.2, 82.8, 99.3, 115.9, 132.4, 149, truncated
    assert window_sample(0, 150).tolist() == [0, 16, 33, 49, 66, 82, 99, 115, 132, 149]
    assert window_sample(100, 110).tolist() == list(range(100, 110))
    assert window_sample(7, 10).tolist() == [7, 8, 9]


def test_every_segment_is_one_clip_of_its_window_ends_counted_five_times():
    # 10 frames last 1/3 s at FrameVideo's 30 fps: every 2 s clip starts at 0 and spans them all,
    # and 2 uniform samples of them are the first and the last.
    for length in (1, 5, 150, 151, 1000):
        for centre in segment_centres(length).tolist():
            start, end = segment_window(centre, length)
            assert segment_clips(centre, length) == [Clip((start, end - 1), 5)]
    assert segment_clips(400, 1000, half_window=120) == [Clip((280, 519), 5)]


def test_short_side_resize_and_crop_offsets():
    assert short_side_size(240, 320) == (224, 298)  # floor(320 / 240 * 224)
    assert short_side_size(346, 640) == (224, 414)
    assert short_side_size(300, 200) == (336, 224)
    assert crop_offsets(224, 298) == [(0, 0), (0, 37), (0, 74)]  # ceil(74 / 2) = 37
    assert crop_offsets(336, 224) == [(0, 0), (56, 0), (112, 0)]
    assert crop_offsets(224, 224) == [(0, 0)] * 3


def test_prepare_frames_normalises_with_clip_statistics():
    frames = torch.full((1, 224, 224, 3), 255, dtype=torch.uint8)
    frames[..., 1] = 0
    prepared = prepare_frames(frames)
    expected = [(1 - CLIP_MEAN[0]) / CLIP_STD[0], (0 - CLIP_MEAN[1]) / CLIP_STD[1], (1 - CLIP_MEAN[2]) / CLIP_STD[2]]
    assert prepared.shape == (1, 3, 224, 224)
    assert torch.allclose(prepared[0, :, 100, 100], torch.tensor(expected), atol=1e-6)


def test_crop_views_orders_clip_major_and_merges_square_crops():
    prepared = torch.arange(4 * 3 * 224 * 300, dtype=torch.float32).view(4, 3, 224, 300)
    views, counts = crop_views(prepared, torch.tensor([[0, 3], [1, 2]]))
    assert views.shape == (6, 3, 2, 224, 224) and counts.tolist() == [1, 1, 1]
    assert torch.equal(views[1, :, 1], prepared[3, :, :, 38:262])  # clip 0, centre crop, second frame
    assert torch.equal(views[5, :, 0], prepared[1, :, :, 76:300])  # clip 1, right crop, first frame
    square, counts = crop_views(prepared[..., :224], torch.tensor([[0, 1]]))
    assert square.shape == (1, 3, 2, 224, 224) and counts.tolist() == [3]


# --- the encoder ---


def test_encoder_output_is_unit_length_and_an_image_is_a_repeated_frame():
    encoder = randomly_initialised(TINY).eval()
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        from_image = encoder(image)
        from_clip = encoder(image[:, :, None].repeat(1, 1, 2, 1, 1))
        other = encoder(torch.randn(2, 3, 2, 224, 224))
    assert from_image.shape == (2, TINY.out_dim)
    assert torch.allclose(from_image.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert torch.allclose(from_image, from_clip, atol=1e-6)
    assert (from_image - other).abs().max() > 1e-2


def test_random_init_is_seeded_and_huge_has_the_imagebind_shape():
    first, second = randomly_initialised(TINY, seed=3), randomly_initialised(TINY, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    with torch.device("meta"):
        huge = VisionEncoder()
    width = 1280
    block = 2 * 2 * width + (3 * width * width + 3 * width) + (width * width + width) + 2 * 4 * width * width + 5 * width
    patches, norms, head = width * 3 * 2 * 14 * 14, 2 * 2 * width, width * 1024
    assert sum(p.numel() for p in huge.parameters()) == patches + width + 257 * width + norms + 32 * block + head
    assert huge.pos_embed.shape == (1, 257, 1280) and huge.patch_embed.weight.shape == (1280, 3, 2, 14, 14)


def test_half_precision_stays_close_to_float32():
    encoder = randomly_initialised(TINY).eval()
    clips = torch.randn(3, 3, 2, 224, 224)
    with torch.no_grad():
        full = encoder(clips)
        half = encoder.to(torch.bfloat16)(clips.to(torch.bfloat16))
    assert half.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(full, half).min() > 0.99


def test_checkpoint_errors_are_clear(tmp_path: Path):
    with pytest.raises(VeraError, match="checkpoint not found: .*imagebind_huge.pth"):
        load_vision_encoder(tmp_path / "imagebind_huge.pth")
    with pytest.raises(VeraError, match="exactly one"):
        load_vision_encoder()
    with pytest.raises(VeraError, match="--tiny"):
        load_vision_encoder(tmp_path / "x.pth", tiny=True)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(VeraError, match="cannot read checkpoint"):
        read_checkpoint(garbage)
    other = tmp_path / "other.pth"
    torch.save({"modality_trunks.text.blocks.0.mlp.fc1.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(VeraError, match="holds no ImageBind vision weights"):
        load_vision_encoder(other)
    odd = {"modality_trunks.vision.blocks.0.attn.bias_k": torch.zeros(1, 1, 64)}
    with pytest.raises(VeraError, match="1 unexpected .*blocks.0.attn.bias_k"):
        load_official_weights(VisionEncoder(SMALL), odd)


# --- parity with the reference implementation ---


def _reference():
    """The official ``imagebind`` and ``pytorchvideo`` modules, or skip.

    While they are imported, three modules the vision path never uses are
    stood in for: ``imagebind.data`` imports torchaudio (no build for current
    torch) and pkg_resources (gone from current setuptools) for audio and
    text, and pytorchvideo's augmentations import a torchvision module that
    was renamed with a leading underscore. The stand-ins are removed again, so
    code that probes for these modules elsewhere never sees them.
    """
    if _missing("imagebind") or _missing("pytorchvideo"):
        pytest.skip(f"reference ImageBind/pytorchvideo not installed; install it with: {INSTALL}")
    import torchvision.transforms._functional_tensor as functional_tensor

    stand_ins = {name: types.ModuleType(name) for name in ("torchaudio", "pkg_resources") if _missing(name)}
    if _missing("torchvision.transforms.functional_tensor"):
        stand_ins["torchvision.transforms.functional_tensor"] = functional_tensor
    sys.modules.update(stand_ins)
    try:
        with warnings.catch_warnings():  # their deprecated imports of timm and torchvision modules
            warnings.simplefilter("ignore")
            from imagebind import data
            from imagebind.models import imagebind_model
            from pytorchvideo import transforms as pv_transforms
            from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler
            from pytorchvideo.data.frame_video import FrameVideo
    except ImportError as error:
        pytest.skip(f"reference not importable ({error}); install it with: {INSTALL}")
    finally:
        for name in stand_ins:
            del sys.modules[name]
    return types.SimpleNamespace(data=data, model=imagebind_model, pv_transforms=pv_transforms,
                                 ConstantClipsPerVideoSampler=ConstantClipsPerVideoSampler, FrameVideo=FrameVideo)


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def _reference_model(ref, config: VisionConfig):
    """The reference ImageBindModel with ``config``'s vision branch (other branches minimal) and every weight random."""
    small = dict(text_embed_dim=16, text_num_blocks=1, text_num_heads=2, audio_embed_dim=16, audio_num_blocks=1,
                 audio_num_heads=2, depth_embed_dim=16, depth_num_blocks=1, depth_num_heads=2, thermal_embed_dim=16,
                 thermal_num_blocks=1, thermal_num_heads=2, imu_embed_dim=16, imu_num_blocks=1, imu_num_heads=2)
    torch.manual_seed(0)
    model = ref.model.ImageBindModel(vision_embed_dim=config.width, vision_num_blocks=config.depth,
                                     vision_num_heads=config.heads, out_embed_dim=config.out_dim, **small).eval()
    with torch.no_grad():  # biases and norms start at 0/1: randomise them so a misplaced one shows
        for name, parameter in model.named_parameters():
            if ".vision." in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


@pytest.fixture(scope="module")
def reference():
    return _reference()


@pytest.fixture(scope="module")
def matched(reference):
    """The reference model and ours with the same random weights (through the official key names)."""
    model = _reference_model(reference, SMALL)
    ours = VisionEncoder(SMALL).eval()
    load_official_weights(ours, model.state_dict())
    return model, ours


def test_encoder_matches_reference_on_images_and_clips(matched):
    model, ours = matched
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 224, 224, generator=generator)
    clips = torch.randn(3, 3, 2, 224, 224, generator=generator)
    views = torch.randn(2, 4, 3, 2, 224, 224, generator=generator)
    with torch.no_grad():
        # The reference reads a 5-d or 6-d input as (batch, views, …) and averages over the views.
        for inputs, ours_out in ((images, ours(images)), (clips[:, None], ours(clips)),
                                 (views, ours(views.flatten(0, 1)).view(2, 4, -1).mean(1))):
            reference_out = model({"vision": inputs})["vision"]
            assert reference_out.shape == ours_out.shape
            assert (reference_out - ours_out).abs().max() <= 1e-4
        # The comparison can fail: one shifted bias is visible.
        shifted = VisionEncoder(SMALL).eval()
        shifted.load_state_dict(ours.state_dict())
        shifted.blocks[1].attn.in_proj_bias[130] += 0.5  # a value bias (a key bias would cancel in the softmax)
        assert (shifted(clips) - ours(clips)).abs().max() > 1e-3


def test_checkpoint_file_loads_strictly(matched, tmp_path: Path):
    model, ours = matched
    state = model.state_dict()
    path = tmp_path / "small.pth"
    torch.save(state, path)
    with torch.device("meta"):  # as load_vision_encoder builds it: no init, the file's tensors are taken as they are
        loaded = VisionEncoder(SMALL)
    load_official_weights(loaded, read_checkpoint(path), "small.pth")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ours.state_dict().values()))
    clips = torch.randn(2, 3, 2, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(clips), ours(clips))
    missing = {name: value for name, value in state.items() if name != "modality_heads.vision.2.weight"}
    with pytest.raises(VeraError, match="missing 1 vision weights .*head_proj.weight"):
        load_official_weights(VisionEncoder(SMALL), missing)
    with pytest.raises(VeraError, match="shape of .*patch_embed.weight \\(64, 3, 2, 14, 14\\) \\(want \\(128"):
        load_official_weights(VisionEncoder(VisionConfig("wide", 128, 2, 4, 32)), state)


def _reference_views(ref, frame_paths: list[str]) -> torch.Tensor:
    """LAVAD's frame-file video loader, assembled from the reference libraries: (15, 3, 2, 224, 224)."""
    from torchvision import transforms
    from torchvision.transforms._transforms_video import NormalizeVideo

    video = ref.FrameVideo.from_frame_paths(frame_paths)
    sampler = ref.ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=5)
    subsample = ref.pv_transforms.UniformTemporalSubsample(num_samples=2)
    transform = transforms.Compose([ref.pv_transforms.ShortSideScale(224), NormalizeVideo(mean=CLIP_MEAN, std=CLIP_STD)])
    clips = [subsample(video.get_clip(start, end)["video"]) / 255.0
             for start, end in ref.data.get_clip_timepoints(sampler, video.duration)]
    return torch.stack(ref.data.SpatialCrop(224, num_crops=3)([transform(clip) for clip in clips]))


@pytest.fixture(scope="module")
def jpeg_clip(shared_data: Path, tmp_path_factory) -> Path:
    """A frame folder (%06d.jpg, OpenCV) of a real 640x346 clip: the frames both pipelines read."""
    folder = tmp_path_factory.mktemp("frames") / "beautiful_mind"
    clip = shared_data / "clips" / "A.Beautiful.Mind.2001__#01-14-30_01-16-59_label_A_1845_2101.mp4"
    assert decode_to_jpegs(clip, folder) == 256
    return folder


def test_views_match_pytorchvideo_chain(reference, jpeg_clip: Path):
    length = 256
    with open_frames(jpeg_clip.name, frames_dir=jpeg_clip.parent) as frames:
        for centre in (0, 112, 240):
            paths = [str(jpeg_clip / f"{i:06d}.jpg") for i in window_sample(*segment_window(centre, length))]
            expected = _reference_views(reference, paths)
            clips = segment_clips(centre, length)
            wanted = sorted({index for clip in clips for index in clip.frames})
            prepared = prepare_frames(torch.from_numpy(frames.read(wanted)))
            positions = torch.tensor([[wanted.index(index) for index in clip.frames] for clip in clips])
            views, crop_counts = crop_views(prepared, positions)
            assert len(clips) == 1 and crop_counts.tolist() == [1, 1, 1]
            # The reference's 15 views are its 3 crops of one clip, 5 times over.
            assert torch.equal(expected, views.repeat(5, 1, 1, 1, 1))


def test_segment_features_match_reference_model(reference, matched, jpeg_clip: Path):
    model, ours = matched
    length, centres = 256, [0, 112, 240]
    with open_frames(jpeg_clip.name, frames_dir=jpeg_clip.parent) as frames:
        features = video_features(ours, frames, length, batch_size=6)
    assert features.shape == (16, SMALL.out_dim) and features.dtype == np.float32
    for centre in centres:
        paths = [str(jpeg_clip / f"{i:06d}.jpg") for i in window_sample(*segment_window(centre, length))]
        with torch.no_grad():
            expected = model({"vision": _reference_views(reference, paths)[None]})["vision"][0]
        assert np.abs(features[centre // 16] - expected.numpy()).max() <= 1e-4
