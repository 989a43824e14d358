"""Inputs: dataset annotations, the segment grid, frames, downloads.

- ``annotations``: test annotations (UCF-Crime, XD-Violence), training lists,
  the key rule, how normal videos are recognised, the frame-count check.
- ``segments``: segment centres every 16 frames, windows, frame indices.
- ``frames``: frame-accurate reading from JPEG folders or video files.
- ``loading``: frames read ahead of the model by torch's ``DataLoader``.
- ``frame_extraction``: parallel, resumable extraction of every frame to JPEG.
- ``own_videos``: an annotation for a folder of your own videos (``detect.py``).
- ``layout``: the documented ``Data/`` layout and the defaults taken from it.
- ``download``, ``transfer``, ``released_archives``: the authors' artifacts
  fetched, resumed and placed into ``Data/``.
"""
