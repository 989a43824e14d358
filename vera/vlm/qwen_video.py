"""The ``qwen-video`` frame layout: Qwen2-VL fed as the authors' Qwen2-VL scripts fed it.

Their ``vera_qwen_generate_initial_score.py`` (and ``vera_qwen_train.py``)
built, per segment:

- one user message with one ``{"type": "video", "video": [8 frame files],
  "fps": 1.0}`` item, turned into frames by ``qwen_vl_utils.process_vision_info``;
- the text ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
  <|im_start|>user\\n`` + the learner prompt with ``[$Data]`` (brackets
  included) replaced by ``<|vision_start|><|video_pad|><|vision_end|>`` and the
  questions inserted before "Based on the analysis above" +
  ``<|im_end|>\\n<|im_start|>assistant\\n``: their own string, not the
  checkpoint's chat template, and no ``FrameN:`` lines;
- ``processor(text=…, videos=…, padding=True)`` and
  ``generate(**inputs, max_new_tokens=1024)`` with the checkpoint's own
  generation config.

Frames: qwen-vl-utils up to 0.0.11 (pinned in constraints.txt) resizes each
frame of a frame list on its own, to multiples of 28 within its *image* pixel
limits (4·28² … 16384·28²), and pads the list to an even length; 0.0.13 and
later resize the stacked frames again under *video* limits, which gives other
pixels and more tokens. The processor of the authors' era (transformers 4.45–
4.49) sent videos through the image processor, whose limits in the released
Qwen2-VL checkpoints are the same 4·28² … 16384·28², so its resize kept the
frames' size; transformers 5's video processor applies video limits instead
(at least 128·28² pixels a frame), so we call it with ``do_resize=False``.
It also rescales and normalises in one float32 step, which moves about three
values in four by one float32 ulp (none after the cast to bfloat16) against
the numpy image processor of that era; we rescale and normalise as that one
did (``x · (1/255)`` in float64 rounded to float32, then ``(x − mean) / std`` in
float32) and let the processor only cut the frames into patches.

Frame sources: from a JPEG folder the frames are decoded by PIL, as
qwen-vl-utils decodes the file paths the authors passed; from a video file
they are the decoded RGB frames.

Training's optimizer (``vera_qwen_train.py``) sees the whole batch as ONE
video item: every frame of the batch in order (video 1's, then video 2's …),
at the optimizer template's video slot (``vera.learning.optimizer_prompt``).
Videos of different sizes end up in one video there: qwen-vl-utils resizes
each frame on its own, and the image processor of that era then resized every
frame of a video to the size of its first frame (PIL bicubic, the released
checkpoints' ``resample``); we do the same. A request with neither slot nor frames (the
optimizer with ``--no-optimizer-frames``) is the same chat string, text only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from vera.data.frames import JpegFolderFrames, VideoFrames, frame_name
from vera.errors import VeraError
from vera.vlm.backends.base import VLMRequest

BRACKETED_DATA_SLOT = "[$Data]"
VIDEO_SLOT = "<|vision_start|><|video_pad|><|vision_end|>"
CHAT_START = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
CHAT_END = "<|im_end|>\n<|im_start|>assistant\n"
VIDEO_FPS = 1.0
MODEL_TYPES = ("qwen2_vl",)


def video_template(template: str) -> str:
    """The learner template with its ``[$Data]`` slot, brackets included, replaced by the video tokens."""
    count = template.count(BRACKETED_DATA_SLOT)
    if count != 1:
        raise VeraError(f"the qwen-video frame layout puts the video at {BRACKETED_DATA_SLOT!r}, which the learner "
                        f"template holds {count} times (exactly once needed)")
    return template.replace(BRACKETED_DATA_SLOT, VIDEO_SLOT)


def chat_text(prompt: str) -> str:
    """The authors' chat string around a learner prompt (not the checkpoint's chat template)."""
    return CHAT_START + prompt + CHAT_END


def read_frames(frames: VideoFrames, indices: Sequence[int]) -> list[np.ndarray]:
    """The frames at ``indices``, unresized: PIL's decode of the JPEG files, or the decoded video frames."""
    if not isinstance(frames, JpegFolderFrames):
        return list(frames.read(indices))
    images = []
    for index in indices:
        index = int(index)
        path = frames.source / frame_name(index)
        if not 0 <= index < frames.num_frames:
            raise VeraError(f"video {frames.key}: frame {index} is out of range "
                            f"(the video has {frames.num_frames} frames; {frames.source})")
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
        except OSError as error:  # missing, unreadable or corrupt JPEG
            raise VeraError(f"video {frames.key}: cannot read frame {index} ({path}): {error}") from None
    return images


def video_message(images: Sequence[np.ndarray]) -> list[dict]:
    """One user message holding one video item of the frames, at 1 fps, as the authors wrote it."""
    frames = [Image.fromarray(np.asarray(image, dtype=np.uint8)) for image in images]
    return [{"role": "user", "content": [{"type": "video", "video": frames, "fps": VIDEO_FPS}]}]


def processor_inputs(processor, requests: list[VLMRequest]) -> dict:
    """Model inputs for a batch of video requests: qwen-vl-utils' frames, then the processor without resizing."""
    from qwen_vl_utils import process_vision_info  # imports torchvision: only when this layout runs

    if not all(request.video for request in requests):
        raise VeraError("a batch mixes qwen-video requests with other frame layouts")
    for request in requests:
        if (request.prompt.count(VIDEO_SLOT), bool(request.images)) not in ((1, True), (0, False)):
            raise VeraError(f"{request.key}: a qwen-video request needs one {VIDEO_SLOT} slot and its frames "
                            "(or, text only, neither)")
    texts = [chat_text(request.prompt) for request in requests]
    messages = [video_message(request.images) for request in requests if request.images]
    if not messages:
        return dict(processor(text=texts, padding=True, return_tensors="pt"))
    _, videos = process_vision_info(messages)
    video_processor = processor.video_processor
    options: dict = {"do_resize": False, "do_rescale": False, "do_normalize": False}
    if hasattr(video_processor, "cap_pixels_per_frame"):
        options["cap_pixels_per_frame"] = False  # only acts when resizing; set to silence its warning
    normalised = [authors_era_normalisation(frames, video_processor) for frames in videos]
    return dict(processor(text=texts, videos=normalised, padding=True, return_tensors="pt", **options))


def authors_era_normalisation(frames: Sequence[Image.Image], video_processor) -> torch.Tensor:
    """``(T, 3, H, W)`` float32 as transformers' numpy image processor computed it (see the module docstring).

    That processor resized every frame of a video to its first frame's size: a no-op within one segment, where
    qwen-vl-utils gives all frames one size, but not for the optimizer's batch of videos of different sizes.
    """
    size = frames[0].size
    # bicubic: the ``resample`` of the released Qwen2-VL checkpoints' preprocessor_config.json (3)
    frames = [frame if frame.size == size else frame.resize(size, Image.Resampling.BICUBIC) for frame in frames]
    video = torch.from_numpy(np.stack([np.asarray(frame.convert("RGB")) for frame in frames])).permute(0, 3, 1, 2)
    if video_processor.do_rescale:
        video = (video.double() * video_processor.rescale_factor).float()
    else:
        video = video.float()
    if video_processor.do_normalize:
        mean = torch.tensor(video_processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(video_processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        video = (video - mean) / std
    return video
