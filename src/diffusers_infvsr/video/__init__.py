# Copyright 2026 The diffusers-infvsr authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Video files in and out: `reading` (probe, integrity scan, lazy decoding with timestamps), `writing` (H.264
encoding, joining, the final mux), `overlap` (stages in background threads), `jobs` (`upscale_video`: locked,
checkpointed, resumable file-to-file jobs whose decoding, model and encoding overlap) and `ranks` (sharing the jobs
among the processes of `torchrun` or `accelerate launch`)."""

from .jobs import JobFolder, JobLock, UpscaleResult, check_job, check_output_size, upscale_video, work_folder
from .reading import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ColorTags,
    DamagedVideoError,
    DecodedFrame,
    PacketScan,
    VideoFileError,
    VideoInfo,
    check_integrity,
    decode_frames,
    frame_files,
    probe_video,
    read_frames,
    scan_packets,
)
from .writing import OUTPUT_EXTENSIONS, H264Writer, check_stream_copy, join_segments, mux_output


__all__ = [
    "IMAGE_EXTENSIONS",
    "OUTPUT_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "ColorTags",
    "DamagedVideoError",
    "DecodedFrame",
    "H264Writer",
    "JobFolder",
    "JobLock",
    "PacketScan",
    "UpscaleResult",
    "VideoFileError",
    "VideoInfo",
    "check_integrity",
    "check_job",
    "check_output_size",
    "check_stream_copy",
    "decode_frames",
    "frame_files",
    "join_segments",
    "mux_output",
    "probe_video",
    "read_frames",
    "scan_packets",
    "upscale_video",
    "work_folder",
]
