"""The GPU side: model loading, the FramePack sampler, decoding, previews and video encoding."""
