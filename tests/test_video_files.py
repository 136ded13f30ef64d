"""Real-world video files through `upscale_video` (tiny random pipeline): timing, sync, geometry, colour, damage."""

from fractions import Fraction

import av
import pytest
from video_clips import beep_times, ffmpeg, make_flash_clip, video_times

from diffusers_infvsr.video import VideoFileError, check_integrity, check_job, probe_video, upscale_video


FRAME = 1 / 30  # the flash clips' frame duration where the flash is


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Inputs shared by the tests of this module."""
    folder = tmp_path_factory.mktemp("real-world")
    vfr = make_flash_clip(folder / "vfr-plain.mp4", vfr=True, audio_tracks=2)
    (folder / "chapters.txt").write_text(
        ";FFMETADATA1\ntitle=Phone clip\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=1000\ntitle=Slow\n"
        "[CHAPTER]\nTIMEBASE=1/1000\nSTART=1000\nEND=2000\ntitle=Fast\n"
    )
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=8x8", "-frames:v", 1, folder / "cover.png")
    ffmpeg("-i", vfr, "-i", folder / "chapters.txt", "-i", folder / "cover.png", "-map", 0, "-map", 2,
           "-map_metadata", 1, "-map_chapters", 1, "-c", "copy", "-c:v:1", "png", "-disposition:v:1", "attached_pic",
           folder / "vfr.mp4")  # fmt: skip
    make_flash_clip(folder / "offset.ts", extra=["-f", "mpegts"])  # MPEG-TS starts at about 1.4 s
    # A portrait phone clip: display matrix 90 degrees, anamorphic pixels, BT.601 full-range colour tags.
    tagged = "setsar=32/27,setparams=colorspace=bt470bg:color_primaries=bt470bg:color_trc=smpte170m:range=pc"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x12:rate=25", "-frames:v", 9, "-vf", tagged, "-c:v", "libx264",
           "-pix_fmt", "yuv420p", folder / "tagged.mp4")  # fmt: skip
    ffmpeg("-display_rotation", 90, "-i", folder / "tagged.mp4", "-c", "copy", folder / "portrait.mp4")
    return folder


def relative(times):
    return [time - times[0] for time in times]


def test_vfr_keeps_every_timestamp_and_the_beeps_stay_on_the_flash(clips, tmp_path, tiny_pipe):
    source, output = clips / "vfr.mp4", tmp_path / "vfr-x4.mp4"
    result = upscale_video(source, output, tiny_pipe, checkpoint_interval=0)  # several segments, joined
    assert result.num_frames == 40

    times = video_times(output)
    assert times == pytest.approx(video_times(source), abs=1e-9)  # 10 fps for 1 s, then 30 fps
    assert beep_times(output) == pytest.approx([times[25]] * 2, abs=FRAME)  # both tracks, on the flash frame
    with av.open(str(output)) as container:
        assert [chapter["metadata"]["title"] for chapter in container.chapters()] == ["Slow", "Fast"]
        assert container.metadata["title"] == "Phone clip"
        covers = [s for s in container.streams.video if s.disposition & av.stream.Disposition.attached_pic]
        assert len(covers) == 1 and covers[0].codec_context.name == "png"


def test_start_and_max_frames_on_a_stream_that_starts_late(clips, tmp_path, tiny_pipe):
    source = clips / "offset.ts"
    assert probe_video(source).start_time > 1
    output = tmp_path / "late-x4.mkv"
    upscale_video(source, output, tiny_pipe, start=0.5, scene_detection=False)  # frame 15 of 40 is at 0.5 s

    times = video_times(output)
    assert len(times) == 25
    assert relative(times) == pytest.approx(relative(video_times(source)[15:]), abs=1e-3)  # Matroska: ms
    [beep] = beep_times(output)
    assert beep == pytest.approx(times[25 - 15], abs=FRAME)  # the flash (frame 25) and its beep, still together

    upscale_video(source, tmp_path / "short.mkv", tiny_pipe, start=0.5, max_frames=12, scene_detection=False)
    with av.open(str(tmp_path / "short.mkv")) as container:
        audio = container.streams.audio[0]
        packets = [packet for packet in container.demux(audio) if packet.pts is not None]
        audio_end = float(max(p.pts + p.duration for p in packets) * audio.time_base)
    assert len(video_times(tmp_path / "short.mkv")) == 12
    assert audio_end == pytest.approx(12 * FRAME, abs=1024 / 48000 + 1e-3)  # audio trimmed to the 12 frames


def test_rotation_pixel_shape_colour_tags_and_crf_carry_over(clips, tmp_path, tiny_pipe):
    output = tmp_path / "portrait-x2.mp4"
    upscale_video(clips / "portrait.mp4", output, tiny_pipe, upscale_factor=2, crf=37)
    before, after = probe_video(clips / "portrait.mp4"), probe_video(output)
    assert before.rotation == 90 and before.sample_aspect_ratio == Fraction(32, 27)
    assert (after.rotation, after.sample_aspect_ratio) == (90, Fraction(32, 27))
    assert (after.width, after.height) == (32, 24)
    assert before.color.matrix == 5 and before.color.range == 2
    assert after.color == before.color  # primaries, transfer, matrix and range
    with av.open(str(output)) as container:
        first_packet = bytes(next(container.demux(video=0)))
    assert b"crf=37.0" in first_packet  # x264 writes its settings into the stream


def test_hdr_is_refused_and_interlacing_is_reported(tmp_path):
    hlg = tmp_path / "hlg.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=25", "-frames:v", 3, "-vf",
           "setparams=color_trc=arib-std-b67:color_primaries=bt2020:colorspace=bt2020nc", "-c:v", "libx264", hlg)  # fmt: skip
    with pytest.raises(VideoFileError, match="is HDR \\(HLG .*SDR video only.*Tone-map it to SDR"):
        check_job(hlg, tmp_path / "out.mp4")
    interlaced = tmp_path / "interlaced.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=25", "-frames:v", 3, "-flags", "+ildct+ilme",
           "-c:v", "libx264", "-x264opts", "tff=1", interlaced)  # fmt: skip
    assert check_job(interlaced, tmp_path / "out.mp4").interlaced
    assert not probe_video(hlg).interlaced


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged")
    for suffix, options in [(".mp4", ["-movflags", "+faststart"]), (".mkv", []), (".ts", [])]:
        clip = folder / f"clip{suffix}"
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=25", "-f", "lavfi", "-i", "sine=sample_rate=48000",
               "-frames:v", 30, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", *options, clip)  # fmt: skip
        data = clip.read_bytes()
        (folder / f"truncated{suffix}").write_bytes(data[: len(data) * 6 // 10 + 101])  # cut inside a packet
        corrupt = bytearray(data)
        corrupt[len(data) // 2 : len(data) // 2 + 300] = b"\xff" * 300
        (folder / f"corrupt{suffix}").write_bytes(bytes(corrupt))
    return folder


@pytest.mark.parametrize(
    "name, message",
    [
        ("truncated.mp4", "lists 30 frames but only 16 are present"),
        ("truncated.mkv", "the video stops at 0.840 s of the 1.200 s"),
        ("truncated.ts", "ends inside a transport-stream packet"),
        ("corrupt.mkv", "the video stops at 0.680 s of the 1.200 s"),
    ],
)
def test_damaged_input_is_found_before_any_work(damaged, name, message):
    with pytest.raises(VideoFileError, match="is damaged after frame") as error:
        check_integrity(damaged / name)
    assert message in str(error.value) and "--max-frames" in str(error.value) and "--allow-damaged" in str(error.value)


def test_allow_damaged_upscales_what_is_there(damaged, tmp_path, tiny_pipe):
    output = tmp_path / "out.mkv"
    with pytest.raises(VideoFileError, match="is damaged"):
        upscale_video(damaged / "truncated.mkv", output, tiny_pipe)
    result = upscale_video(damaged / "truncated.mkv", output, tiny_pipe, allow_damaged=True, scene_detection=False)
    assert result.num_frames == len(video_times(output)) == 18
    check_integrity(damaged / "clip.mkv")  # the intact file passes
