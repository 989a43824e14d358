"""The constants of the method, in one place: the paper's values and the released scripts'.

Every stage takes its defaults from here and ``vera/options.py`` builds the command-line
options from them; this module holds no command-line code and imports nothing.
Where the paper's text and the released scripts differ, both are named
(``docs/scoring.md`` has the full table of deviations).
"""

from __future__ import annotations

# -- what is evaluated ------------------------------------------------------------------------
DATASETS = ("ucf", "xd")
PROTOCOLS = ("released", "paper")  # the authors' scripts bit for bit, or the paper's text
METRICS = ("auc", "ap")  # frame-level ROC AUC (UCF-Crime), average precision (XD-Violence)

# -- Step 1: segments and what the VLM sees of each ---------------------------------------------
SEGMENT_STRIDE = 16  # a segment every 16 frames
HALF_WINDOW = 150  # frames each side of a segment centre: the 10-second window at 30 fps
NUM_FRAMES = 8  # frames shown to the VLM per segment window (and per training video)
MIN_SCORED_FRAMES = 2  # the fewest frames Steps 2-3 score: detect.py checks it before Step 1
FRAME_LAYOUTS = ("released", "per-frame", "qwen-video")
DEFAULT_FRAME_LAYOUT = "released"
SCORE_MODES = ("generate", "label")  # the generated answer's label, or the label read from one forward pass
BACKENDS = ("hf", "openai")
NO_QUESTIONS = "none"  # --questions none: the bare prompt, without guiding questions

# -- Steps 2-3: scene context, smoothing, position weighting -----------------------------------
TEMPERATURE = 0.1  # tau of Step 2's softmax over similarities
SIMILARITY_SCALE = 10.0  # 1/tau, exactly, as the released scripts multiply by it
RELEASED_NEIGHBOUR_FRACTION = 0.15  # the released scripts' K = int(0.15 h), on both datasets
PAPER_NEIGHBOUR_FRACTION = {"ucf": 0.10, "xd": 0.15}  # the paper's K/h per dataset
RELEASED_KERNEL_SIZE, RELEASED_KERNEL_SIGMA = 15, 10.0  # Step 3's smoothing window and sigma_1, released
PAPER_KERNEL = {"ucf": (15, 10.0), "xd": (30, 30.0)}  # the paper's (window, sigma_1) per dataset
POSITION_SIGMA_FRACTION = 0.5  # sigma_2 = floor(F/2) of the position weighting

# -- training (Algorithm 1) ----------------------------------------------------------------------
DEFAULT_NUM_QUESTIONS = 5  # the paper's m: at most this many guiding questions per optimizer proposal
DEFAULT_EPOCHS = 10  # the authors' InternVL2 training (training.py)
QWEN_VIDEO_EPOCHS = 50  # their Qwen2-VL training (vera_qwen_train.py): the default in the qwen-video layout
FRAME_SAMPLINGS = ("uniform", "random", "tsn")  # the learner's training frames (the paper's sampling table)
SELECT_BY = ("accuracy", "auc")  # what validation selects the best questions by

# -- guiding questions ------------------------------------------------------------------------
# The guiding questions the authors published: the learned UCF-Crime and
# XD-Violence sets (VERA README) and the set hard-coded in their Qwen2-VL script.
PRESET_QUESTIONS: dict[str, list[str]] = {
    "ucf": [
        "1. Are there any people in the video who are not in their typical positions or engaging in activities "
        "that are not consistent with their usual behavior?",
        "2. Are there any vehicles in the video that are not in their typical positions or being used in a way "
        "that is not consistent with their usual function?",
        "3. Are there any objects in the video that are not in their typical positions or being used in a way "
        "that is not consistent with their usual function?",
        "4. Is there any visible damage or unusual movement in the video that indicates an anomaly?",
        "5. Are there any unusual sounds or noises in the video that suggest an anomaly?",
    ],
    "xd": [
        "1. Are there any frames where the video content shows an object or person performing an unusual action "
        "that does not fit the usual pattern of the video content?",
        "2. Are there any frames where the video content shows an object or person behaving in a way that is "
        "clearly abnormal or unexpected?",
        "3. Are there any frames where the video content shows a clear indication of an anomaly in the behavior "
        "of objects or people, such as an object moving in an unexpected way or a person performing an unusual "
        "action?",
        "4. Are there any frames where the video content shows a player or object being out of place or not "
        "fitting the usual pattern of the video content?",
        "5. Are there any frames where the video content shows a disruption in the normal flow of the video, "
        "such as a sudden change in the camera angle or a loss of video quality?",
    ],
    "ucf-qwen": [
        "1. Are there any unusual movements or positions of the vehicles in the video frames?",
        "2. Are there any inconsistencies in the actions of the vehicles in the video frames that suggest an "
        "anomaly?",
        "3. Are there any unusual behaviors of the vehicles in the video frames?",
        "4. Are there any inconsistencies in the weather conditions in the video frames that suggest an anomaly?",
        "5. Are there any unusual objects or items in the video frames that are not in their usual positions?",
    ],
}
# The two hand-written questions the authors' training starts from (the paper's Q0): ``--preset initial``.
INITIAL_QUESTIONS = [
    "1. Is there any suspicious person or object that looks unusual in this scene?",
    "2. Is there any behavior that looks unusual in this scene?",
]
QUESTION_SETS: dict[str, list[str]] = {**PRESET_QUESTIONS, "initial": INITIAL_QUESTIONS}
PRESETS = tuple(QUESTION_SETS)
