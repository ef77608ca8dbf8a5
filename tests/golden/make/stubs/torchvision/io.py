written = []


def write_video(filename, video_array, fps, video_codec="libx264", options=None):
    """Records what the official save_bcthw_as_mp4 would have encoded."""
    written.append((filename, video_array.clone(), fps, video_codec, dict(options or {})))
