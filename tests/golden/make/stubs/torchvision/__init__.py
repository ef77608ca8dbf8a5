# torchvision does not install beside the CPU torch here; the demo loop only reaches io.write_video.
from . import io  # noqa: F401
