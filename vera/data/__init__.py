"""Inputs: dataset annotations, the segment grid, frames.

- ``annotations``: test annotations (UCF-Crime, XD-Violence), training lists,
  the key rule and how normal videos are recognised.
- ``segments``: segment centres every 16 frames, windows, frame indices.
- ``frames``: frame-accurate reading from JPEG folders or video files.
- ``extraction``: parallel, resumable extraction of every frame to JPEG.
"""
